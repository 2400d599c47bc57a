"""Datasets in memory: ``load(name, **options)`` -> ``Dataset`` with seeded ``sample``.

mnist1d (generated), cifar10 and imagefolder (images), shakespeare and text (characters).
A missing dataset raises ``DataError`` saying how to get it, before any run starts.
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


def options(name: str) -> list[str]:
    if name not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return [p for p in inspect.signature(DATASETS[name]).parameters if p != "name"]


def load(name: str, **opts) -> Dataset:
    allowed = options(name)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ConfigError(f"data: unknown option(s) {', '.join(unknown)} for dataset {name!r}; allowed: {', '.join(allowed)}")
    return DATASETS[name](**opts)


__all__ = ["load", "options", "Dataset", "DATASETS", "data_dirs"]
