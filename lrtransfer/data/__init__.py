"""Datasets in memory: ``load(name, **options)`` -> ``Dataset`` with seeded ``sample``.

mnist1d (generated), cifar10 and imagefolder (images), shakespeare and text (characters),
registered in registry.py. A missing dataset raises ``DataError`` saying how to get it; a
bad option, ``ConfigError``.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

from ..errors import ConfigError, DataError
from .base import Dataset, data_dirs
from .cache import content_digest
from .registry import DATASETS, DatasetEntry, register

_INTERNAL = {"name"}  # loader parameters that are not user options


def options(name: str) -> list[str]:
    """The options a dataset accepts, in the loader's order."""
    if name not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return [p for p in inspect.signature(DATASETS[name].load).parameters if p not in _INTERNAL]


def load(name: str, /, **opts) -> Dataset:
    """Load dataset ``name`` with its options; the tensors are on the CPU (``.to(device)`` them)."""
    allowed = options(name)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ConfigError(f"data: unknown option(s) {', '.join(unknown)} for dataset {name!r}; "
                          f"allowed: {', '.join(allowed)}")
    return DATASETS[name].load(**opts)


def locate(name: str, /, **opts) -> Path | None:
    """The file, folder or archive dataset ``name`` reads with ``opts``; None for generated
    data, or when no copy exists yet (``load`` then downloads it or says how to get it)."""
    find = DATASETS[name].locate if name in DATASETS else None
    return find(opts) if find is not None else None


def fingerprint(name: str, /, **opts) -> str:
    """What the data *is*, as 16 hex digits: the content hash of the source it is read from
    (file, folder or archive) plus the options that shape it, or, for generated data
    (no ``locate``: mnist1d), the generator's parameters. A run id includes it, so a changed data file makes
    old results stale. A missing source is loaded first (downloaded, or a ``DataError``)."""
    options(name)  # an unknown dataset fails here, naming the allowed ones
    shaping = {k: v for k, v in opts.items() if k not in ("path", "download")}
    if DATASETS[name].locate is None:
        content = "generated"
    else:
        source = locate(name, **opts)
        if source is None:
            load(name, **opts)  # downloads, or raises DataError saying how to get the data
            source = locate(name, **opts)
        if source is None:
            raise DataError(f"data: no source found for dataset {name!r} with options {opts}")
        content = content_digest(source)
    blob = json.dumps({"dataset": name, "options": shaping, "content": content}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


__all__ = ["load", "options", "locate", "fingerprint", "Dataset", "DATASETS", "DatasetEntry", "register",
           "data_dirs"]
