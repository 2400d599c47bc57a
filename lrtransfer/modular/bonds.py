"""Bonds: modules without weights (mass 0) and their sensitivities (science.md §1)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .module import Add, Bond, Identity, Mul  # noqa: F401  (the algebra's bonds live with it)

_SQRT2 = math.sqrt(2.0)


class ReLU(Bond):
    """relu(x); sensitivity 1/sqrt(2)."""

    homogeneous = True

    def __init__(self):
        super().__init__(1 / _SQRT2)

    def forward(self, x):
        return F.relu(x)


class ScaledReLU(Bond):
    """sqrt(2)·relu(x): keeps the RMS of a symmetric input; sensitivity 1."""

    homogeneous = True

    def forward(self, x):
        return F.relu(x) * _SQRT2


class GELU(Bond):
    """gelu(x); sensitivity 1/sqrt(2)."""

    def __init__(self):
        super().__init__(1 / _SQRT2)

    def forward(self, x):
        return F.gelu(x)


class ScaledGELU(Bond):
    """sqrt(2)·gelu(x); sensitivity 1."""

    def forward(self, x):
        return F.gelu(x) * _SQRT2


class MeanSubtract(Bond):
    """x - mean(x) over ``dim`` (features: -1 for vectors, 1 for channels of an image)."""

    homogeneous = True

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return x - x.mean(dim=self.dim, keepdim=True)


class RMSDivide(Bond):
    """x / RMS(x) over ``dim``: unit RMS features, no learned gain."""

    normalizes = True  # up to eps: RMS(c·x) = c·RMS(x)

    def __init__(self, dim: int = -1, eps: float = 1e-12):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=self.dim, keepdim=True) + self.eps)


class LayerNorm(Bond):
    """Mean-subtract then RMS-divide over ``dim``: a LayerNorm with no parameters (mass 0,
    sensitivity 1), (x − mean)/sqrt(mean((x − mean)²) + eps).

    Over the last dim this is torch's fused ``layer_norm``: one autograd node instead of six,
    and at small widths per-op overhead is most of a step (22–30% of a ResMLP step at widths
    32–128, 12% at 512). Over another dim (the channels of an image) the formula is written out.
    """

    normalizes = True  # up to eps: the output ignores the input's scale

    def __init__(self, dim: int = -1, eps: float = 1e-12):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x):
        if self.dim == -1 or self.dim == x.dim() - 1:
            return F.layer_norm(x, x.shape[-1:], eps=self.eps)
        centred = x - x.mean(dim=self.dim, keepdim=True)
        return centred * torch.rsqrt(centred.pow(2).mean(dim=self.dim, keepdim=True) + self.eps)

    def extra_repr(self):
        return f"dim={self.dim}"


class Flatten(Bond):

    homogeneous = True
    def forward(self, x):
        return x.flatten(1)


class AvgPool(Bond):
    """Average pooling with a k×k window and stride k."""

    homogeneous = True

    def __init__(self, k: int = 2):
        super().__init__()
        self.k = k

    def forward(self, x):
        return F.avg_pool2d(x, self.k)


class GlobalAvgPool(Bond):
    """Mean over the spatial dimensions: (B, C, H, W) -> (B, C)."""

    homogeneous = True

    def forward(self, x):
        return x.mean(dim=(2, 3))


class Positions(Bond):
    """Token ids (B, T) -> position ids (T,), for a position embedding."""

    def forward(self, x):
        return torch.arange(x.shape[-1], device=x.device)


class CausalSelfAttention(Bond):
    """softmax(q kᵀ · s + causal mask) v over ``heads`` heads; input the tuple (q, k, v).

    The softmax scale s is 1/d_head by default: with it (not 1/sqrt) attention is well-normed
    with sensitivity 1 (science.md §1). A parametrization may change it (models/param.py):

    * ``sqrt_scale = True``: s = 1/sqrt(d_head), standard practice (param = "sp");
    * ``width_mult = m`` (a float, d_head over the base model's d_head): s =
      (1/sqrt(d_head))/sqrt(m) = sqrt(base d_head)/d_head — μP's 1/d_head scaling with its
      constant fixed so that at the base width it is SP's 1/sqrt(d_head) (param = "mup"; the
      ``mup`` package's README does the same with 8/d, equal to 1/sqrt(d) at d = 64).
    """

    def __init__(self, heads: int):
        super().__init__()
        if not isinstance(heads, int) or heads < 1:
            raise ValueError(f"CausalSelfAttention: heads must be a positive int, got {heads!r}")
        self.heads = heads
        self.sqrt_scale = False          # True: 1/sqrt(d_head) (param = "sp")
        self.width_mult: float | None = None  # μP: 1/d_head, equal to 1/sqrt(d_head) at base width

    def softmax_scale(self, d_head: int) -> float:
        if self.width_mult is not None:
            return (1.0 / math.sqrt(d_head)) / math.sqrt(self.width_mult)
        return 1.0 / math.sqrt(d_head) if self.sqrt_scale else 1.0 / d_head

    def forward(self, qkv):
        q, k, v = qkv
        B, T, D = q.shape
        if D % self.heads:
            raise ValueError(f"CausalSelfAttention: width {D} is not divisible by heads={self.heads}")
        d_head = D // self.heads
        q, k, v = (t.view(B, T, self.heads, d_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale(d_head))
        return y.transpose(1, 2).reshape(B, T, D)

    def extra_repr(self):
        return f"heads={self.heads}"
