"""The optimizer: a base rule's direction, applied plain, normalized or dualized.

``plain`` steps lr · direction per atom (times its ``lr_mult``) with decoupled decay
(lr · wd, times the rule's multiplier only: width-independent under μP);
``normalize`` and ``dualize`` size the step in the modular norm through ``Module.normalize_scales``
and ``Module.dualize``. A non-finite direction is never applied (``Diverged``). How each mode
works: docs/optimizers.md.
"""
from __future__ import annotations

import math

import torch

from ..modular import Module
from .constraint import CONSTRAINTS, Sphere
from .registry import OPTIMIZERS, option_keys
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
        # plain steps: each atom's LR multiplier (parametrization × rule), and its decay's: the
        # rule's alone, so lr·wd is the same at every width as in mup's MuAdamW / MuSGD
        # (docs/parametrizations.md)
        self.lr_mults = [a.lr_mult * m for a, m in zip(self.atoms, rule_mults)]
        self.decay_mults = [float(m) for m in rule_mults]
        self.sphere = Sphere(model) if constraint == "sphere" else None
        if self.sphere is not None:  # the paper's setup: only the scale-invariant weights train
            self.lr_mults = [0.0 if frozen else m for m, frozen in zip(self.lr_mults, self.sphere.frozen)]
            self.decay_mults = [0.0 if frozen else m for m, frozen in zip(self.decay_mults, self.sphere.frozen)]
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
            self.rule.apply(self.params, grads, lr, self.lr_mults, self.weight_decay, self.decay_mults)
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
        if all(m == 1.0 for m in self.lr_mults + self.decay_mults):  # one fused call for the common case
            if self.weight_decay:
                torch._foreach_mul_(self.params, 1 - lr * self.weight_decay)
            torch._foreach_add_(self.params, directions, alpha=-lr)
            return
        for p, d, m, dm in zip(self.params, directions, self.lr_mults, self.decay_mults):
            if self.weight_decay:
                p.mul_(1 - lr * dm * self.weight_decay)
            p.add_(d, alpha=-lr * m)

    def _check_finite(self, norms) -> None:
        finite = torch.isfinite(torch.stack(list(norms)))
        if not bool(finite.all()):  # one host sync per step, before anything is applied
            raise Diverged(self.t, torch.nonzero(~finite).flatten().tolist())


def make_optimizer(model: Module, name: str, lr: float, update: str = "plain", weight_decay: float = 0.0,
                   schedule: str = "linear", steps: int = 1, warmup: int = 0, exact: bool = False,
                   ns: str = "quintic", ns_steps: int | None = None, normalize: bool | None = None,
                   constraint: str = "none", **options) -> Optimizer:
    """The optimizer a run config describes: registered base rule ``name`` (registry.py)
    applied ``update`` (plain, normalize, dualize). ``normalize=True`` is ``update="normalize"``.
    ``constraint``: "none" or "sphere" (constraint.py). ``options``: the rule's keys (e.g.
    momentum, beta1); those not given take their declared defaults."""
    if normalize:
        update = "normalize"
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: unknown name {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    entry = OPTIMIZERS[name]
    if entry.plain_only and update != "plain":
        raise ValueError(f"optimizer {name}: it {entry.plain_only}; update must be plain, got {update!r}")
    unknown = sorted(set(options) - {k.name for k in option_keys()})
    if unknown:
        raise ValueError(f"optimizer: unknown option(s) {', '.join(unknown)}")
    values = {k.name: options.get(k.name, k.default) for k in entry.keys}
    rule = entry.make(model, {**values, "ns_steps": ns_steps})
    return Optimizer(model, rule, lr, update=update, weight_decay=weight_decay,
                     schedule=Schedule(schedule, steps, warmup), exact=exact, ns=ns, ns_steps=ns_steps,
                     constraint=constraint)
