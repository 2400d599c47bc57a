"""The model families (registry.py), built only from the module algebra, and the user's own
models (builder.py: a function in the user's file, plain torch wrapped by wrapped.py).

``build(arch, width, depth, **options)`` and ``build_user(spec, ...)`` return an
``lrtransfer.modular.Module``; the same model serves the normalized and the unnormalized optimizer.
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from ..errors import ConfigError
from ..modular import Module
from .builder import is_builder, load as load_builder, resolve as resolve_builder
from .gpt import gpt
from .key import Key
from .mlp import resmlp
from .param import MUP_RULES, PARAMS, apply_param
from .registry import FAMILIES, ModelFamily, family_key, register
from .resnet import rescnn
from .roles import ROLES, find_roles, probe_build
from .wrapped import Wrapped, apply_mup


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
    return _parametrize(model, lambda w: builder(w, depth, **kw), width, param, base_width, mup_rule, condition)


def _parametrize(model: Module, build_at, width: int, param: str, base_width: int | None, mup_rule: str,
                 condition: bool) -> Module:
    """``param`` and ``condition`` applied to an algebra ``model`` built at ``width``;
    ``build_at(w)`` builds the same model at another width (μP's base shapes)."""
    base = None
    if param == "mup" and base_width not in (None, width):
        try:
            # the base model only lends its shapes: leave the global random stream alone
            with torch.random.fork_rng(devices=[]):
                base = build_at(base_width)
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


def build_user(spec: str, width: int, depth: int, sizes: dict, keys: dict, param: str = "sp",
               base_width: int | None = None, mup_rule: str = "adam", condition: bool = False,
               roles: dict | None = None) -> Module:
    """The model a user's builder (``spec``, resolved: builder.py) makes at ``width`` and
    ``depth``, given the data's ``sizes`` and its own ``keys`` ([model] keys it declares).

    An ``lrtransfer.modular`` module gets what the shipped families get (``param``,
    ``condition``). A plain ``nn.Module`` is wrapped (wrapped.py) with its weights' roles found
    at ``width`` against 2·width (roles.py; ``roles`` settles or overrides them by name) and
    run as built (``param = "sp"``) or under μP as the mup package applies it (``"mup"``, base
    shapes at ``base_width``). A builder that declares ``attn_scale`` gets the multiplier of
    its attention's 1/sqrt(d_head): 1 under SP, sqrt(base_width/width) under μP (with the
    heads fixed, d_head grows with width, so its scale goes as 1/d_head: μP's attention)."""
    builder = load_builder(spec)
    where = f"model.arch {spec}"
    _check_positive("width", width)
    _check_positive("depth", depth)
    if param not in PARAMS:
        raise ConfigError(f"model.param: unknown parametrization {param!r}; allowed: {', '.join(PARAMS)}")
    declared = builder.options()
    if "attn_scale" in keys:
        raise ConfigError(f"model.attn_scale: set by lrtransfer from param and base_width, not by the "
                          f"experiment ({where})")
    unknown = sorted(set(keys) - set(declared)) if not builder.takes_any() else []
    if unknown:
        allowed = [k for k in declared if k != "attn_scale"]
        raise ConfigError(f"model.{unknown[0]}: the builder {spec} takes no argument {unknown[0]!r}; "
                          f"it takes: {', '.join(['width', 'depth', *allowed]) }")
    missing = [k for k, d in declared.items() if d is inspect.Parameter.empty and k not in keys and k != "attn_scale"]
    if missing:
        raise ConfigError(f"model.{missing[0]}: the builder {spec} needs it (a required argument); "
                          f"set it in [model]")
    mup_base = base_width if param == "mup" and base_width else width

    def build_at(w: int):
        kw = dict(keys)
        if "attn_scale" in declared:
            kw["attn_scale"] = math.sqrt(mup_base / w) if param == "mup" else 1.0
        try:
            return builder.function(**builder.arguments(w, depth, sizes, kw))
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"{where}: the builder raised {type(e).__name__}: {e} "
                              f"(width={w}, depth={depth})") from None

    model = build_at(width)
    if isinstance(model, Module):
        if roles:
            raise ConfigError(f"model.roles: the builder {spec} returns an lrtransfer.modular module, "
                              f"whose atoms carry their roles; remove the key")
        return _parametrize(model, build_at, width, param, base_width, mup_rule, condition)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{where}: the builder returned {type(model).__name__}, not a torch.nn.Module "
                          f"(width={width}, depth={depth})")
    if param == "modular":
        raise ConfigError(f"model.param: \"modular\" is the module algebra's own initialisation; a plain "
                          f"torch.nn.Module from {spec} runs as built (param = \"sp\") or under μP "
                          f"(param = \"mup\")")
    if condition:
        raise ConfigError(f"model.condition: weight conditioning is for the module algebra's Linear and "
                          f"Conv2D atoms; {spec} returns a plain torch.nn.Module")
    weights = find_roles(model, probe_build(build_at, 2 * width), roles, where=where, widths=(width, 2 * width))
    wrapped = Wrapped(model, weights)
    if param == "mup":
        base = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
        if mup_base != width:
            probe = probe_build(build_at, mup_base)
            base = {n: tuple(p.shape) for n, p in probe.named_parameters(remove_duplicate=False)}
        try:
            apply_mup(wrapped, base, mup_rule)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"model.param mup ({where}): {e}") from None
    return wrapped


__all__ = ["build", "build_user", "is_builder", "load_builder", "resolve_builder", "Wrapped", "ROLES", "options",
           "family", "family_key", "register", "ModelFamily", "FAMILIES", "Key", "PARAMS", "MUP_RULES", "apply_param", "resmlp", "rescnn", "gpt"]
