"""Datasets in memory: ``load(name, **options)`` -> ``Dataset`` with seeded ``sample``.

mnist1d (generated), cifar10 and imagefolder (images), shakespeare and text (characters).
Each loader's keyword arguments are its options (``data.<option>`` in an experiment file).
A missing dataset raises ``DataError`` saying how to get it; a bad option, ``ConfigError``.
"""
from __future__ import annotations

import inspect

from ..errors import ConfigError
from .base import Dataset, data_dirs
from .images import load_cifar10, load_imagefolder
from .mnist1d import load_mnist1d
from .text import load_shakespeare, load_text

DATASETS = {"mnist1d": load_mnist1d, "cifar10": load_cifar10, "imagefolder": load_imagefolder,
            "shakespeare": load_shakespeare, "text": load_text}

_INTERNAL = {"name"}  # loader parameters that are not user options


def options(name: str) -> list[str]:
    """The options a dataset accepts, in the loader's order."""
    if name not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return [p for p in inspect.signature(DATASETS[name]).parameters if p not in _INTERNAL]


def load(name: str, /, **opts) -> Dataset:
    """Load dataset ``name`` with its options; the tensors are on the CPU (``.to(device)`` them)."""
    allowed = options(name)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ConfigError(f"data: unknown option(s) {', '.join(unknown)} for dataset {name!r}; "
                          f"allowed: {', '.join(allowed)}")
    return DATASETS[name](**opts)


__all__ = ["load", "options", "Dataset", "DATASETS", "data_dirs"]
