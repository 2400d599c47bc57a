"""Base update rules: the direction an optimizer would step in, before any scaling.

A rule turns the list of gradients into a list of update directions (the step is
``-lr * direction``). Directions may be the rule's own buffers: callers must not modify them.
"""
from __future__ import annotations

import torch


class SGD:
    """Heavy-ball momentum: buf ← momentum·buf + g; direction = buf (or g + momentum·buf, Nesterov)."""

    name = "sgd"

    def __init__(self, momentum: float = 0.9, nesterov: bool = False):
        if not 0 <= momentum < 1:
            raise ValueError(f"sgd: momentum must be in [0, 1), got {momentum}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.buffers: list[torch.Tensor] | None = None

    def direction(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.momentum == 0:
            return grads
        if self.buffers is None:
            self.buffers = [g.clone() for g in grads]
        else:
            torch._foreach_mul_(self.buffers, self.momentum)
            torch._foreach_add_(self.buffers, grads)
        if self.nesterov:
            return torch._foreach_add(grads, self.buffers, alpha=self.momentum)
        return self.buffers

    def state_dict(self) -> dict:
        return {"buffers": self.buffers}


class Adam:
    """Adam's direction m̂ / (sqrt(v̂) + eps) with bias correction.

    With betas (0, 0) and eps 0 this is exactly sign(g), with 0 where g is 0 (science.md §3).

    With eps > 0 (every run's default) the moments and the direction are one pass of torch's
    fused Adam kernel over each tensor, writing the direction into a buffer this rule keeps:
    the elementwise ops of the textbook form read and write each weight-sized tensor about
    ten times, and at width 512 on a CPU those passes (memory-bound) cost as much as a third
    of the step. The kernel steps a "parameter" p to p·(1 − lr·wd) − lr·m̂/(sqrt(v̂) + eps);
    with lr = −1 and wd = −1 the first term is p·0 = 0 and the buffer is left holding exactly
    the direction, whatever it held before (the same arithmetic as the textbook form up to
    float rounding: tests/test_optim.py). A buffer that held a non-finite direction is never
    stepped again: the optimizer stops the run, a bundle drops the cell.
    """

    name = "adam"

    def __init__(self, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8):
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"adam: betas must be in [0, 1), got {betas}")
        if eps < 0:
            raise ValueError(f"adam: eps must be >= 0, got {eps}")
        self.b1, self.b2, self.eps = float(b1), float(b2), float(eps)
        self.t = 0
        self.m: list[torch.Tensor] | None = None
        self.v: list[torch.Tensor] | None = None
        self.out: list[torch.Tensor] | None = None   # the fused path's direction buffers
        self._groups_of, self._groups = None, []       # the lr_mults apply grouped, and the groups

    def _advance(self, grads: list[torch.Tensor]) -> None:
        """One more step: the moments (zero) on the first, then t += 1."""
        if self.m is None:
            self.m = [torch.zeros_like(g) for g in grads]
            self.v = [torch.zeros_like(g) for g in grads]
        self.t += 1

    def _step_tensor(self, device: torch.device) -> torch.Tensor:
        """t as the tensor the fused kernel reads (for its bias corrections)."""
        return torch.tensor(float(self.t), dtype=torch.float32, device=device)

    def direction(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        self._advance(grads)
        if self.fuses(grads):
            step = self._step_tensor(grads[0].device)
            if self.out is None:   # zeros, not empty: uninitialized memory may hold NaN, and NaN·0 is NaN
                self.out = [torch.zeros_like(g) for g in grads]
            torch._fused_adamw_(self.out, grads, self.m, self.v, [], [step] * len(grads), lr=-1.0,
                                beta1=self.b1, beta2=self.b2, weight_decay=-1.0, eps=self.eps,
                                amsgrad=False, maximize=False)   # out·0 + direction (class doc)
            return self.out
        torch._foreach_lerp_(self.m, grads, 1 - self.b1)
        torch._foreach_mul_(self.v, self.b2)
        torch._foreach_addcmul_(self.v, grads, grads, 1 - self.b2)
        bc1 = 1 - self.b1 ** self.t
        bc2 = 1 - self.b2 ** self.t
        denom = torch._foreach_sqrt(self.v)
        if bc2 != 1:
            torch._foreach_div_(denom, bc2 ** 0.5)
        if self.eps:
            torch._foreach_add_(denom, self.eps)
        out = torch._foreach_div(self.m, denom)
        if bc1 != 1:
            torch._foreach_div_(out, bc1)
        if not self.eps:  # 0/0 where the gradient history is all zero: no step there
            out = [torch.where(d == 0, torch.zeros_like(o), o) for o, d in zip(out, denom)]
        return out

    def fuses(self, grads: list[torch.Tensor]) -> bool:
        """Whether torch's fused kernel takes ``grads`` (eps > 0, ``_fusable`` tensors): then
        ``direction`` computes the direction in it, and a plain step can be ``apply``'d in it."""
        return self.eps > 0 and _fusable(grads)

    def apply(self, params: list[torch.Tensor], grads: list[torch.Tensor], lr: float, lr_mults: list[float],
              weight_decay: float = 0.0, decay_mults: list[float] | None = None) -> None:
        """The plain step itself, straight onto the weights: w ← w·(1 − lr·d_k·wd) − lr_k·m̂/(sqrt(v̂) + eps),
        lr_k = lr·lr_mults[k] and d_k = decay_mults[k] (None: lr_mults, decay at the step's LR)
        per weight k, in one pass of the fused (decoupled-decay) Adam kernel per distinct pair
        (μP's layers have a few). The kernel decays by its lr·wd, so a group takes wd·d/m:
        MuAdamW's lr/width_mult with wd·width_mult. A multiplier of 0 takes no step and no decay.

        The same arithmetic as ``direction`` followed by the optimizer's own plain step, up to
        float rounding (tests/test_optim.py), without the direction buffer: no pass to write
        it and none to read it back, on each weight-sized tensor.
        """
        self._advance(grads)
        step = self._step_tensor(grads[0].device)
        decay_mults = list(lr_mults) if decay_mults is None else list(decay_mults)
        key = (list(lr_mults), decay_mults)
        if key != self._groups_of:   # the multipliers are fixed: grouped once, not every step
            groups: dict[tuple[float, float], list[int]] = {}
            for k, pair in enumerate(zip(lr_mults, decay_mults)):
                groups.setdefault(pair, []).append(k)
            self._groups_of, self._groups = key, list(groups.items())
        for (m, d), ks in self._groups:
            if m == 0:   # frozen (the sphere's head): its decay multiplier is 0 too
                continue
            # m == d (modular, sp): wd·d/m is wd exactly, so those steps are unchanged bit for bit
            wd = weight_decay if m == d else weight_decay * d / m
            torch._fused_adamw_([params[k] for k in ks], [grads[k] for k in ks], [self.m[k] for k in ks],
                                [self.v[k] for k in ks], [], [step] * len(ks), lr=lr * m, beta1=self.b1,
                                beta2=self.b2, weight_decay=wd, eps=self.eps, amsgrad=False,
                                maximize=False)

    def state_dict(self) -> dict:
        return {"t": self.t, "m": self.m, "v": self.v}


def _fusable(grads: list[torch.Tensor]) -> bool:
    """Whether torch's fused Adam kernel takes these tensors: dense floats of one dtype on a
    CPU or CUDA device."""
    first = grads[0]
    return (first.device.type in ("cpu", "cuda") and first.dtype.is_floating_point
            and all(g.dtype == first.dtype and g.device == first.device and g.layout == torch.strided
                    for g in grads))


class Sign:
    """sign(g): steepest descent under the ℓ∞ norm (science.md §3), with 0 where g is 0.

    Step for step the same as ``Adam(betas=(0, 0), eps=0)`` — Adam without its averages.
    """

    name = "sign"

    def direction(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        return torch._foreach_sign(grads)

    def state_dict(self) -> dict:
        return {}

