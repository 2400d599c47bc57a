"""GPT: a decoder-only transformer built from the algebra (science.md §1).

Token + position embeddings (½ each, total mass 1), `depth` blocks of an attention branch and
an MLP branch — each a residual (1 − 1/L)·Id + (1/L)·branch with L = 2·depth — whose masses
total `blocks_mass` (default 5), and a linear head (mass 1). Attention uses the 1/d_head
softmax scale; its three projections form a tuple whose sensitivities add up to 3, so the
functional attention is scaled by 1/3 to keep the branch's sensitivity at 1.
"""
from __future__ import annotations

from ..modular import (CausalSelfAttention, Embed, LayerNorm, Linear, Module, Positions,
                       Residual, ScaledGELU)


def gpt(width: int, depth: int, vocab_size: int, context: int, heads: int = 4,
        blocks_mass: float = 5.0, mlp_ratio: int = 4) -> Module:
    if width % heads:
        raise ValueError(f"gpt: width {width} must be divisible by heads={heads}")
    token = Embed(vocab_size, width)
    position = Embed(context, width) @ Positions()
    embed = 0.5 * token + 0.5 * position
    embed.tare(1.0)

    q, k, v = (Linear(width, width) for _ in range(3))
    attention = Linear(width, width) @ ((1 / 3) * CausalSelfAttention(heads)) @ (q, k, v)
    mlp = Linear(width, mlp_ratio * width) @ ScaledGELU() @ Linear(mlp_ratio * width, width)
    L = 2 * depth
    block = Residual(mlp @ LayerNorm(), L) @ Residual(attention @ LayerNorm(), L)
    blocks = block ** depth
    blocks.tare(blocks_mass)

    head = Linear(vocab_size, width) @ LayerNorm()
    return head @ blocks @ embed
