"""A model from the user's code: ``[model] arch = "path/to/file.py:build"`` or ``"package.module:build"``.

The builder is a function called per cell with ``width``, ``depth``, the sizes the data fixes
(``SIZES``: those its signature names) and the other ``[model]`` keys it declares, returning a
``torch.nn.Module`` or an ``lrtransfer.modular`` module. A file path is read relative to the
experiment file (as ``data.path`` is); the file's bytes are the ``model_fingerprint`` every
cell carries, so editing the model makes its old runs stale.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ..errors import ConfigError

# What the data fixes, passed by name to a builder that declares them (data/base.py model_sizes).
SIZES = ("input_shape", "input_dim", "in_channels", "num_classes", "output_dim", "vocab_size", "context")
# The model keys that are lrtransfer's, never passed to a builder: how the model is
# parametrized and trained, and the roles table (models/roles.py).
OWN_KEYS = ("arch", "param", "base_width", "condition", "roles")


def is_builder(arch) -> bool:
    """Whether ``arch`` names a user's builder ("file.py:function", "package.module:function")."""
    return isinstance(arch, str) and ":" in arch


def _split(spec: str) -> tuple[str, str]:
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise ConfigError(f"model.arch {spec!r}: a builder is written \"path/to/file.py:function\" or "
                          f"\"package.module:function\"")
    return where, name


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def resolve(spec: str, base_dir: str | Path | None) -> str:
    """``spec`` with a relative file path made absolute against ``base_dir`` (the experiment
    file's folder); a module path is left as it is. Nothing is imported."""
    where, name = _split(spec)
    if not _is_file(where):
        return spec
    path = Path(where).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return f"{path.resolve()}:{name}"


@dataclass(frozen=True)
class Builder:
    spec: str                 # resolved: absolute "file.py:function" or "package.module:function"
    function: Callable
    source: Path | None       # the file the function's code is read from, when there is one

    @property
    def fingerprint(self) -> str:
        """16 hex digits over the source file's bytes (the run id changes when the model does)."""
        if self.source is None:
            return "no-source"
        return hashlib.sha256(self.source.read_bytes()).hexdigest()[:16]

    def signature(self) -> inspect.Signature:
        return inspect.signature(self.function)

    def takes_any(self) -> bool:
        """Whether the builder has ``**kwargs``: it takes any key."""
        return any(p.kind is p.VAR_KEYWORD for p in self.signature().parameters.values())

    def options(self) -> dict:
        """The model keys it declares beyond width, depth and the data's sizes, with their
        defaults (``inspect.Parameter.empty``: required)."""
        return {n: p.default for n, p in self.signature().parameters.items()
                if n not in ("width", "depth", *SIZES) and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def arguments(self, width: int, depth: int, sizes: dict, keys: dict) -> dict:
        """The keyword arguments of one call: width, depth, the sizes it names, its keys."""
        params = self.signature().parameters
        if "width" not in params and not self.takes_any():
            raise ConfigError(f"model.arch {self.spec}: the builder must take a width argument "
                              f"(it is called per cell with width and depth)")
        out = {"width": width} if "width" in params or self.takes_any() else {}
        if "depth" in params or self.takes_any():
            out["depth"] = depth
        out.update({k: v for k, v in sizes.items() if k in params or (self.takes_any() and v is not None)})
        out.update(keys)
        return out


@lru_cache(maxsize=32)
def _import_file(path: str, stamp: tuple):
    module_name = "lrtransfer_user_" + hashlib.sha256(f"{path}{stamp}".encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module   # dataclasses and pickling look a module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def load(spec: str) -> Builder:
    """The builder ``spec`` (resolved) names; a ConfigError naming the file, module or
    function that cannot be found or imported."""
    where, name = _split(spec)
    try:
        if _is_file(where):
            path = Path(where)
            if not path.is_file():
                raise ConfigError(f"model.arch {spec!r}: file not found: {path}")
            st = path.stat()
            module = _import_file(str(path), (st.st_mtime_ns, st.st_size))
            source = path
        else:
            module = importlib.import_module(where)
            source = Path(module.__file__) if getattr(module, "__file__", None) else None
    except ConfigError:
        raise
    except ModuleNotFoundError as e:
        raise ConfigError(f"model.arch {spec!r}: cannot import {where!r} ({e})") from None
    except Exception as e:   # the user's module raised while importing
        raise ConfigError(f"model.arch {spec!r}: importing {where} raised {type(e).__name__}: {e}") from None
    function = getattr(module, name, None)
    if not callable(function):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise ConfigError(f"model.arch {spec!r}: {where} has no function {name!r}"
                          + (f"; it defines: {', '.join(found)}" if found else ""))
    return Builder(spec, function, source)
