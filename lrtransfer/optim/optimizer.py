"""The optimizer: a base rule, plain (step = lr·direction) or normalized in the modular norm.

Normalized: each atom's direction is rescaled to its share of ``lr`` (as ``model.normalize``
does), so that the step has modular norm ``lr`` (the learning rate is then in units of
modular norm), and weight decay goes through ``model.regularize``. With ``exact=False`` the
spectral norms are tracked estimates (lrtransfer/modular/spectral.py): exact on the first
step, then lower bounds (on the quickstart every atom stays within 1.017 of its share).
There is one host sync per step for all atoms together. Plain: the usual step and AdamW-style decoupled decay
(weight *= 1 - lr·wd). A non-finite direction is never applied: ``step`` raises ``Diverged``.
"""
from __future__ import annotations

import math

import torch

from ..modular import Module
from ..modular.atoms import _Tracked, _inverse, tracked_estimates
from .rules import RULES, Adam, SGD
from .schedule import Schedule


class Diverged(ArithmeticError):
    """The update at ``step`` was NaN or inf; nothing was applied."""

    def __init__(self, step: int, atoms: list[int]):
        self.step, self.atoms = step, atoms
        super().__init__(f"non-finite update at step {step} (atoms {atoms})")


class Optimizer:
    def __init__(self, model: Module, rule, lr: float, normalize: bool = False,
                 weight_decay: float = 0.0, schedule: Schedule | None = None, exact: bool = False):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"optimizer: lr must be a positive finite number, got {lr!r}")
        if weight_decay < 0:
            raise ValueError(f"optimizer: weight_decay must be >= 0, got {weight_decay!r}")
        self.model, self.rule = model, rule
        self.lr, self.normalize, self.weight_decay = float(lr), bool(normalize), float(weight_decay)
        self.schedule = schedule or Schedule("constant")
        self.exact = exact
        self.atoms = model.atoms()
        self.params = [a.weight for a in self.atoms]
        # Targets are linear in eta: split once, scale by the scheduled LR each step.
        self.unit_targets = model.targets(1.0) if normalize else None
        # Atoms with tracked spectral norms: their estimates share the step's one host sync.
        self._tracked = [i for i, a in enumerate(self.atoms) if isinstance(a, _Tracked)] \
            if normalize and not exact else []
        self.t = 0

    def current_lr(self) -> float:
        return self.lr * self.schedule(self.t)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> float:
        """Apply one update from the current gradients; return the LR used."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        directions = self.rule.direction(grads)
        lr = self.current_lr()
        norms = torch._foreach_norm(directions)
        if self._tracked:
            self._tracked_step(directions, norms, lr)
        elif self.normalize:
            self._check_finite(norms)
            scales = [a.unit_scale(d, exact=self.exact) * (share * lr)
                      for a, d, share in zip(self.atoms, directions, self.unit_targets)]
            if self.weight_decay:
                self.model.regularize(lr * self.weight_decay)
            for p, d, s in zip(self.params, directions, scales):
                p.addcmul_(d, s, value=-1)
        else:
            self._check_finite(norms)
            if self.weight_decay:
                torch._foreach_mul_(self.params, 1 - lr * self.weight_decay)
            torch._foreach_add_(self.params, directions, alpha=-lr)
        self.t += 1
        return lr

    def _tracked_step(self, directions, norms, lr) -> None:
        """Normalized step with tracked spectral norms and a single host sync.

        The warm estimates need no sync, so the finiteness flags, the estimates and their
        alignments are read back together. Only then are the atoms whose alignment is low
        refined (more block steps, no sync), and the step applied.
        """
        idx = self._tracked
        atoms = [self.atoms[i] for i in idx]
        sigmas, aligns, colds = tracked_estimates(atoms, [directions[i] for i in idx])
        # non-finite directions give NaN estimates and keep their blocks, so nothing is spoiled
        # before the check below raises
        flat = torch.cat([torch.stack(norms).float()] + [x.reshape(-1).float() for x in sigmas + aligns])
        values = flat.tolist()  # the one host sync of the step
        n = len(norms)
        bad = [k for k, v in enumerate(values[:n]) if not math.isfinite(v)]
        if bad:
            raise Diverged(self.t, bad)
        offsets = [0]
        for x in sigmas:
            offsets.append(offsets[-1] + x.numel())
        total = offsets[-1]
        scales: dict[int, object] = {}
        for j, (i, atom) in enumerate(zip(idx, atoms)):
            share = self.unit_targets[i] * lr
            sig = values[n + offsets[j]: n + offsets[j + 1]]
            al = values[n + total + offsets[j]: n + total + offsets[j + 1]]
            if not colds[j] and min(al) < atom.align_floor:  # NaN (zero update) is not < floor
                sigma = atom._refine(atom._matrices(directions[i]))
                scales[i] = (_inverse(sigma) * share).reshape(atom._scale_shape)
            elif len(sig) == 1:  # Linear: a Python float, no tensor arithmetic
                scales[i] = share / sig[0] if sig[0] > 0 else 0.0
            else:
                scales[i] = (_inverse(sigmas[j]) * share).reshape(atom._scale_shape)
        for i, (a, d, share) in enumerate(zip(self.atoms, directions, self.unit_targets)):
            if i not in scales:  # untracked atoms (Embed): their own tensor scale
                scales[i] = a.unit_scale(d, exact=False) * (share * lr)
        if self.weight_decay:
            self.model.regularize(lr * self.weight_decay)
        for i, (p, d) in enumerate(zip(self.params, directions)):
            s = scales[i]
            if isinstance(s, float):
                if s:
                    p.add_(d, alpha=-s)
            else:
                p.addcmul_(d, s, value=-1)

    def _check_finite(self, norms) -> None:
        finite = torch.isfinite(torch.stack(list(norms)))
        if not bool(finite.all()):  # one host sync per step, before anything is applied
            raise Diverged(self.t, torch.nonzero(~finite).flatten().tolist())


def make_optimizer(model: Module, name: str, lr: float, normalize: bool = False,
                   weight_decay: float = 0.0, schedule: str = "linear", steps: int = 1,
                   warmup: int = 0, momentum: float = 0.9, betas=(0.9, 0.99), eps: float = 1e-8,
                   exact: bool = False) -> Optimizer:
    """The optimizer a run config describes: ``name`` is "sgd" or "adam"."""
    if name == "sgd":
        rule = SGD(momentum=momentum)
    elif name == "adam":
        rule = Adam(betas=tuple(betas), eps=eps)
    else:
        raise ValueError(f"optimizer: unknown name {name!r}; allowed: {', '.join(RULES)}")
    return Optimizer(model, rule, lr, normalize=normalize, weight_decay=weight_decay,
                     schedule=Schedule(schedule, steps, warmup), exact=exact)
