"""A nanoGPT-style character transformer in plain PyTorch, for `arch = "nanogpt.py:build"`.

Nothing here knows about lrtransfer: lrtransfer calls ``build`` per cell with the width, the
depth, the data's sizes (vocab_size, context) and the other [model] keys, and finds each weight's
role by building it at two widths. The token table is tied to the readout (``lm_head``), as in
nanoGPT. ``attn_scale`` multiplies attention's usual 1/sqrt(d_head): lrtransfer passes 1 under
SP and sqrt(base_width/width) under μP (heads fixed, so the scale goes as 1/d_head).
"""
import math

import torch
from torch import nn
from torch.nn import functional as F


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, attn_scale: float):
        super().__init__()
        self.heads, self.attn_scale = heads, attn_scale
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        scale = self.attn_scale / math.sqrt(c // self.heads)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, attn_scale: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, attn_scale)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, context: int, width: int, depth: int, heads: int, attn_scale: float):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, attn_scale) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight   # weight tying, as nanoGPT
        self.apply(self._init)

    @staticmethod
    def _init(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=1 / math.sqrt(module.in_features))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1.0)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def build(width: int, depth: int, vocab_size: int, context: int, heads: int = 4, attn_scale: float = 1.0):
    if width % heads:
        raise ValueError(f"width {width} is not divisible by heads={heads}")
    return GPT(vocab_size, context, width, depth, heads, attn_scale)
