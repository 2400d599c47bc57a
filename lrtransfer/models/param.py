"""Parametrizations: how a model's weights are initialised, multiplied and given their LRs.

The same architecture graph (residual combinations, Mul bonds, mass-free bonds) under three
rules, chosen by ``param``:

* ``modular`` (default) — the module algebra's own (SCIENCE.md §1): orthogonal inits, forward
  multipliers sqrt(d_out/d_in) (Linear), sqrt(d) (Embed), sqrt(c_out/c_in)/k² (Conv2D),
  attention 1/d_head. ``apply_param`` leaves such a model untouched, bit for bit.
* ``sp`` — standard PyTorch practice (SCIENCE.md §7): every atom initialised by the
  ``torch.nn.init`` call of the torch layer it stands for (nn.Linear / nn.Conv2d:
  ``kaiming_uniform_(a=√5)``, i.e. U(±1/√fan_in) with fan_in = d_in or c_in·k²;
  nn.Embedding: ``normal_``, N(0, 1)), no forward multipliers (``scale = 1``), attention
  1/√d_head, one global LR (every ``lr_mult = 1``).
* ``mup`` — μP (Yang et al. 2022, "Tensor Programs V", arXiv 2203.03466) in the formulation
  of its ``mup`` package: base shapes (``set_base_shapes``), ``MuReadout``, ``MuAdam`` /
  ``MuSGD``; that is the paper's Table 8, equivalent to its Table 3.

μP rules. The base shapes are the same architecture built at ``base_width`` (the
experiment's smallest width); atoms are matched by position in ``atoms()``. A dimension is
*infinite* when it differs from the base model's. With m_in = fan_in / base fan_in and
m_out = fan_out / base fan_out (fan_in of a Conv2D: c_in·k²; of an Embed: the vocabulary):

| role                          | infinite dims | init                      | forward mult. | Adam / sign LR × | SGD LR ×     |
|-------------------------------|---------------|---------------------------|---------------|------------------|--------------|
| input (Embeds, else 1st atom) | fan_out       | torch default (as sp)     | 1             | 1                | m_out        |
| hidden                        | both          | torch default (as sp)     | 1             | 1 / m_in         | m_out / m_in |
| output (last atom, readout)   | fan_in        | torch default × √m_in     | 1 / m_in      | 1                | m_in         |

plus attention logits ∝ 1/d_head: sqrt(base d_head)/d_head, which is SP's 1/√d_head at the
base width (the package's README uses 8/d for the same reason: 1/√d at d = 64).

Sources, column by column:

* roles and infinite dims: mup's ``InfShape`` — a tensor with two infinite dims is
  matrix-like, with fewer vector-like; ``width_mult()`` is the multiplier of the last infinite
  dim (fan_in for a matrix-like weight). An atom that is not the readout but has an infinite
  fan_in and a finite fan_out is refused, as ``set_base_shapes``' ``assert_hidden_size_inf``
  does.
* init: the package expects torch's default init (sp) and, in ``set_base_shapes``
  (``rescale_params=True``, its default), multiplies the MuReadout weight by √width_mult, so
  the readout's init variance is (1/fan_in)·m_in = 1/base fan_in, constant in width (Table 8:
  output init var 1, multiplier 1/fan_in; the effective weight's variance is ∝ 1/fan_in², as
  Table 3 says). ``MuReadout(readout_zero_init=True)`` and the README's recommendation to zero
  the readout (and the query) are an option of the package, not used here.
* forward multiplier: ``MuReadout.forward`` divides its input by ``width_mult()`` = m_in;
  nothing else is multiplied (Table 8: multiplier 1/fan_in on the output weights only).
* Adam LR: ``MuAdam`` divides the LR of matrix-like tensors by ``width_mult()`` = m_in and
  leaves vector-like ones alone (Table 8: hidden 1/fan_in, input and output 1). ``sign``
  (signSGD) is Adam-like: its step is entrywise normalized, as the package's docstring puts it.
* SGD LR: ``MuSGD`` multiplies vector-like tensors' LR by their ``width_mult()`` (input: m_out,
  readout: m_in) and matrix-like ones' by m_out/m_in; tensors with no infinite dim keep theirs
  (Table 8: input fan_out, output fan_in, hidden 1).
* ``muon``: the hidden atoms (those Muon orthogonalizes, ``roles() == "hidden"``) keep LR × 1 —
  Muon's step, orthogonal times max(1, rows/cols)^½, already has the spectral size μP asks of
  a hidden update (Yang, Simon & Bernstein 2023, arXiv 2310.17813), and dividing it by m_in
  would shrink hidden feature learning with width; Muon's Adam group (input and readout)
  follows ``MuAdam`` (× 1). The readout's init and 1/m_in multiplier apply as for Adam.

At ``base_width`` every multiplier is 1 and μP is SP exactly (same init draws, attention
scale included). ``base_width`` larger than ``width`` is allowed: the multipliers are then
below 1 (the package's width_mult is any positive ratio). There are no biases or learned
gains in these models, so the rows for biases are not needed.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..modular import CausalSelfAttention, Conv2D, Embed, Linear, Module

PARAMS = ("modular", "sp", "mup")
ADAM_LIKE = ("adam", "sign")      # entrywise-normalized steps: MuAdam's rules
SGD_LIKE = ("sgd",)               # MuSGD's rules
MUP_OPTIMIZERS = ADAM_LIKE + SGD_LIKE + ("muon",)


def fans(atom) -> tuple[int, int]:
    """(fan_in, fan_out) of an atom as torch counts them for the layer it stands for
    (an Embed's fan_in is its vocabulary: it is a lookup table)."""
    w = atom.weight
    if isinstance(atom, Embed):
        return w.shape[0], w.shape[1]
    receptive = math.prod(w.shape[2:]) if w.ndim > 2 else 1
    return w.shape[1] * receptive, w.shape[0] * receptive


@torch.no_grad()
def _torch_default_init(atom) -> None:
    """The atom's weight drawn as torch initialises the equivalent layer; no multiplier."""
    if isinstance(atom, Embed):
        nn.init.normal_(atom.weight)                            # nn.Embedding.reset_parameters
    elif isinstance(atom, (Linear, Conv2D)):
        nn.init.kaiming_uniform_(atom.weight, a=math.sqrt(5))  # nn.Linear / nn.Conv2d
    else:
        raise ValueError(f"param: no torch default init for {type(atom).__name__}")
    atom.scale = 1.0
    atom.lr_mult = 1.0


def multipliers(roles: list[str], shapes: list[tuple[int, int]], base_shapes: list[tuple[int, int]],
                optimizer: str) -> list[tuple[float, float, float]]:
    """μP's (init multiplier, forward multiplier, LR multiplier) per atom, from its role and
    its (fan_in, fan_out) against the base model's (the table in the module docstring)."""
    if optimizer not in MUP_OPTIMIZERS:
        raise ValueError(f"param mup: no μP LR rule for optimizer {optimizer!r}; "
                         f"allowed: {', '.join(MUP_OPTIMIZERS)}")
    out = []
    for k, (role, (fi, fo), (bfi, bfo)) in enumerate(zip(roles, shapes, base_shapes)):
        m_in, m_out = fi / bfi, fo / bfo
        inf_in, inf_out = fi != bfi, fo != bfo
        width_mult = m_in if inf_in else (m_out if inf_out else 1.0)  # the last infinite dim's
        if role != "output" and inf_in and not inf_out:
            raise ValueError(f"param mup: atom {k} ({role}) has an infinite fan-in and a finite fan-out; "
                             f"only the readout (the last atom) may")
        if optimizer == "muon" and role == "hidden":
            lr = 1.0                                 # Muon's own spectral step (docstring)
        elif optimizer in SGD_LIKE:
            lr = m_out / m_in if (inf_in and inf_out) else width_mult
        else:                                        # MuAdam (and Muon's Adam group)
            lr = 1.0 / width_mult if (inf_in and inf_out) else 1.0
        if role == "output":
            out.append((math.sqrt(width_mult), 1.0 / width_mult, lr))
        else:
            out.append((1.0, 1.0, lr))
    return out


def _attention(model: Module, sqrt_scale: bool, width_mult: float | None) -> None:
    for m in model.modules():
        if isinstance(m, CausalSelfAttention):
            m.sqrt_scale, m.width_mult = sqrt_scale, width_mult


def apply_param(model: Module, param: str, *, optimizer: str = "adam", base_model: Module | None = None) -> Module:
    """Re-parametrize a freshly built ``model`` in place and return it.

    ``modular``: untouched. ``sp`` and ``mup``: every atom re-initialised from torch's global
    random stream (so a seed fixes it; the draws are the same for both and for any base
    model), then μP's multipliers from ``base_model`` (the same architecture at the base width;
    None: ``model`` itself, all multipliers 1) and ``optimizer`` (adam, sign, sgd or muon; only
    μP reads it). Raises ValueError on an unknown ``param`` or ``optimizer`` or a base model
    of another architecture.
    """
    if param not in PARAMS:
        raise ValueError(f"param: unknown parametrization {param!r}; allowed: {', '.join(PARAMS)}")
    if param == "modular":
        return model
    atoms = model.atoms()
    table = None
    if param == "mup":  # check everything before touching the model
        base_atoms = (base_model if base_model is not None else model).atoms()
        if [type(a) for a in base_atoms] != [type(a) for a in atoms] or any(
                a.weight.ndim != b.weight.ndim for a, b in zip(atoms, base_atoms)):
            raise ValueError("param mup: the base model's atoms do not match the model's "
                             f"({len(base_atoms)} vs {len(atoms)} atoms); base shapes need the same architecture")
        table = multipliers(model.roles(), [fans(a) for a in atoms], [fans(b) for b in base_atoms], optimizer)
    for atom in atoms:
        _torch_default_init(atom)
    if param == "sp":
        _attention(model, sqrt_scale=True, width_mult=None)
        return model
    with torch.no_grad():
        for atom, (init, forward, lr) in zip(atoms, table):
            if init != 1.0:
                atom.weight.mul_(init)
            atom.scale, atom.lr_mult = forward, lr
    # d_head scales like the width: the readout's fan-in multiplier (heads are fixed)
    readout_in, readout_base_in = fans(atoms[-1])[0], fans(base_atoms[-1])[0]
    _attention(model, sqrt_scale=False, width_mult=readout_in / readout_base_in)
    return model
