"""A cache of decoded arrays (.npz) in ``$LRTRANSFER_CACHE`` or ``~/.cache/lrtransfer``.

Entries are keyed by what they were made from: a source file's resolved path, size and mtime
(for a directory, those of every file under it) plus the decoding options. Writes are atomic
(a temporary file in the cache directory, then ``os.replace``), so concurrent workers never
read a half-written entry; a cache that cannot be written is skipped, not an error.
"""
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
    """(resolved path, size, mtime) of a file; for a directory, a digest over all its files,
    so adding, removing or rewriting an image anywhere below it changes the key."""
    path = path.resolve()
    if not path.is_dir():
        st = path.stat()
        return (str(path), st.st_size, st.st_mtime_ns)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return (str(path), "dir", h.hexdigest())


def cache_path(name: str, key: str) -> Path:
    return cache_dir() / f"{name}-{key}.npz"


def load_cached(name: str, key: str) -> dict | None:
    path = cache_path(name, key)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError):  # a damaged cache file is rebuilt
        return None


def save_cached(name: str, key: str, arrays: dict) -> None:
    """Write atomically; a cache that cannot be written is skipped, not an error."""
    d = cache_dir()
    tmp = None
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}-", suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, cache_path(name, key))
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


_DIGESTS: dict[tuple, str] = {}   # stat fingerprint -> content digest, for this process


def content_digest(path: Path) -> str:
    """SHA-256 of a file's bytes; for a directory, over every file's relative path and bytes.

    Memoised per process on (path, size, mtime) — a rewrite changes those — so a sweep hashes
    its data once, however many cells it has.
    """
    path = Path(path).resolve()
    stamp = source_fingerprint(path)
    if stamp in _DIGESTS:
        return _DIGESTS[stamp]
    h = hashlib.sha256()
    files = [path] if not path.is_dir() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f != path:
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    _DIGESTS[stamp] = digest = h.hexdigest()
    return digest
