"""The module algebra: every network is a tree of modules with a mass and a sensitivity.

Read with docs/science.md §1. Atoms carry weights, bonds carry none, and two
combinators build everything else:

* ``Sequence`` — composition. ``M2 @ M1`` runs M1 first. Mass adds, sensitivity multiplies.
* ``Tuple`` — several modules applied to one input. Mass adds, sensitivity adds.

Scalar multiplication ``a * M`` is composition with a ``Mul(a)`` bond, the sum ``M1 + M2``
is an ``Add`` bond after a tuple, and ``M ** L`` composes L independently initialised copies.

The modular norm of a list of per-atom tensors is a recursive max; ``normalize`` splits a
target norm down the same tree so that every term of that max is equal (``targets``), and
each atom rescales its own update to its share.

Scale invariance (science.md §5): an atom is *scale-invariant* when multiplying its weight
by any c > 0 leaves the network's output unchanged — its output reaches a normalization
(``normalizes``) through positively homogeneous maps only (``homogeneous``: f(c·x) = c·f(x)
for c > 0), or it conditions its own weight row by row. ``scale_invariant()`` finds them.
"""
from __future__ import annotations

import copy
import math
from numbers import Real
from typing import Sequence as Seq

import torch
from torch import nn


def _check_positive(value, what: str, owner: str) -> float:
    if isinstance(value, torch.Tensor):
        value = float(value)
    if not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {what} must be a positive finite number, got {value!r}")
    return float(value)


class Module(nn.Module):
    """A module of the algebra: a forward map with a mass, a sensitivity and a norm.

    Subclasses are atoms (weights, mass 1 by default), bonds (no weights, mass 0) and the
    two combinators. ``mass`` and ``sensitivity`` are plain attributes on atoms and bonds and
    derived properties on combinators, so ``tare`` on a subtree is seen everywhere above it.
    """

    # f(c·x) = c·f(x) for every c > 0 (ReLU, mean subtraction, pooling, a linear map): a scale
    # of the input passes through unchanged in kind.
    homogeneous = False
    # f(c·x) = f(x) for every c > 0 (RMS division, so LayerNorm): scale stops here.
    normalizes = False

    # -- structure -------------------------------------------------------------------
    def atoms(self) -> list["Atom"]:
        """The weight-carrying atoms of this subtree, in a fixed order (forward order)."""
        raise NotImplementedError

    def roles(self) -> list[str]:
        """Each atom's place, aligned with ``atoms()``: "input" (embeddings, or else the first
        atom: its fan-in is the data's, not the width), "output" (the last atom, the head) or
        "hidden". Parametrizations (μP) and Muon treat the three differently."""
        atoms = self.atoms()
        embeds = any(a.embedding for a in atoms)
        out = ["input" if (a.embedding if embeds else k == 0) else "hidden" for k, a in enumerate(atoms)]
        if len(out) > 1:
            out[-1] = "output"
        return out

    def scale_invariant(self) -> list[bool]:
        """Whether each atom (aligned with ``atoms()``) is scale-invariant: the output does not
        change when its weight is multiplied by any c > 0. Structural and conservative: an
        atom counts only when, within its own chain, its output reaches a normalization
        through homogeneous maps (or it conditions its own weight); anything else is False."""
        return [bool(getattr(a, "condition", False)) for a in self.atoms()]

    def _split(self, eta: float, out: list[float]) -> None:
        """Append each atom's share of target ``eta`` to ``out`` (in ``atoms()`` order)."""
        raise NotImplementedError

    def _norm(self, values: list[torch.Tensor]) -> torch.Tensor:
        """Modular norm from the per-atom norms ``values`` (aligned with ``atoms()``)."""
        raise NotImplementedError

    # -- the public algebra ----------------------------------------------------------
    def targets(self, eta: float) -> list[float]:
        """Each atom's share of a modular-norm target ``eta``, aligned with ``atoms()``.

        Linear in ``eta``; with the reference mass allocations it does not depend on width
        or depth (science.md §1).
        """
        eta = _check_positive(eta, "target", type(self).__name__)
        if self.mass <= 0:
            raise ValueError(f"{type(self).__name__}: mass is {self.mass}; a module without mass has no targets")
        out: list[float] = []
        self._split(eta, out)
        return out

    def norm(self, tensors: Seq[torch.Tensor], exact: bool = True) -> torch.Tensor:
        """The modular norm of ``tensors`` (one per atom, e.g. weights or an update).

        ``exact=True`` uses SVDs for spectral norms; ``False`` the tracked estimates, read
        only: the atoms' tracking blocks (which ``normalize`` relies on) are left as they were,
        so measuring a norm never changes a later normalized step.
        """
        self._check_aligned(tensors, "norm")
        atoms = self.atoms()
        saved = [a.tracking_state() for a in atoms]
        try:
            values = [atom.atom_norm(t, exact=exact) for atom, t in zip(atoms, tensors)]
        finally:
            for a, state in zip(atoms, saved):
                a.restore_tracking(state)
        return self._norm(values)

    def normalize(self, updates: Seq[torch.Tensor], target: float, exact: bool = False) -> list[torch.Tensor]:
        """Return new tensors: ``updates`` rescaled so that their modular norm is ``target``.

        The target is split once (``targets``) and each atom rescales its update to its share
        (``Atom.normalize_scale``): every atom's update ends with atom norm equal to its share, zero
        updates stay zero, the inputs are not modified. With ``exact=False`` spectral norms
        are tracked per atom (exact on a cold atom, then a warm block power step: a lower
        bound, within 1.02 of the SVD norm on the quickstart, see
        benchmarks/normalize_accuracy.py), all atoms' estimates read back with one host
        sync; ``exact=True`` uses SVDs.
        """
        return [u * s for u, s in zip(updates, self.normalize_scales(updates, target, exact=exact))]

    def normalize_scales(self, updates: Seq[torch.Tensor], target: float, exact: bool = False) -> list[torch.Tensor]:
        """What ``normalize`` multiplies each update by: atom k's scale, a tensor that broadcasts
        against its update (a scalar, one per kernel slice, one per row). An optimizer applies
        w − scale·u from these in one pass over each weight, where the rescaled tensors would
        take two (write them, then subtract them). Advances the tracking exactly as ``normalize``.
        """
        self._check_aligned(updates, "normalize")
        atoms, shares = self.atoms(), self.targets(target)
        norms = [None] * len(atoms)
        if not exact:  # atoms that estimate their norms together do so in one batch per kind
            groups: dict = {}
            for k, atom in enumerate(atoms):
                if atom.estimate_norms is not None:
                    groups.setdefault(atom.estimate_norms, []).append(k)
            for estimate, ks in groups.items():
                for k, n in zip(ks, estimate([atoms[k] for k in ks], [updates[k] for k in ks])):
                    norms[k] = n
        return [atom.normalize_scale(u, share, exact=exact, norms=n)
                for atom, u, share, n in zip(atoms, updates, shares, norms)]

    def dualize(self, updates: Seq[torch.Tensor], target: float, ns: str = "quintic",
                steps: int | None = None) -> list[torch.Tensor]:
        """Return new tensors: the steepest-descent step of modular norm ``target`` for the
        gradient-like ``updates`` (modular duality, science.md §2).

        The target is split exactly as ``normalize`` splits it; each atom maps its update
        through its own norm's dual map (``Atom.dualize_update``): Linear is orthogonalized by
        Newton–Schulz ``ns`` (cubic, quintic, taylor5, muon or svd; ``steps`` None: the method's
        default), Conv2D per kernel position, Embed row by row. The inputs are not modified.
        """
        self._check_aligned(updates, "dualize")
        return [atom.dualize_update(u, share, ns=ns, steps=steps)
                for atom, u, share in zip(self.atoms(), updates, self.targets(target))]

    @torch.no_grad()
    def regularize(self, strength: float) -> list[float]:
        """Decoupled weight decay split like ``normalize``: atom k's weight *= 1 - share_k.

        Returns the per-atom shares applied. ``strength`` 0 is a no-op.
        """
        if strength == 0:
            return [0.0] * len(self.atoms())
        shares = self.targets(strength)
        for atom, share in zip(self.atoms(), shares):
            if share >= 1:
                raise ValueError(f"regularize: decay share {share:g} for {atom!r} is >= 1; lower the strength")
            atom.weight.mul_(1.0 - share)
        return shares

    def tare(self, absolute: float = 1.0) -> "Module":
        """Re-allocate mass: scale every atom's mass in this subtree so it totals ``absolute``."""
        absolute = float(absolute)
        if absolute < 0:
            raise ValueError(f"tare: mass must be >= 0, got {absolute}")
        total = self.mass
        if total <= 0:
            raise ValueError(f"tare: {type(self).__name__} has no mass to re-allocate")
        for atom in self.atoms():
            atom.mass = atom.mass * absolute / total
        return self

    def _check_aligned(self, tensors, what: str) -> None:
        atoms = self.atoms()
        if not isinstance(tensors, (list, tuple)):
            raise TypeError(f"{type(self).__name__}.{what}: expected a list of tensors aligned with atoms(), got {type(tensors).__name__}")
        if len(tensors) != len(atoms):
            raise ValueError(f"{type(self).__name__}.{what}: got {len(tensors)} tensors for {len(atoms)} atoms")
        for i, (atom, t) in enumerate(zip(atoms, tensors)):
            if not isinstance(t, torch.Tensor) or t.shape != atom.weight.shape:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{type(self).__name__}.{what}: tensor {i} has shape {shape}, "
                                 f"atom {i} {atom!r} needs {tuple(atom.weight.shape)}")

    # -- operators -------------------------------------------------------------------
    def __matmul__(self, other) -> "Sequence":
        """``self @ other``: run ``other`` first, then ``self``."""
        if isinstance(other, tuple):
            other = Tuple(*other)
        if not isinstance(other, Module):
            return NotImplemented
        return Sequence(other, self)

    def __rmatmul__(self, other) -> "Sequence":
        if isinstance(other, tuple):
            return Sequence(self, Tuple(*other))
        return NotImplemented

    def __mul__(self, a) -> "Sequence":
        if not isinstance(a, Real):
            return NotImplemented
        return Sequence(self, Mul(a))

    __rmul__ = __mul__

    def __truediv__(self, a) -> "Sequence":
        if not isinstance(a, Real):
            return NotImplemented
        return self * (1.0 / a)

    def __add__(self, other) -> "Sequence":
        if not isinstance(other, Module):
            return NotImplemented
        return Sequence(Tuple(self, other), Add())

    def __pow__(self, copies: int) -> "Module":
        """``M ** L``: L copies composed, each with its own freshly initialised weights."""
        if not isinstance(copies, int) or copies < 1:
            raise ValueError(f"{type(self).__name__} ** L: L must be a positive int, got {copies!r}")
        chain = [self]
        for _ in range(copies - 1):
            clone = copy.deepcopy(self)
            for atom in clone.atoms():
                atom.reset_parameters()
            chain.append(clone)
        return Sequence(*chain) if copies > 1 else self


class Atom(Module):
    """A module with one weight tensor ``weight``, its own norm, mass 1 and sensitivity 1.

    ``lr_mult`` multiplies the learning rate of a plain (unnormalized) step on this atom; a
    parametrization sets it (μP's per-layer LRs, ``lrtransfer.models.param``). Normalized and
    dualized steps size the update from the mass split instead and ignore it.
    """

    def __init__(self):
        super().__init__()
        self.mass = 1.0
        self.sensitivity = 1.0
        self.lr_mult = 1.0

    def atoms(self) -> list["Atom"]:
        return [self]

    def _split(self, eta: float, out: list[float]) -> None:
        out.append(eta)

    def _norm(self, values):
        return values[0]

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def atom_norm(self, w: torch.Tensor, exact: bool = True) -> torch.Tensor:
        """This atom's norm of a tensor shaped like its weight (0-d tensor)."""
        raise NotImplementedError

    embedding = False  # a lookup table (Embed): an input atom wherever it sits
    linear_in_weight = True  # output(c·W) = c·output(W); False for an atom that conditions W

    def tracking_state(self):
        """The state a tracked norm estimate keeps between calls (None: the atom keeps none)."""
        return None

    def restore_tracking(self, state) -> None:
        """Put back what ``tracking_state`` returned."""

    # ``estimate_norms(atoms, updates) -> norms``: a function that estimates the norms of
    # several atoms of one kind together (passed back to ``normalize`` as ``norms``), or None.
    estimate_norms = None

    def normalize(self, u, target: float, exact: bool = False, norms=None):
        """``u`` rescaled to atom norm ``target`` (a new tensor; 0 where u is 0). Given a list
        (the module API, one tensor for this one atom) it returns a list."""
        if isinstance(u, (list, tuple)):
            return Module.normalize(self, u, target, exact=exact)
        return self.normalize_update(u, target, exact=exact, norms=norms)

    def dualize(self, u, target: float, ns: str = "quintic", steps: int | None = None):
        """The direction of atom norm ``target`` steepest for ``u`` (a new tensor). Given a
        list (the module API) it returns a list."""
        if isinstance(u, (list, tuple)):
            return Module.dualize(self, u, target, ns=ns, steps=steps)
        return self.dualize_update(u, target, ns=ns, steps=steps)

    def normalize_update(self, u: torch.Tensor, target: float, exact: bool = False, norms=None) -> torch.Tensor:
        """The atom's normalize map on one tensor: ``u`` times ``normalize_scale``."""
        return u * self.normalize_scale(u, target, exact=exact, norms=norms)

    def normalize_scale(self, u: torch.Tensor, target: float, exact: bool = False, norms=None) -> torch.Tensor:
        """The multiplier, broadcastable against ``u``, that rescales ``u`` to atom norm
        ``target`` (0 where u is 0). ``norms``: the norm(s) the atom would compute, when the
        caller (``Module.normalize_scales``) already estimated them."""
        raise NotImplementedError

    def dualize_update(self, u: torch.Tensor, target: float, ns: str = "quintic",
                       steps: int | None = None) -> torch.Tensor:
        """The atom's dual map on one tensor, scaled to atom norm ``target``."""
        raise NotImplementedError


class Bond(Module):
    """A module without weights: mass 0, a fixed sensitivity."""

    def __init__(self, sensitivity: float = 1.0):
        super().__init__()
        self.mass = 0.0
        self.sensitivity = float(sensitivity)

    def atoms(self) -> list[Atom]:
        return []

    def _split(self, eta, out) -> None:
        return None

    def _norm(self, values):
        raise ValueError(f"{type(self).__name__} has no weights and no norm")


# -- the bonds the algebra itself uses (scalar multiplication, sum, residual) -----------------
class Identity(Bond):
    """x; sensitivity 1."""

    homogeneous = True

    def forward(self, x):
        return x


class Add(Bond):
    """Sum of a tuple of inputs (sensitivity 1 in the tuple's norm)."""

    def forward(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Mul(Bond):
    """a·x; sensitivity |a|. ``a * M`` is ``Mul(a) @ M``."""

    homogeneous = True

    def __init__(self, a: float):
        super().__init__(abs(float(a)))
        self.a = float(a)

    def forward(self, x):
        return x * self.a

    def extra_repr(self):
        return f"a={self.a:g}"


def _reaches_normalization(parts) -> bool:
    """Whether a chain of parts ignores its input's scale: a normalization comes after a
    homogeneous prefix (homogeneous maps carry the scale to it)."""
    for p in parts:
        if p.normalizes:
            return True
        if not p.homogeneous:
            return False
    return False


class _Combinator(Module):
    def __init__(self, children: list[Module]):
        super().__init__()
        for c in children:
            if not isinstance(c, Module):
                raise TypeError(f"{type(self).__name__}: every part must be a lrtransfer Module, got {type(c).__name__}")
        self.parts = nn.ModuleList(children)
        # The tree is fixed once built, so the atom list and each part's slice of it are too.
        self._atom_counts = [len(c.atoms()) for c in children]
        self.__dict__["_atom_list"] = [a for c in children for a in c.atoms()]

    def atoms(self) -> list[Atom]:
        return list(self._atom_list)

    def scale_invariant(self) -> list[bool]:
        return [f for part in self.parts for f in part.scale_invariant()]

    def _slices(self):
        start = 0
        for part, n in zip(self.parts, self._atom_counts):
            yield part, start, start + n
            start += n


class Sequence(_Combinator):
    """Composition. ``Sequence(M1, M2, ..., Mn)`` runs M1 first; equals ``Mn @ ... @ M1``."""

    def __init__(self, *modules: Module):
        flat: list[Module] = []
        for m in modules:  # keep one flat chain so state_dict keys and recursion stay shallow
            flat.extend(m.parts if isinstance(m, Sequence) else [m])
        super().__init__(flat)

    @property
    def mass(self) -> float:
        return sum(p.mass for p in self.parts)

    @property
    def sensitivity(self) -> float:
        return math.prod(p.sensitivity for p in self.parts)

    @property
    def homogeneous(self) -> bool:
        return all(p.homogeneous for p in self.parts)

    @property
    def normalizes(self) -> bool:
        return _reaches_normalization(self.parts)

    def scale_invariant(self) -> list[bool]:
        out: list[bool] = []
        parts = list(self.parts)
        for i, part in enumerate(parts):
            if isinstance(part, Atom):
                # c·W gives c·output for an atom linear in its weight; a later normalization
                # removes that c if only homogeneous maps come between
                out.append(part.scale_invariant()[0] or
                           (part.linear_in_weight and _reaches_normalization(parts[i + 1:])))
            else:  # nested chains are flattened, so this is a tuple: its atoms' own flags
                out.extend(part.scale_invariant())
        return out

    def forward(self, x):
        for part in self.parts:
            x = part(x)
        return x

    def _after(self) -> list[float]:
        """For each part, the product of the sensitivities of the parts that run after it."""
        after, acc = [], 1.0
        for part in reversed(self.parts):
            after.append(acc)
            acc *= part.sensitivity
        return after[::-1]

    def _split(self, eta, out) -> None:
        mu = self.mass
        for part, nu_after in zip(self.parts, self._after()):
            if not part.atoms():
                continue
            share = 0.0 if mu == 0 or nu_after == 0 else part.mass / mu * eta / nu_after
            part._split(share, out)

    def _norm(self, values):
        mu = self.mass
        terms = []
        for (part, a, b), nu_after in zip(self._slices(), self._after()):
            if b > a and part.mass > 0:
                terms.append(nu_after * (mu / part.mass) * part._norm(values[a:b]))
        return torch.stack(terms).max() if terms else torch.zeros(())


class Tuple(_Combinator):
    """Several modules on one input; the output is the tuple of their outputs."""

    def __init__(self, *modules: Module):
        super().__init__(list(modules))

    @property
    def mass(self) -> float:
        return sum(p.mass for p in self.parts)

    @property
    def sensitivity(self) -> float:
        return sum(p.sensitivity for p in self.parts)

    def forward(self, x):
        return tuple(part(x) for part in self.parts)

    def _split(self, eta, out) -> None:
        mu = self.mass
        for part in self.parts:
            if part.atoms():
                part._split(0.0 if mu == 0 else part.mass / mu * eta, out)

    def _norm(self, values):
        mu = self.mass
        terms = [(mu / part.mass) * part._norm(values[a:b])
                 for part, a, b in self._slices() if b > a and part.mass > 0]
        return torch.stack(terms).max() if terms else torch.zeros(())


def Residual(block: Module, depth: int) -> Module:
    """(1 - 1/L)·Identity + (1/L)·block: sensitivity exactly 1 when the block's is 1."""
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"Residual: depth L must be a positive int, got {depth!r}")
    return (1 - 1 / depth) * Identity() + (1 / depth) * block
