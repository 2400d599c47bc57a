"""A cache of decoded arrays (.npz), keyed by the source file's path, size and mtime."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    return Path(os.environ.get("LRTRANSFER_CACHE") or Path.home() / ".cache" / "lrtransfer")


def cache_key(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


def source_fingerprint(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def load_cached(name: str, key: str) -> dict | None:
    path = cache_dir() / f"{name}-{key}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError):  # a damaged cache file is rebuilt
        return None


def save_cached(name: str, key: str, arrays: dict) -> None:
    """Write atomically; a cache that cannot be written is skipped, not an error."""
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, d / f"{name}-{key}.npz")
    except OSError:
        pass
