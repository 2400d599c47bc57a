"""ResMLP: input Linear, `depth` residual blocks of `block_depth` Linears, output Linear.

Masses (science.md §1): input 1, blocks 1 in total, output 1, so mass 3 and sensitivity 1;
every residual Linear's share of a target eta is eta/(3·block_depth) at any width or depth.

``norm`` places the normalizations: ``"pre"`` (default) normalizes each block's input;
``"post"`` normalizes each Linear's output instead (input Linear included), which makes
every Linear but the head scale-invariant (science.md §5) — the layout for training on
the sphere (``constraint = "sphere"``).
"""
from __future__ import annotations

from ..modular import Flatten, LayerNorm, Linear, Module, Residual, ScaledReLU

NORMS = ("pre", "post")


def resmlp(width: int, depth: int, input_dim: int, output_dim: int,
           block_depth: int = 2, blocks_mass: float = 1.0, norm: str = "pre") -> Module:
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} is not allowed; allowed: {', '.join(NORMS)}")
    if norm == "pre":
        initial = Linear(width, input_dim) @ Flatten()
        layer = ScaledReLU() @ Linear(width, width) @ LayerNorm()   # pre-norm keeps RMS 1 inputs
    else:
        initial = LayerNorm() @ Linear(width, input_dim) @ Flatten()
        layer = ScaledReLU() @ LayerNorm() @ Linear(width, width)
    blocks = Residual(layer ** block_depth, depth) ** depth
    blocks.tare(blocks_mass)
    final = Linear(output_dim, width) @ LayerNorm()
    return final @ blocks @ initial
