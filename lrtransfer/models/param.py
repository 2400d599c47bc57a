"""Parametrizations: how a model's weights are initialised, multiplied and given their LRs.

The same architecture graph (residual combinations, mass-free bonds) under three rules:

* ``modular`` — the module algebra's own (SCIENCE.md §1): orthogonal inits, forward
  multipliers sqrt(d_out/d_in) (Linear), sqrt(d) (Embed), sqrt(c_out/c_in)/k² (Conv2D),
  attention 1/d_head. The default; ``apply_param`` leaves such a model untouched.
* ``sp`` — standard PyTorch practice: every atom initialised as the torch layer it stands for
  (nn.Linear / nn.Conv2d: kaiming_uniform_(a=√5), i.e. U(±1/√fan_in); nn.Embedding: N(0, 1)),
  no forward multipliers, attention 1/√d_head, one global LR.
* ``mup`` — μP (Yang et al. 2022, "Tensor Programs V", arXiv 2203.03466; the formulation of
  its ``mup`` package: base shapes, MuReadout, MuAdam / MuSGD). The model is compared atom by
  atom with the same architecture at ``base_width`` (the experiment's smallest width); a
  dimension that differs from the base is "infinite". With m_in = fan_in / base fan_in and
  m_out = fan_out / base fan_out:

  | role (infinite dims)           | init      | forward multiplier | Adam-like LR × | SGD LR ×     |
  |--------------------------------|-----------|--------------------|----------------|--------------|
  | input (fan_out only)           | as sp     | 1                  | 1              | m_out        |
  | hidden (fan_in and fan_out)    | as sp     | 1                  | 1 / m_in       | m_out / m_in |
  | output (fan_in only; readout)  | as sp     | 1 / m_in           | 1              | m_in         |

  Adam-like: adam, sign and muon (Muon's Adam group); sgd follows MuSGD. Attention uses
  1/d_head. At ``base_width`` every multiplier is 1 and μP is SP exactly. (The package can
  also zero-initialise the readout; not done here.)

Roles come from ``Module.roles()`` (embeddings and the first atom read the data; the last
atom is the head).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..modular import CausalSelfAttention, Conv2D, Embed, Linear, Module

PARAMS = ("modular", "sp", "mup")
ADAM_LIKE = ("adam", "sign", "muon")


def fans(atom) -> tuple[int, int]:
    """(fan_in, fan_out) of an atom as torch counts them for the layer it stands for."""
    w = atom.weight
    if isinstance(atom, Embed):  # nn.Embedding(vocab, d): a lookup; fan_in the vocabulary
        return w.shape[0], w.shape[1]
    receptive = math.prod(w.shape[2:]) if w.ndim > 2 else 1
    return w.shape[1] * receptive, w.shape[0] * receptive


@torch.no_grad()
def _torch_default_init(atom) -> None:
    if isinstance(atom, Embed):
        nn.init.normal_(atom.weight)
    elif isinstance(atom, (Linear, Conv2D)):
        nn.init.kaiming_uniform_(atom.weight, a=math.sqrt(5))  # what nn.Linear / nn.Conv2d do
    else:
        raise ValueError(f"param: no torch default init for {type(atom).__name__}")
    atom.scale = 1.0


def _attention(model: Module, sqrt: bool) -> None:
    for m in model.modules():
        if isinstance(m, CausalSelfAttention):
            m.sqrt_scale = sqrt


def multipliers(roles: list[str], shapes: list[tuple[int, int]], base_shapes: list[tuple[int, int]],
                optimizer: str) -> list[tuple[float, float]]:
    """μP's (forward multiplier, LR multiplier) per atom from its role and its (fan_in,
    fan_out) against the base model's (the table in the module docstring)."""
    out = []
    for role, (fi, fo), (bfi, bfo) in zip(roles, shapes, base_shapes):
        m_in, m_out = fi / bfi, fo / bfo
        adam = optimizer in ADAM_LIKE
        if role == "output":
            out.append((1.0 / m_in, 1.0 if adam else m_in))
        elif role == "input":
            out.append((1.0, 1.0 if adam else m_out))
        else:
            out.append((1.0, 1.0 / m_in if adam else m_out / m_in))
    return out


def apply_param(model: Module, param: str, *, optimizer: str = "adam", base_model: Module | None = None) -> Module:
    """Re-parametrize ``model`` in place (and return it). ``sp`` and ``mup`` re-initialise
    every atom from torch's global random stream, so a seed fixes them."""
    if param not in PARAMS:
        raise ValueError(f"param: unknown parametrization {param!r}; allowed: {', '.join(PARAMS)}")
    if param == "modular":
        return model
    atoms = model.atoms()
    for atom in atoms:
        _torch_default_init(atom)
        atom.lr_mult = 1.0
    _attention(model, sqrt=(param == "sp"))
    if param == "mup":
        base = base_model if base_model is not None else model
        base_atoms = base.atoms()
        if len(base_atoms) != len(atoms):
            raise ValueError(f"param mup: the base model has {len(base_atoms)} atoms, the model {len(atoms)}; "
                             f"base shapes need the same architecture")
        table = multipliers(model.roles(), [fans(a) for a in atoms], [fans(a) for a in base_atoms], optimizer)
        for atom, (forward, lr) in zip(atoms, table):
            atom.scale, atom.lr_mult = forward, lr
    return model
