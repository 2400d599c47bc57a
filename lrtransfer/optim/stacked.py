"""One plain update for many cells at once: weights stacked along a leading cell axis.

Cells that share a model shape and an elementwise base rule (sgd, adam, sign) but differ in
LR and weight decay take the same arithmetic per element, so their directions are one call of
the rule on the stacked gradients and their steps one broadcast multiply: the per-op overhead
is paid once, not once per cell. Each cell keeps its own ``Optimizer`` for everything else
(its LR, schedule and step count), so a cell's LR at step t is exactly what it would be alone.

Rules that are not elementwise (Muon's Newton–Schulz on hidden matrices), normalized and
dualized steps and the sphere constraint are left to each cell's own optimizer
(``lrtransfer.batched``).
"""
from __future__ import annotations

import copy

import torch

from .optimizer import Optimizer

ELEMENTWISE_RULES = ("sgd", "adam", "sign")


def stackable(opt: Optimizer) -> bool:
    """Whether ``opt``'s steps can be taken by ``StackedPlain``."""
    return opt.update == "plain" and opt.sphere is None and opt.rule.name in ELEMENTWISE_RULES


class StackedPlain:
    """The plain steps of ``opts`` (one per cell, all ``stackable`` and of one shape) on
    ``params``: one (cells, …) tensor per atom, cell i's slice its weight."""

    def __init__(self, opts: list[Optimizer], params: list[torch.Tensor]):
        if not opts or not all(stackable(o) for o in opts):
            raise ValueError("StackedPlain: every optimizer must take plain steps with an elementwise rule")
        first = opts[0]
        if any(o.rule.name != first.rule.name or o.lr_mults != first.lr_mults for o in opts):
            raise ValueError("StackedPlain: the cells' rules and per-atom LR multipliers must agree")
        self.opts, self.params = list(opts), list(params)
        self.rule = copy.deepcopy(first.rule)   # fresh: its state is created on the first step
        self.lr_mults = first.lr_mults

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
        # the solo check: the norm of each atom's direction is finite (an overflowing norm counts)
        finite = torch.stack([torch.linalg.vector_norm(d.flatten(1), dim=1) for d in directions]).isfinite().all(0)
        lrs = [o.current_lr() for o in self.opts]
        decays = [o.weight_decay for o in self.opts]
        for p, d, m in zip(self.params, directions, self.lr_mults):
            scale = self._per_cell([lr * m for lr in lrs], p)
            if any(decays):
                p.mul_((1 - scale * self._per_cell(decays, p)).to(p.dtype))
            p.sub_(d * scale.to(p.dtype))
        for o in self.opts:
            o.t += 1
        return finite

    def keep(self, index: list[int], params: list[torch.Tensor]) -> None:
        """Go on with the cells at ``index`` only, whose weights are now ``params``."""
        self.opts = [self.opts[i] for i in index]
        self.params = list(params)
        rows = torch.tensor(index, device=params[0].device)
        for name, state in vars(self.rule).items():
            if isinstance(state, list) and state and all(isinstance(t, torch.Tensor) for t in state):
                setattr(self.rule, name, [t.index_select(0, rows) for t in state])
