"""Model families by name: each one's builder, its keys and its cross-key check.

A family is one ``ModelFamily`` record passed to ``register``. Its builder takes
``(width, depth, **options)``; its options are its declared ``keys`` (with their defaults)
plus the sizes the data fixes (``input_dim``, ``vocab_size``, ...), which it leaves
undeclared. ``check(values)`` says why a resolved run makes no sense for it, or None.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from .gpt import gpt
from .key import Key
from .mlp import NORMS, resmlp
from .resnet import rescnn


@dataclass(frozen=True)
class ModelFamily:
    name: str
    builder: Callable                                  # (width, depth, **options) -> Module
    keys: tuple[Key, ...] = ()                         # its options beyond width, depth and data sizes
    check: Callable[[dict], str | None] | None = None  # resolved run -> why it makes no sense, or None


FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Make ``family`` buildable by name (``arch`` in an experiment file)."""
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    params = inspect.signature(family.builder).parameters
    for key in family.keys:
        if key.section != "model" or key.name not in params or params[key.name].default != key.default:
            raise ValueError(f"model family {family.name!r}: key {key.name!r} must be a model-section option "
                             f"of the builder, with the builder's default")
    FAMILIES[family.name] = family
    return family


def family_key(name: str) -> Key | None:
    """The declaration of model option ``name`` (the first family that declares it), or None."""
    for family in FAMILIES.values():
        for key in family.keys:
            if key.name == name:
                return key
    return None


def _model_key(name: str, type_: type, default, help: str, **bounds) -> Key:
    return Key(name, type_, default, help, "models", "model", **bounds)


BLOCK_DEPTH = _model_key("block_depth", int, 2, "layers per residual block", positive=True)
NORM = _model_key("norm", str, "pre", "pre: normalize each block's input; post: normalize each layer's output, "
                  "making it scale-invariant (for constraint = \"sphere\")", choices=NORMS)


def _blocks_mass(default: float) -> Key:
    return _model_key("blocks_mass", float, default, "total mass of the residual blocks", minimum=0)


def _gpt_heads(values: dict) -> str | None:
    heads = values.get("heads", 4)
    if values["width"] % heads:
        return f"model.width: {values['width']} is not divisible by heads={heads}"
    return None


register(ModelFamily("mlp", resmlp, (BLOCK_DEPTH, _blocks_mass(1.0), NORM)))
register(ModelFamily("resnet", rescnn, (
    BLOCK_DEPTH, _blocks_mass(20.0),
    _model_key("kernel", int, 3, "convolution kernel size", positive=True),
    _model_key("downsample", int, 2, "average-pool factor after the stem (1: none)", positive=True),
    NORM)))
register(ModelFamily("gpt", gpt, (
    _model_key("heads", int, 4, "attention heads (width must be divisible by it)", positive=True),
    _blocks_mass(5.0),
    _model_key("mlp_ratio", int, 4, "MLP hidden width as a multiple of width", positive=True)), check=_gpt_heads))
