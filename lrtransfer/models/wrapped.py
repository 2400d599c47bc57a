"""A plain ``torch.nn.Module`` as a module of the algebra: one atom per parameter, by role.

Every parameter becomes an atom sharing the module's own ``nn.Parameter`` (the optimizer steps
it in place; the forward is the user's, untouched). Each atom's norm is the one its kind has
in the algebra, measured on the matrix the forward applies (the algebra's atoms keep a
width-dependent scale s outside their weight, a plain layer inside it, so the norm of a
plain weight M is the algebra's norm of M/s):

* matrix (out, in): ‖M‖₂ · sqrt(in/out), the RMS→RMS operator norm (algebra ``Linear``);
* kernel (out, in, *k): the largest of the per-position ‖M_ij‖₂ · sqrt(in/out) · ∏k (``Conv2D``);
* embedding (vocab, d): the largest row's ℓ2 norm / sqrt(d), its RMS (``Embed``);
* vector (n,) — biases, norm gains: ‖v‖₂ / sqrt(n), its RMS (a map from the constant 1).

``normalize`` and ``dualize`` then split the target equally over the weight matrices, as the
modular norm of a chain of L well-normed layers (mass 1 and sensitivity 1 each) does:
η/L per matrix; a vector takes the share of a matrix. For a plain chain of linear layers and
sensitivity-1 nonlinearities this is the algebra's own split (tests/test_user_models.py builds
one MLP both ways); for residual, attention or normalized models it is an approximation of the
modular norm the algebra would derive from the model's structure, which a plain module does
not state. Runs record ``model_norm = "layerwise"`` (the algebra's models: ``"modular"``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..modular import Module
from ..modular.atoms import Tracked, _inverse
from ..modular.module import Atom
from .roles import Weight


class _Plain:
    """What a plain parameter's atom knows about where it came from."""

    def _adopt(self, w: Weight) -> None:
        self.weight = w.param           # the module's own Parameter: stepped in place
        self.name, self.role, self.owner = w.name, w.role, w.owners[0]
        self.local_name = w.name.rpartition(".")[2]

    def reset_parameters(self) -> None:
        raise ValueError(f"{self.name}: a plain module's weights are as its builder made them")

    def extra_repr(self):
        return f"{self.name} {list(self.weight.shape)}, {self.role}"


class PlainMatrix(_Plain, Tracked):
    """A plain matrix or convolution kernel: the algebra's Linear / Conv2D norm of M / s."""

    def __init__(self, w: Weight):
        super().__init__()
        self._adopt(w)
        shape = self.weight.shape
        self.d_out, self.d_in = shape[0], shape[1]
        self.kernel = tuple(shape[2:])
        receptive = math.prod(self.kernel)
        # s: what the algebra's atom multiplies its weight by in the forward
        self.gain = math.sqrt(self.d_out / self.d_in) / receptive
        self._scale_shape = (1, 1, *self.kernel) if self.kernel else ()
        self.register_buffer("_power_q", None, persistent=False)
        self._reset_tracking((receptive,) if self.kernel else (), min(self.d_out, self.d_in))

    def _slices(self, w):
        if not self.kernel:
            return w
        nd = w.dim()
        return w.permute(*range(2, nd), 0, 1).reshape(-1, self.d_out, self.d_in)

    def _unslice(self, m):
        if not self.kernel:
            return m
        nd = 2 + len(self.kernel)
        return m.reshape(*self.kernel, self.d_out, self.d_in).permute(nd - 2, nd - 1, *range(nd - 2))

    def _matrices(self, w):
        m = self._slices(w)
        return m if self.d_out >= self.d_in else m.mT

    def atom_norm(self, w, exact=True):
        return super().atom_norm(w, exact=exact) / self.gain

    def normalize_scale(self, u, target, exact=False, norms=None):
        return super().normalize_scale(u, target * self.gain, exact=exact, norms=norms)

    def dualize_update(self, u, target, ns="quintic", steps=None):
        return super().dualize_update(u, target * self.gain, ns=ns, steps=steps)


class _RowNormed(_Plain):
    """Atoms normed row by row in RMS: an embedding's rows, a vector as one row."""

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def atom_norm(self, w, exact=True):
        rows = self._rows(w.float())
        return (torch.linalg.vector_norm(rows, dim=1) / math.sqrt(rows.shape[1])).max()

    def normalize_scale(self, u, target, exact=False, norms=None):
        rows = self._rows(u.float())
        scale = _inverse(torch.linalg.vector_norm(rows, dim=1, keepdim=True)) * (target * math.sqrt(rows.shape[1]))
        return scale.reshape(self._scale_shape(u))

    def dualize_update(self, u, target, ns="quintic", steps=None):
        """The dual of a max-row-RMS norm is row-wise: the same map as ``normalize``."""
        return self.normalize_update(u, target)


class PlainTable(_RowNormed, Atom):
    """An ``nn.Embedding`` table (vocab, d): the algebra's Embed norm of M / sqrt(d)."""

    embedding = True

    def __init__(self, w: Weight):
        super().__init__()
        self._adopt(w)

    def _rows(self, t):
        return t

    def _scale_shape(self, u):
        return (u.shape[0], 1)


class PlainVector(_RowNormed, Atom):
    """A bias or a norm's gain (n,): its RMS."""

    def __init__(self, w: Weight):
        super().__init__()
        self._adopt(w)

    def _rows(self, t):
        return t.reshape(1, -1)

    def _scale_shape(self, u):
        return ()

    def _matrices(self, w):   # for diagnostics: one column, whose spectral norm is its ℓ2 norm
        return w.reshape(-1, 1)


def atom_for(w: Weight) -> Module:
    if w.kind == "vector":
        return PlainVector(w)
    if w.kind == "embedding":
        return PlainTable(w)
    return PlainMatrix(w)


class Wrapped(Module):
    """A plain module ``net`` with one atom per parameter (``weights``, roles found)."""

    norm_kind = "layerwise"   # recorded per run (``model_norm``): an approximation of the modular norm

    def __init__(self, net: nn.Module, weights: list[Weight]):
        super().__init__()
        self.net = net
        atoms = [atom_for(w) for w in weights]
        # the atoms hold the net's parameters; they are not submodules, so each parameter is
        # registered once (under ``net.``), as named_parameters and state_dict should see it
        self.__dict__["_atom_list"] = atoms
        self.__dict__["weights"] = list(weights)
        self.layers = sum(1 for w in weights if w.kind != "vector")
        self.sensitivity = 1.0
        self.hooks = []

    @property
    def mass(self) -> float:
        return float(self.layers)

    def atoms(self):
        return list(self._atom_list)

    def roles(self) -> list[str]:
        return [w.role for w in self.weights]

    def _split(self, eta, out) -> None:
        out.extend([eta / self.layers] * len(self._atom_list))

    def _norm(self, values):
        return self.layers * torch.stack(list(values)).max()

    def forward(self, x):
        return self.net(x)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for atom in self._atom_list:   # the tracking blocks follow the weights' device and dtype
            for k, b in atom._buffers.items():
                if b is not None:
                    atom._buffers[k] = fn(b)
        return self


@torch.no_grad()
def apply_mup(model: Wrapped, base_shapes: dict[str, tuple[int, ...]], mup_rule: str) -> Wrapped:
    """μP on a plain module as the mup package (1.0.0) applies it with ``set_base_shapes`` on a
    model whose readouts are ``MuReadout`` (or ``MuSharedReadout`` for a tied table):

    * every atom's LR multiplier from its role and its fans against the base model's
      (``param.multipliers``: MuAdam, MuSGD or Muon's groups);
    * each readout's weight and bias × sqrt(m), and its input × 1/m in the forward, m its
      fan-in width multiplier (MuReadout); a tied table is rescaled with its readout;
    * every other Linear's and convolution's bias × sqrt(its fan-in multiplier)
      (``rescale_linear_bias``).

    ``base_shapes``: each parameter name's shape in the model built at the base width.
    """
    from .param import multipliers
    weights = model.weights
    roles = [w.role for w in weights]
    shapes = [w.fans() for w in weights]
    base = [w.fans(base_shapes[w.name]) for w in weights]
    table = multipliers(roles, shapes, base, mup_rule)
    atoms = model.atoms()
    for atom, (fi, fo), (bfi, bfo), (_, _, lr) in zip(atoms, shapes, base, table):
        atom.lr_mult = lr
        atom.mup = {"fan_in_mult": fi / bfi, "fan_out_mult": fo / bfo, "init": 1.0, "forward": 1.0, "lr": lr}
    by_param = {id(a.weight): a for a in atoms}
    names = {id(m): n for n, m in model.net.named_modules()}

    def fanin_mult(m) -> float:
        name = f"{names[id(m)]}.weight" if names[id(m)] else "weight"
        return m.weight.shape[1] / base_shapes[name][1] if m.weight.dim() >= 2 else 1.0

    def rescale(p, mult: float) -> None:
        p.mul_(mult)
        by_param[id(p)].mup["init"] *= mult

    readouts = {id(m): m for w in weights for m in w.readouts()}
    for m in readouts.values():   # MuReadout / MuSharedReadout
        wm = fanin_mult(m)
        rescale(m.weight, math.sqrt(wm))
        if getattr(m, "bias", None) is not None:
            rescale(m.bias, math.sqrt(wm))
        by_param[id(m.weight)].mup["forward"] = 1.0 / wm
        model.hooks.append(m.register_forward_pre_hook(_readout_input(1.0 / wm)))
    for m in model.net.modules():  # rescale_linear_bias
        if id(m) not in readouts and isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and m.bias is not None:
            rescale(m.bias, math.sqrt(fanin_mult(m)))
    return model


def _readout_input(mult: float):
    def hook(module, args):
        return (args[0] * mult, *args[1:])
    return hook
