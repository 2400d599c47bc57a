"""The optimizer: a base rule's direction, applied plain, normalized or dualized.

* ``plain``: step = lr · direction per atom, times the atom's ``lr_mult`` (a parametrization's
  per-layer LR, e.g. μP) and the rule's own multiplier (Muon's Adam group); AdamW-style
  decoupled decay, weight *= 1 − lr_k·wd.
* ``normalize``: the directions are rescaled as ``model.normalize(directions, lr)`` rescales
  them — each atom's to its share of ``lr`` — so the step has modular norm ``lr`` (applied
  from ``model.normalize_scales``: w − scale·d in one pass per weight).
* ``dualize``: the directions go through ``model.dualize(directions, lr, ns, ns_steps)`` —
  the steepest-descent step of modular norm ``lr`` (SCIENCE.md §2).
  For both, weight decay goes through ``model.regularize`` (split like the target).

The optimizer calls exactly ``Module.normalize_scales`` / ``Module.dualize``: the maps live
with the atoms. A non-finite direction is never applied: ``step`` raises ``Diverged``. (Plain Adam
steps, eps > 0, are applied by torch's fused kernel straight from the gradients, which are
checked instead: for Adam a finite gradient means a finite direction.)

``constraint = "sphere"`` (plain steps only) trains on the sphere of constraint.py: the
non-scale-invariant atoms are frozen and the scale-invariant ones are projected back to their
initial joint norm after every step.
"""
from __future__ import annotations

import math

import torch

from ..modular import Module
from .constraint import CONSTRAINTS, Sphere
from .muon import Muon
from .rules import Adam, SGD, Sign
from .schedule import Schedule

UPDATES = ("plain", "normalize", "dualize")


class Diverged(ArithmeticError):
    """The update at ``step`` was NaN or inf; nothing was applied."""

    def __init__(self, step: int, atoms: list[int]):
        self.step, self.atoms = step, atoms
        super().__init__(f"non-finite update at step {step} (atoms {atoms})")


class Optimizer:
    def __init__(self, model: Module, rule, lr: float, update: str = "plain", weight_decay: float = 0.0,
                 schedule: Schedule | None = None, exact: bool = False, ns: str = "quintic",
                 ns_steps: int | None = None, constraint: str = "none"):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"optimizer: lr must be a positive finite number, got {lr!r}")
        if weight_decay < 0:
            raise ValueError(f"optimizer: weight_decay must be >= 0, got {weight_decay!r}")
        if update not in UPDATES:
            raise ValueError(f"optimizer: update {update!r} is not allowed; allowed: {', '.join(UPDATES)}")
        if constraint not in CONSTRAINTS:
            raise ValueError(f"optimizer: constraint {constraint!r} is not allowed; allowed: {', '.join(CONSTRAINTS)}")
        if constraint != "none" and update != "plain":
            raise ValueError(f"optimizer: constraint {constraint!r} needs update = \"plain\", got {update!r}")
        self.model, self.rule = model, rule
        self.lr, self.update, self.weight_decay = float(lr), update, float(weight_decay)
        self.schedule = schedule or Schedule("constant")
        self.exact, self.ns, self.ns_steps = exact, ns, ns_steps
        self.atoms = model.atoms()
        self.params = [a.weight for a in self.atoms]
        rule_mults = getattr(rule, "lr_mults", None) or [1.0] * len(self.atoms)
        # plain steps: each atom's LR multiplier (parametrization × rule)
        self.lr_mults = [a.lr_mult * m for a, m in zip(self.atoms, rule_mults)]
        self.sphere = Sphere(model) if constraint == "sphere" else None
        if self.sphere is not None:  # the paper's setup: only the scale-invariant weights train
            self.lr_mults = [0.0 if frozen else m for m, frozen in zip(self.lr_mults, self.sphere.frozen)]
        self.t = 0
        self._applies: bool | None = None   # whether the rule applies plain steps itself; set on the first step

    def current_lr(self) -> float:
        return self.lr * self.schedule(self.t)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> float:
        """Apply one update from the current gradients; return the LR used."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        lr = self.current_lr()
        if self._applies is None:   # the gradients' dtype, device and layout are the weights': fixed
            self._applies = self.update == "plain" and hasattr(self.rule, "apply") and self.rule.fuses(grads)
        if self._applies:
            # Adam with eps > 0: a finite gradient gives a finite direction (|m̂| is bounded by
            # the gradients seen, sqrt(v̂) + eps by eps from below), so the check reads the
            # gradients, and the step is applied in the kernel that computes it
            self._check_finite(torch._foreach_norm(grads))
            self.rule.apply(self.params, grads, lr, self.lr_mults, self.weight_decay)
            self._after_step()
            return lr
        directions = self.rule.direction(grads)
        self._check_finite(torch._foreach_norm(directions))
        if self.update == "plain":
            self._plain_step(directions, lr)
        elif self.update == "normalize":
            scales = self.model.normalize_scales(directions, lr, exact=self.exact)
            self._regularize(lr)
            for p, d, scale in zip(self.params, directions, scales):
                p.addcmul_(d, scale, value=-1)   # w − scale·d in one pass: what normalize(...) then a subtraction do in two
        else:
            steps = self.model.dualize(directions, lr, ns=self.ns, steps=self.ns_steps)
            self._regularize(lr)
            torch._foreach_sub_(self.params, steps)
        self._after_step()
        return lr

    def _regularize(self, lr: float) -> None:
        """Normalized and dualized steps' weight decay: ``model.regularize``, split like the target."""
        if self.weight_decay:
            self.model.regularize(lr * self.weight_decay)

    def _after_step(self) -> None:
        if self.sphere is not None:
            self.sphere.project()
        self.t += 1

    def _plain_step(self, directions, lr) -> None:
        if all(m == 1.0 for m in self.lr_mults):  # one fused call for the common case
            if self.weight_decay:
                torch._foreach_mul_(self.params, 1 - lr * self.weight_decay)
            torch._foreach_add_(self.params, directions, alpha=-lr)
            return
        for p, d, m in zip(self.params, directions, self.lr_mults):
            if self.weight_decay:
                p.mul_(1 - lr * m * self.weight_decay)
            p.add_(d, alpha=-lr * m)

    def _check_finite(self, norms) -> None:
        finite = torch.isfinite(torch.stack(list(norms)))
        if not bool(finite.all()):  # one host sync per step, before anything is applied
            raise Diverged(self.t, torch.nonzero(~finite).flatten().tolist())


# Base rules by name: (model, options) -> rule. A new optimizer is its rule class plus one
# line here; the run spec's `optimizer` choices are these names.
FACTORIES = {
    "sgd": lambda model, o: SGD(momentum=o["momentum"]),
    "adam": lambda model, o: Adam(betas=tuple(o["betas"]), eps=o["eps"]),
    "sign": lambda model, o: Sign(),
    "muon": lambda model, o: Muon([r == "hidden" for r in model.roles()], momentum=o["muon_momentum"],
                                  ns_steps=o["ns_steps"] or 5, adam_ratio=o["muon_adam_ratio"], eps=o["eps"]),
}
OPTIMIZERS = tuple(FACTORIES)


def make_optimizer(model: Module, name: str, lr: float, update: str = "plain", weight_decay: float = 0.0,
                   schedule: str = "linear", steps: int = 1, warmup: int = 0, momentum: float = 0.9,
                   betas=(0.9, 0.99), eps: float = 1e-8, exact: bool = False, ns: str = "quintic",
                   ns_steps: int | None = None, muon_momentum: float = 0.95, muon_adam_ratio: float = 0.015,
                   normalize: bool | None = None, constraint: str = "none") -> Optimizer:
    """The optimizer a run config describes: base rule ``name`` (sgd, adam, sign, muon) applied
    ``update`` (plain, normalize, dualize). ``normalize=True`` is ``update="normalize"``.
    ``constraint``: "none" or "sphere" (constraint.py)."""
    if normalize:
        update = "normalize"
    if name not in FACTORIES:
        raise ValueError(f"optimizer: unknown name {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    if name == "muon" and update != "plain":
        raise ValueError(f"optimizer muon: it orthogonalizes on its own; update must be plain, got {update!r}")
    rule = FACTORIES[name](model, dict(momentum=momentum, betas=betas, eps=eps, ns_steps=ns_steps,
                                       muon_momentum=muon_momentum, muon_adam_ratio=muon_adam_ratio))
    return Optimizer(model, rule, lr, update=update, weight_decay=weight_decay,
                     schedule=Schedule(schedule, steps, warmup), exact=exact, ns=ns, ns_steps=ns_steps,
                     constraint=constraint)
