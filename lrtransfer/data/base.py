"""A dataset held in memory as tensors, with seeded batch sampling (no DataLoader on the hot path)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def data_dirs() -> list[Path]:
    """Where offline copies are looked for: $LRTRANSFER_DATA, then ../shared/data beside the
    working directory and beside the repository."""
    dirs = []
    if os.environ.get("LRTRANSFER_DATA"):
        dirs.append(Path(os.environ["LRTRANSFER_DATA"]))
    dirs += [Path.cwd().parent / "shared" / "data", PACKAGE_ROOT.parent / "shared" / "data"]
    out = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def download_dir() -> Path:
    return Path(os.environ.get("LRTRANSFER_DATA") or Path.home() / ".cache" / "lrtransfer" / "data")


def positive_int(value, key: str, prefix: str = "data.") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{prefix}{key}: must be a positive integer, got {value!r}")
    return value


def fraction(value, key: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
        raise ConfigError(f"data.{key}: must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


@dataclass
class Dataset:
    """Classification: x (N, *input_shape) float32, y (N,) int64. Language: a 1-D int64 token
    stream per split (y is None) from which windows of ``context`` + 1 tokens are drawn.
    ``n_train``/``n_test`` count examples (classification) or window start positions (language);
    ``num_classes`` is the output dimension (the vocabulary size for language); ``classes`` holds
    the class names (the characters, for language)."""
    name: str
    kind: str
    x_train: torch.Tensor
    y_train: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor | None
    num_classes: int
    input_shape: tuple
    vocab_size: int | None = None
    context: int | None = None
    classes: tuple = ()

    def model_sizes(self) -> dict:
        """The model options this data fixes (a builder takes those it needs); not user keys."""
        return {"input_shape": tuple(self.input_shape), "num_classes": self.num_classes,
                "input_dim": math.prod(self.input_shape), "output_dim": self.num_classes,
                "in_channels": self.input_shape[0], "vocab_size": self.vocab_size, "context": self.context}

    @property
    def n_train(self) -> int:
        return self._count(self.x_train)

    @property
    def n_test(self) -> int:
        return self._count(self.x_test)

    def _count(self, x) -> int:
        return len(x) if self.kind == "classification" else max(len(x) - self.context, 0)

    def to(self, device) -> "Dataset":
        """Move the tensors to ``device`` (once; a no-op when already there) and return self."""
        for name in ("x_train", "y_train", "x_test", "y_test"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        return self

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def _split(self, split: str):
        if split == "train":
            return self.x_train, self.y_train
        if split == "test":
            return self.x_test, self.y_test
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")

    def _windows(self, tokens: torch.Tensor, starts: torch.Tensor):
        idx = starts.to(tokens.device).unsqueeze(1) + torch.arange(self.context + 1, device=tokens.device)
        w = tokens[idx]
        return w[:, :-1], w[:, 1:]

    def sample(self, split: str, batch_size: int, generator: torch.Generator):
        """A batch drawn uniformly with replacement by ``generator`` (a CPU generator): indices
        (classification) or window starts (language) are drawn on the CPU, then moved to the
        data's device. Language: x and y are (B, context) int64 with y = x shifted by one."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            positive_int(batch_size, "batch_size", "")
        x, y = self._split(split)
        if self.kind == "classification":
            idx = torch.randint(0, len(x), (batch_size,), generator=generator).to(x.device)
            return x[idx], y[idx]
        starts = torch.randint(0, len(x) - self.context, (batch_size,), generator=generator)
        return self._windows(x, starts)

    def eval_batches(self, split: str, batch_size: int, max_examples: int | None = None):
        """Deterministic batches covering the split (or its first ``max_examples`` examples;
        for language, ``max_examples`` windows evenly spaced through the split, default 64)."""
        positive_int(batch_size, "batch_size", "")
        if max_examples is not None:
            positive_int(max_examples, "max_examples", "")
        x, y = self._split(split)
        if self.kind == "classification":
            n = len(x) if max_examples is None else min(len(x), max_examples)
            for i in range(0, n, batch_size):
                yield x[i:min(i + batch_size, n)], y[i:min(i + batch_size, n)]
            return
        n = 64 if max_examples is None else max_examples
        last = len(x) - self.context - 1
        n = min(n, last + 1)
        starts = torch.linspace(0, last, n).round().long()
        for i in range(0, n, batch_size):
            yield self._windows(x, starts[i:i + batch_size])
