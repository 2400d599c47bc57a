"""One update for many cells at once: weights stacked along a leading cell axis.

Cells that share a model shape and an ``elementwise`` rule (its registry entry) but differ in
LR and weight decay take their directions in one call of the rule on the stacked gradients
and their steps in one broadcast multiply; each cell keeps its own ``Optimizer`` for its LR,
schedule and step count. Plain steps stack on any atoms, normalized ones on Linear atoms
(``StackedNormalized``); everything else steps per cell (``lrtransfer.run.batched``).
"""
from __future__ import annotations

import copy

import torch

from ..modular.atoms import Linear, cold_start, refine
from ..modular.spectral import block_power_step
from .optimizer import Optimizer
from .registry import OPTIMIZERS


def _elementwise(opt: Optimizer) -> bool:
    entry = OPTIMIZERS.get(opt.rule.name)
    return entry is not None and entry.elementwise


def stackable(opt: Optimizer) -> bool:
    """Whether ``opt``'s steps can be taken by ``StackedPlain``."""
    return opt.update == "plain" and opt.sphere is None and _elementwise(opt)


class _Stacked:
    """What the stacked updates share: the cells' optimizers, the stacked weights, one copy of
    the cells' rule (its state stacked too, created on the first step), the finite mask."""

    def __init__(self, opts: list[Optimizer], params: list[torch.Tensor]):
        self.opts, self.params = list(opts), list(params)
        self.rule = copy.deepcopy(opts[0].rule)   # fresh: its state is created on the first step

    @staticmethod
    def _finite(directions: list[torch.Tensor]) -> torch.Tensor:
        """(cells,) bool, the solo check per cell: the norm of each atom's direction is finite
        (an overflowing norm counts)."""
        return torch.stack([torch.linalg.vector_norm(d.flatten(1), dim=1) for d in directions]).isfinite().all(0)

    def _stepped(self) -> None:
        for o in self.opts:
            o.t += 1

    def keep(self, index: list[int], params: list[torch.Tensor]) -> None:
        """Go on with the cells at ``index`` only, whose weights are now ``params``."""
        self.opts = [self.opts[i] for i in index]
        self.params = list(params)
        rows = torch.tensor(index, device=params[0].device)
        for name, state in vars(self.rule).items():
            if isinstance(state, list) and state and all(isinstance(t, torch.Tensor) for t in state):
                setattr(self.rule, name, [t.index_select(0, rows) for t in state])


class StackedPlain(_Stacked):
    """The plain steps of ``opts`` (one per cell, all ``stackable`` and of one shape) on
    ``params``: one (cells, …) tensor per atom, cell i's slice its weight."""

    def __init__(self, opts: list[Optimizer], params: list[torch.Tensor]):
        if not opts or not all(stackable(o) for o in opts):
            raise ValueError("StackedPlain: every optimizer must take plain steps with an elementwise rule")
        first = opts[0]
        if any(o.rule.name != first.rule.name or o.lr_mults != first.lr_mults
               or o.decay_mults != first.decay_mults for o in opts):
            raise ValueError("StackedPlain: the cells' rules and per-atom LR and decay multipliers must agree")
        super().__init__(opts, params)
        self.lr_mults, self.decay_mults = first.lr_mults, first.decay_mults

    def _per_cell(self, values: list[float], like: torch.Tensor) -> torch.Tensor:
        # a scalar the solo step takes as a Python float (double) is cast to the weight's
        # dtype there; computing in float64 and casting once gives each cell the same number
        shape = (len(values),) + (1,) * (like.dim() - 1)
        return torch.tensor(values, dtype=torch.float64, device=like.device).reshape(shape)

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Apply every cell's update from the stacked ``grads``; return a (cells,) bool tensor,
        False where the cell's direction was not finite (that cell must be dropped: its weights
        were stepped all the same)."""
        directions = self.rule.direction(grads)
        finite = self._finite(directions)
        lrs = [o.current_lr() for o in self.opts]
        decays = [o.weight_decay for o in self.opts]
        for p, d, m, dm in zip(self.params, directions, self.lr_mults, self.decay_mults):
            scale = self._per_cell([lr * m for lr in lrs], p)
            if any(decays):   # the solo step's decay: lr·decay_mult·wd (Optimizer.decay_mults)
                decay_scale = scale if dm == m else self._per_cell([lr * dm for lr in lrs], p)
                p.mul_((1 - decay_scale * self._per_cell(decays, p)).to(p.dtype))
            p.sub_(d * scale.to(p.dtype))
        self._stepped()
        return finite


def normalize_stackable(opt: Optimizer) -> bool:
    """Whether ``opt``'s steps can be taken by ``StackedNormalized``: normalized steps of an
    elementwise rule on tracked (not SVD) norms, every atom a Linear of float32 or float64
    weights (a bfloat16 weight's scale would round differently from the cell's own step)."""
    return (opt.update == "normalize" and not opt.exact and opt.sphere is None
            and _elementwise(opt) and all(type(a) is Linear for a in opt.atoms)
            and all(a.weight.dtype in (torch.float32, torch.float64) for a in opt.atoms))


class StackedNormalized(_Stacked):
    """The normalized steps of ``opts`` (one per cell, all ``normalize_stackable`` and of one
    shape) on stacked ``params``: per cell exactly ``Module.normalize``'s arithmetic.

    Cell i's update of atom k is rescaled to its share of the cell's LR over the tracked
    spectral norm, on the cell's own tracking block, cold or warm as the cell alone would be
    (``atoms.Tracked``): cold cells take the exact cold start, warm ones one block power
    step, batched over the cells; the alignments of all cells and atoms are read back with one
    host sync, and the cell-atoms below ``align_floor`` are refined, as alone. The blocks live
    here, stacked (cells, r, cols) per atom, not in the cells' atoms.
    """

    def __init__(self, opts: list[Optimizer], params: list[torch.Tensor]):
        if not opts or not all(normalize_stackable(o) for o in opts):
            raise ValueError("StackedNormalized: every optimizer must take tracked normalized steps on Linear atoms")
        first = opts[0]
        if any(o.rule.name != first.rule.name for o in opts):
            raise ValueError("StackedNormalized: the cells' rules must agree")
        super().__init__(opts, params)
        self.atoms = first.atoms          # the cells' atoms agree in everything but their weights
        states = [[o.atoms[k].tracking_state() for o in opts] for k in range(len(self.atoms))]   # (block, warm)
        self.blocks = [torch.stack([block for block, _ in cells]) for cells in states]
        self.warm = [[warm for _, warm in cells] for cells in states]
        self.unit_shares = torch.tensor([o.model.targets(1.0) for o in opts], dtype=torch.float64)   # (cells, atoms)

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Apply every cell's normalized update; return the (cells,) finite mask (``StackedPlain.step``)."""
        directions = self.rule.direction(grads)
        finite = self._finite(directions)
        lrs = [o.current_lr() for o in self.opts]
        # cell i's share of atom k: targets are linear in the LR, so lr_i · targets(1)[k]
        # (tests/test_batched.py: the same steps as alone to 1e-5)
        # (cells, atoms), on the directions' device and in their dtype (one for all atoms: stackable)
        shares = (torch.tensor(lrs, dtype=torch.float64).unsqueeze(1) * self.unit_shares).to(
            device=directions[0].device, dtype=directions[0].dtype)
        sigmas = self._norms(directions)
        scales = []
        for k, sigma in enumerate(sigmas):
            scale = torch.where(sigma > 0, sigma.reciprocal(), 0.0) * shares[:, k]   # a zero update stays zero
            scales.append(scale.reshape(-1, 1, 1))
        for o, lr in zip(self.opts, lrs):
            if o.weight_decay:   # each cell's atoms point into the stack: this decays its slices
                o.model.regularize(lr * o.weight_decay)
        for p, d, scale in zip(self.params, directions, scales):
            p.addcmul_(d, scale, value=-1)   # w − scale·d in one pass, as the optimizer alone
        self._stepped()
        return finite

    def _norms(self, directions: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each atom's tracked spectral norm per cell, (cells,), as ``atoms.spectral_estimates``."""
        sigmas, checks = [], []
        for k, (atom, d) in enumerate(zip(self.atoms, directions)):
            m = atom._matrices(d)                                   # (cells, rows, cols)
            sigma = torch.empty(m.shape[0], dtype=d.dtype, device=m.device)
            warm = [i for i, w in enumerate(self.warm[k]) if w]
            cold = [i for i, w in enumerate(self.warm[k]) if not w]
            if warm:
                rows = torch.tensor(warm, device=m.device)
                mw = m if len(warm) == m.shape[0] else m.index_select(0, rows)
                qw = self.blocks[k] if len(warm) == m.shape[0] else self.blocks[k].index_select(0, rows)
                s, align, q = block_power_step(mw, qw)
                self._put(k, warm, q)
                sigma[warm] = s.to(sigma.dtype)
                checks.append((k, warm, align))
            for i in cold:
                sigma[i] = self._cold_start(k, i, m[i])
            sigmas.append(sigma)
        if checks:
            flat = torch.cat([a.reshape(-1).float() for _, _, a in checks]).tolist()   # the one host sync
            start = 0
            for k, cells, align in checks:
                low = [i for i, a in zip(cells, flat[start:start + len(cells)]) if a < self.atoms[k].align_floor]
                start += len(cells)
                if low:   # NaN is not < floor, as alone
                    rows = torch.tensor(low, device=directions[k].device)
                    m = self.atoms[k]._matrices(directions[k]).index_select(0, rows)
                    s, q = refine(m, self.blocks[k].index_select(0, rows), self.atoms[k].extra_steps)
                    self._put(k, low, q)
                    sigmas[k][low] = s.to(sigmas[k].dtype)
        return sigmas

    def _put(self, k: int, cells: list[int], q: torch.Tensor) -> None:
        if len(cells) == self.blocks[k].shape[0]:
            self.blocks[k] = q.to(self.blocks[k].dtype)
        else:
            self.blocks[k] = self.blocks[k].clone()
            self.blocks[k][cells] = q.to(self.blocks[k].dtype)

    def _cold_start(self, k: int, i: int, m: torch.Tensor) -> torch.Tensor:
        """``Tracked._cold_start`` for cell i's atom k: exact σ₁ and block; cold stays cold on
        a zero or non-finite update."""
        sigma, q = cold_start(m, self.blocks[k].shape[-2])
        if q is not None:
            self._put(k, [i], q.unsqueeze(0))
            self.warm[k][i] = True
        return sigma

    def keep(self, index: list[int], params: list[torch.Tensor]) -> None:
        super().keep(index, params)
        rows = torch.tensor(index, device=params[0].device)
        self.blocks = [b.index_select(0, rows) for b in self.blocks]
        self.warm = [[w[i] for i in index] for w in self.warm]
        self.unit_shares = self.unit_shares[index]
