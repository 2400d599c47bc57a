"""ResCNN: a Conv2D stem, `depth` residual blocks of `block_depth` Conv2Ds, a linear head.

Width is the number of channels. Masses: stem 1, blocks 20 in total, head 1 (SCIENCE.md §1).
The stem is followed by a `downsample`×`downsample` average pool, so CPU-sized runs can work
at 16×16 or 8×8 resolution; normalization is over channels at each position.
"""
from __future__ import annotations

from ..modular import (AvgPool, Conv2D, GlobalAvgPool, Identity, LayerNorm, Linear, Module,
                       Residual, ScaledReLU)


def rescnn(width: int, depth: int, in_channels: int, output_dim: int, block_depth: int = 2,
           blocks_mass: float = 20.0, kernel: int = 3, downsample: int = 2) -> Module:
    stem = Conv2D(width, in_channels, kernel)
    if downsample > 1:
        stem = AvgPool(downsample) @ stem
    layer = ScaledReLU() @ Conv2D(width, width, kernel) @ LayerNorm(dim=1)
    blocks = Residual(layer ** block_depth, depth) ** depth
    blocks.tare(blocks_mass)
    head = Linear(output_dim, width) @ GlobalAvgPool() @ LayerNorm(dim=1)
    return head @ blocks @ stem @ Identity()
