"""Datasets by name: each one's loader and where its source lives, in one record.

A dataset is one ``DatasetEntry`` passed to ``register``. Its loader's keyword arguments are
its options (``data.<option>`` in an experiment file); ``locate(options)`` names the file,
folder or archive it reads (hashed into the data fingerprint), None for generated data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .images import load_cifar10, load_imagefolder, locate_cifar10
from .mnist1d import load_mnist1d
from .text import load_shakespeare, load_text, locate_shakespeare


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    load: Callable                                        # (**options) -> Dataset, on the CPU
    locate: Callable[[dict], Path | None] | None = None   # options -> its source; None: generated


DATASETS: dict[str, DatasetEntry] = {}


def register(entry: DatasetEntry) -> DatasetEntry:
    """Make ``entry`` loadable by name (``dataset`` in an experiment file)."""
    if entry.name in DATASETS:
        raise ValueError(f"dataset {entry.name!r} is already registered")
    DATASETS[entry.name] = entry
    return entry


def _given_path(opts: dict) -> Path | None:
    """The ``path`` option, where it exists."""
    if not opts.get("path"):
        return None
    source = Path(opts["path"]).expanduser()
    return source if source.exists() else None


register(DatasetEntry("mnist1d", load_mnist1d))
register(DatasetEntry("cifar10", load_cifar10, lambda opts: locate_cifar10(opts.get("path"))))
register(DatasetEntry("imagefolder", load_imagefolder, _given_path))
register(DatasetEntry("shakespeare", load_shakespeare, lambda opts: locate_shakespeare(opts.get("path"))))
register(DatasetEntry("text", load_text, _given_path))
