"""Learning-rate schedules: a multiplier of the base LR at each step t in [0, steps)."""
from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


class Schedule:
    """Optional linear warmup over ``warmup`` steps, then constant, linear decay to 0, or cosine to 0.

    Decay is over the steps after warmup, so the multiplier at step t is
    (1 - s) for linear and ½(1 + cos πs) for cosine with s = (t - warmup) / (steps - warmup).
    """

    def __init__(self, kind: str = "linear", steps: int = 1, warmup: int = 0):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule: unknown kind {kind!r}; allowed: {', '.join(SCHEDULES)}")
        if steps < 1 or warmup < 0 or warmup >= steps and warmup > 0:
            raise ValueError(f"schedule: need steps >= 1 and 0 <= warmup < steps, got steps={steps}, warmup={warmup}")
        self.kind, self.steps, self.warmup = kind, int(steps), int(warmup)

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        s = (t - self.warmup) / (self.steps - self.warmup)
        if self.kind == "linear":
            return max(0.0, 1.0 - s)
        return 0.5 * (1.0 + math.cos(math.pi * min(s, 1.0)))
