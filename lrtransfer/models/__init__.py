"""The model families (registry.py), built only from the module algebra.

``build(arch, width, depth, **options)`` returns an ``lrtransfer.modular.Module``; the same
model serves the normalized and the unnormalized optimizer.
"""
from __future__ import annotations

import inspect

import torch

from ..errors import ConfigError
from ..modular import Module
from .gpt import gpt
from .key import Key
from .mlp import resmlp
from .param import MUP_RULES, PARAMS, apply_param
from .registry import FAMILIES, ModelFamily, family_key, register
from .resnet import rescnn


def family(arch: str) -> ModelFamily:
    """The registered family ``arch``; a ConfigError naming the allowed ones otherwise."""
    if arch not in FAMILIES:
        raise ConfigError(f"model.arch: unknown architecture {arch!r}; allowed: {', '.join(FAMILIES)}")
    return FAMILIES[arch]


def options(arch: str) -> dict:
    """The options ``arch`` accepts beyond width and depth, with their defaults (None: required)."""
    params = inspect.signature(family(arch).builder).parameters
    return {name: (None if p.default is inspect.Parameter.empty else p.default)
            for name, p in params.items() if name not in ("width", "depth")}


def _check_positive(name: str, value, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"model.{name}: must be a positive integer{' or None' if allow_none else ''}, "
                          f"got {value!r}")


def _check_arguments(arch: str, width, depth, param: str, base_width, kw: dict) -> None:
    """Everything ``build`` takes, checked before anything is built."""
    allowed = options(arch)
    _check_positive("width", width)
    _check_positive("depth", depth)
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ConfigError(f"model: unknown option(s) {', '.join(unknown)} for arch {arch!r}; "
                          f"allowed: {', '.join(allowed)}")
    missing = [k for k, v in allowed.items() if v is None and k not in kw]
    if missing:
        raise ConfigError(f"model: arch {arch!r} needs {', '.join(missing)}")
    if param not in PARAMS:
        raise ConfigError(f"model.param: unknown parametrization {param!r}; allowed: {', '.join(PARAMS)}")
    _check_positive("base_width", base_width, allow_none=True)


def build(arch: str, width: int, depth: int, param: str = "modular", base_width: int | None = None,
          mup_rule: str = "adam", condition: bool = False, **kw) -> Module:
    """Build ``arch`` (a registered family: mlp, resnet, gpt) at ``width`` and ``depth``
    residual blocks, in parametrization ``param`` (modular, sp, mup; see param.py).

    μP's base shapes are the same architecture (same options) at ``base_width`` (None: ``width``,
    so every multiplier is 1; larger than ``width`` is allowed), built without touching torch's
    global random stream: a seed gives the same weights whatever the base width. ``mup_rule``
    (``MUP_RULES``) picks μP's LR rules. Other parametrizations ignore ``base_width`` and ``mup_rule``.
    ``condition``: every Linear and Conv2D uses its row-equilibrated weight g·diag(1/‖W_i‖)·W
    (weight conditioning, arXiv 2409.03424), g the RMS row norm of the atom's orthogonal init,
    so that conditioning leaves the modular init's gain alone at every shape (see
    ``lrtransfer.modular.atoms.Tracked``). Applied after ``param``'s init, so with "sp" it
    equilibrates torch's random rows (and changes the layer's gain, as in the paper).
    """
    _check_arguments(arch, width, depth, param, base_width, kw)
    builder = FAMILIES[arch].builder
    try:
        model = builder(width, depth, **kw)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e
    base = None
    if param == "mup" and base_width not in (None, width):
        try:
            # the base model only lends its shapes: leave the global random stream alone
            with torch.random.fork_rng(devices=[]):
                base = builder(base_width, depth, **kw)
        except ValueError as e:
            raise ConfigError(f"model.base_width {base_width}: {e}") from e
    try:
        model = apply_param(model, param, mup_rule=mup_rule, base_model=base)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e
    if condition:
        for atom in model.atoms():
            if hasattr(atom, "condition"):
                atom.condition = True
    return model


__all__ = ["build", "options", "family", "family_key", "register", "ModelFamily", "FAMILIES", "Key", "PARAMS",
           "MUP_RULES", "apply_param", "resmlp", "rescnn", "gpt"]
