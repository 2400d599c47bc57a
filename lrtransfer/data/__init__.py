"""Datasets in memory: ``load(name, **options)`` -> ``Dataset`` with seeded ``sample``.

mnist1d (generated), cifar10 and imagefolder (images), shakespeare and text (characters).
Each loader's keyword arguments are its options (``data.<option>`` in an experiment file).
A missing dataset raises ``DataError`` saying how to get it; a bad option, ``ConfigError``.
"""
from __future__ import annotations

import inspect

from ..errors import ConfigError
import hashlib
import json
from pathlib import Path

from .base import Dataset, data_dirs
from .cache import content_digest
from .images import load_cifar10, load_imagefolder, locate_cifar10
from .mnist1d import load_mnist1d
from .text import load_shakespeare, load_text, locate_shakespeare

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


def locate(name: str, /, **opts) -> Path | None:
    """The file, folder or archive dataset ``name`` reads with ``opts``; None for generated
    data, or when no copy exists yet (``load`` then downloads it or says how to get it)."""
    if name == "cifar10":
        return locate_cifar10(opts.get("path"))
    if name == "shakespeare":
        return locate_shakespeare(opts.get("path"))
    if name in ("imagefolder", "text") and opts.get("path"):
        source = Path(opts["path"]).expanduser()
        return source if source.exists() else None
    return None


def fingerprint(name: str, /, **opts) -> str:
    """What the data *is*, as 16 hex digits: the content hash of the source it is read from
    (file, folder or archive) plus the options that shape it, or, for generated data
    (mnist1d), the generator's parameters. A run id includes it, so a changed data file makes
    old results stale. A missing source is loaded first (downloaded, or a ``DataError``)."""
    options(name)  # an unknown dataset fails here, naming the allowed ones
    shaping = {k: v for k, v in opts.items() if k not in ("path", "download")}
    if name == "mnist1d":
        content = "generated"
    else:
        source = locate(name, **opts)
        if source is None:
            load(name, **opts)  # downloads, or raises DataError saying how to get the data
            source = locate(name, **opts)
        if source is None:
            from ..errors import DataError
            raise DataError(f"data: no source found for dataset {name!r} with options {opts}")
        content = content_digest(source)
    blob = json.dumps({"dataset": name, "options": shaping, "content": content}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


__all__ = ["load", "options", "locate", "fingerprint", "Dataset", "DATASETS", "data_dirs"]
