"""Parametrizations: how a model's weights are initialised, multiplied and given their LRs.

``modular`` (the module algebra's own; untouched here), ``sp`` (torch's default inits, no
multipliers, one LR) and ``mup`` (μP as the ``mup`` package applies it, per role and width
multiplier, with the LR rule ``MUP_RULES`` the optimizer names). The rules and their sources:
docs/parametrizations.md. ``lr_mult`` scales steps, not decay: lr·wd is width-free (MuAdamW).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..modular import CausalSelfAttention, Conv2D, Embed, Linear, Module

PARAMS = ("modular", "sp", "mup")
# μP's LR rules, which an optimizer names (its ``mup``): "adam" (MuAdam: entrywise-normalized
# steps, adam and sign), "sgd" (MuSGD), "muon" (hidden atoms × 1, the rest MuAdam)
MUP_RULES = ("adam", "sgd", "muon")


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
                mup_rule: str) -> list[tuple[float, float, float]]:
    """μP's (init multiplier, forward multiplier, LR multiplier) per atom, from its role and
    its (fan_in, fan_out) against the base model's (docs/parametrizations.md)."""
    if mup_rule not in MUP_RULES:
        raise ValueError(f"param mup: no μP LR rule {mup_rule!r}; allowed: {', '.join(MUP_RULES)}")
    out = []
    for k, (role, (fi, fo), (bfi, bfo)) in enumerate(zip(roles, shapes, base_shapes)):
        m_in, m_out = fi / bfi, fo / bfo
        inf_in, inf_out = fi != bfi, fo != bfo
        width_mult = m_in if inf_in else (m_out if inf_out else 1.0)  # the last infinite dim's
        if role != "output" and inf_in and not inf_out:
            raise ValueError(f"param mup: atom {k} ({role}) has an infinite fan-in and a finite fan-out; "
                             f"only a readout (role \"output\") may")
        if mup_rule == "muon" and role == "hidden":
            lr = 1.0                                 # Muon's own spectral step (docstring)
        elif mup_rule == "sgd":
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


def apply_param(model: Module, param: str, *, mup_rule: str = "adam", base_model: Module | None = None) -> Module:
    """Re-parametrize a freshly built ``model`` in place and return it.

    ``modular``: untouched. ``sp`` and ``mup``: every atom re-initialised from torch's global
    random stream (so a seed fixes it; the draws are the same for both and for any base
    model), then μP's multipliers from ``base_model`` (the same architecture at the base width;
    None: ``model`` itself, all multipliers 1) and ``mup_rule`` (``MUP_RULES``; only μP reads
    it). Raises ValueError on an unknown ``param`` or ``mup_rule`` or a base model of another
    architecture.
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
        table = multipliers(model.roles(), [fans(a) for a in atoms], [fans(b) for b in base_atoms], mup_rule)
    for atom in atoms:
        _torch_default_init(atom)
    if param == "sp":
        _attention(model, sqrt_scale=True, width_mult=None)
        return model
    with torch.no_grad():
        for atom, base_atom, (init, forward, lr) in zip(atoms, base_atoms, table):
            if init != 1.0:
                atom.weight.mul_(init)
            atom.scale, atom.lr_mult = forward, lr
            (fi, fo), (bfi, bfo) = fans(atom), fans(base_atom)
            atom.mup = {"fan_in_mult": fi / bfi, "fan_out_mult": fo / bfo, "init": init, "forward": forward, "lr": lr}
    # d_head scales like the width: the readout's fan-in multiplier (heads are fixed)
    readout_in, readout_base_in = fans(atoms[-1])[0], fans(base_atoms[-1])[0]
    _attention(model, sqrt_scale=False, width_mult=readout_in / readout_base_in)
    return model
