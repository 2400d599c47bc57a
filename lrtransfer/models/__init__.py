"""The three model families, built only from the module algebra.

``build(arch, width, depth, **options)`` returns an ``lrtransfer.modular.Module``; the same
model serves the normalized and the unnormalized optimizer.
"""
from __future__ import annotations

import inspect

import torch

from ..errors import ConfigError
from ..modular import Module
from .gpt import gpt
from .mlp import resmlp
from .param import PARAMS, apply_param
from .resnet import rescnn

ARCHS = {"mlp": resmlp, "resnet": rescnn, "gpt": gpt}


def options(arch: str) -> dict:
    """The options ``arch`` accepts beyond width and depth, with their defaults (None: required)."""
    if arch not in ARCHS:
        raise ConfigError(f"model.arch: unknown architecture {arch!r}; allowed: {', '.join(ARCHS)}")
    params = inspect.signature(ARCHS[arch]).parameters
    return {name: (None if p.default is inspect.Parameter.empty else p.default)
            for name, p in params.items() if name not in ("width", "depth")}


def build(arch: str, width: int, depth: int, param: str = "modular", base_width: int | None = None,
          optimizer: str = "adam", condition: bool = False, **kw) -> Module:
    """Build ``arch`` ("mlp", "resnet" or "gpt") at ``width`` and ``depth`` residual blocks,
    in parametrization ``param`` (modular, sp, mup; see param.py).

    μP's base shapes are the same architecture (same options) at ``base_width`` (None: ``width``,
    so every multiplier is 1; larger than ``width`` is allowed), built without touching torch's
    global random stream: a seed gives the same weights whatever the base width. ``optimizer``
    picks μP's LR rules. Other parametrizations ignore ``base_width`` and ``optimizer``.
    ``condition``: every Linear and Conv2D uses its row-equilibrated weight (weight
    conditioning, arXiv 2409.03424; see ``lrtransfer.modular.atoms._Tracked``).
    """
    allowed = options(arch)
    for name, value in (("width", width), ("depth", depth)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"model.{name}: must be a positive integer, got {value!r}")
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ConfigError(f"model: unknown option(s) {', '.join(unknown)} for arch {arch!r}; "
                          f"allowed: {', '.join(allowed)}")
    missing = [k for k, v in allowed.items() if v is None and k not in kw]
    if missing:
        raise ConfigError(f"model: arch {arch!r} needs {', '.join(missing)}")
    if param not in PARAMS:
        raise ConfigError(f"model.param: unknown parametrization {param!r}; allowed: {', '.join(PARAMS)}")
    if base_width is not None and (not isinstance(base_width, int) or isinstance(base_width, bool)
                                   or base_width < 1):
        raise ConfigError(f"model.base_width: must be a positive integer or None, got {base_width!r}")
    try:
        model = ARCHS[arch](width, depth, **kw)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e
    base = None
    if param == "mup" and base_width not in (None, width):
        try:
            # the base model only lends its shapes: leave the global random stream alone
            with torch.random.fork_rng(devices=[]):
                base = ARCHS[arch](base_width, depth, **kw)
        except ValueError as e:
            raise ConfigError(f"model.base_width {base_width}: {e}") from e
    try:
        model = apply_param(model, param, optimizer=optimizer, base_model=base)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e
    if condition:
        for atom in model.atoms():
            if hasattr(atom, "condition"):
                atom.condition = True
    return model


__all__ = ["build", "options", "ARCHS", "PARAMS", "apply_param", "resmlp", "rescnn", "gpt"]
