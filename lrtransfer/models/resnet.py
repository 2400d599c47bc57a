"""ResCNN: a Conv2D stem, `depth` residual blocks of `block_depth` Conv2Ds, a linear head.

Width is the number of channels. Masses: stem 1, blocks 20 in total, head 1 (science.md §1).
The stem is followed by a `downsample`×`downsample` average pool, so CPU-sized runs can work
at 16×16 or 8×8 resolution; normalization is over channels at each position.

``norm``: ``"pre"`` (default) normalizes each block's input; ``"post"`` normalizes each
convolution's output (stem included), making every Conv2D scale-invariant (science.md §5).
"""
from __future__ import annotations

from ..modular import (AvgPool, Conv2D, GlobalAvgPool, Identity, LayerNorm, Linear, Module,
                       Residual, ScaledReLU)
from .mlp import NORMS


def rescnn(width: int, depth: int, in_channels: int, output_dim: int, block_depth: int = 2,
           blocks_mass: float = 20.0, kernel: int = 3, downsample: int = 2, norm: str = "pre") -> Module:
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} is not allowed; allowed: {', '.join(NORMS)}")
    stem = Conv2D(width, in_channels, kernel)
    if norm == "post":
        stem = LayerNorm(dim=1) @ stem
    if downsample > 1:
        stem = AvgPool(downsample) @ stem
    if norm == "pre":
        layer = ScaledReLU() @ Conv2D(width, width, kernel) @ LayerNorm(dim=1)
    else:
        layer = ScaledReLU() @ LayerNorm(dim=1) @ Conv2D(width, width, kernel)
    blocks = Residual(layer ** block_depth, depth) ** depth
    blocks.tare(blocks_mass)
    head = Linear(output_dim, width) @ GlobalAvgPool() @ LayerNorm(dim=1)
    return head @ blocks @ stem @ Identity()
