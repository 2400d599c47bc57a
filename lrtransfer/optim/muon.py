"""Muon as practitioners run it (Jordan et al. 2024), written from its public description:
orthogonalized Nesterov momentum on hidden 2-D weights, Adam on the rest at ``adam_ratio`` ×
the LR. Details: docs/optimizers.md.
"""
from __future__ import annotations

import torch

from ..modular.newton_schulz import orthogonalize
from .rules import Adam


class Muon:
    name = "muon"

    def __init__(self, hidden: list[bool], momentum: float = 0.95, ns_steps: int = 5,
                 adam_ratio: float = 0.015, adam_betas=(0.9, 0.95), eps: float = 1e-8):
        if not 0 <= momentum < 1:
            raise ValueError(f"muon: momentum must be in [0, 1), got {momentum}")
        if adam_ratio <= 0:
            raise ValueError(f"muon: muon_adam_ratio must be > 0, got {adam_ratio}")
        self.hidden, self.momentum, self.ns_steps = list(hidden), float(momentum), ns_steps
        self.adam = Adam(betas=adam_betas, eps=eps)
        # the LR multiplier of each atom's direction, and of its decay (the optimizer multiplies both in)
        self.lr_mults = [1.0 if h else float(adam_ratio) for h in self.hidden]
        self.buffers: list[torch.Tensor | None] | None = None

    def direction(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(grads) != len(self.hidden):
            raise ValueError(f"muon: {len(grads)} gradients for {len(self.hidden)} atoms")
        if self.buffers is None:
            self.buffers = [torch.zeros_like(g) if h else None for g, h in zip(grads, self.hidden)]
        others = [g for g, h in zip(grads, self.hidden) if not h]
        adam = iter(self.adam.direction(others) if others else [])
        out = []
        for g, h, buf in zip(grads, self.hidden, self.buffers):
            if not h:
                out.append(next(adam))
                continue
            buf.lerp_(g, 1 - self.momentum)
            look = torch.lerp(g, buf, self.momentum)          # Nesterov: g + μ(buf − g)
            m = look.reshape(look.shape[0], -1)                 # conv kernels as c_out × c_in·k²
            o = orthogonalize(m, "muon", self.ns_steps)
            out.append((o * max(1.0, m.shape[0] / m.shape[1]) ** 0.5).reshape(g.shape))
        return out

    def state_dict(self) -> dict:
        return {"buffers": self.buffers, "adam": self.adam.state_dict()}
