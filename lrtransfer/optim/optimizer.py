"""The optimizer: a base rule, plain (step = lr·direction) or normalized in the modular norm.

Normalized: the direction is rescaled with ``model.normalize`` so that the step has modular
norm exactly ``lr`` (the learning rate is then in units of modular norm), and weight decay
goes through ``model.regularize``. Plain: the usual step and AdamW-style decoupled decay
(weight *= 1 - lr·wd). A non-finite direction is never applied: ``step`` raises ``Diverged``.
"""
from __future__ import annotations

import math

import torch

from ..modular import Module
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
        self._check_finite(torch._foreach_norm(directions))
        if self.normalize:
            scales = [a.unit_scale(d, exact=self.exact) * (share * lr)
                      for a, d, share in zip(self.atoms, directions, self.unit_targets)]
            if self.weight_decay:
                self.model.regularize(lr * self.weight_decay)
            for p, d, s in zip(self.params, directions, scales):
                p.addcmul_(d, s, value=-1)
        else:
            if self.weight_decay:
                torch._foreach_mul_(self.params, 1 - lr * self.weight_decay)
            torch._foreach_add_(self.params, directions, alpha=-lr)
        self.t += 1
        return lr

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
