"""Character-level language modelling: Tiny Shakespeare and any UTF-8 text file."""
from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import Dataset, data_dirs, download_dir, fraction, positive_int

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_FILE = "tinyshakespeare.txt"


def load_text(path: str | None = None, context: int = 128, test_fraction: float = 0.1, name: str = "text") -> Dataset:
    """Characters of a UTF-8 file; the vocabulary is its sorted set of characters and the last
    ``test_fraction`` of the text is the test split."""
    if path is None:
        raise DataError("data.path: the text dataset needs a path to a UTF-8 text file")
    positive_int(context, "context")
    fraction(test_fraction, "test_fraction")
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data.path: {file} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"data.path: cannot read {file} as UTF-8 text ({e})") from None
    vocab = sorted(set(text))
    if not vocab:
        raise DataError(f"data.path: {file} is empty")
    lookup = {c: i for i, c in enumerate(vocab)}
    tokens = torch.as_tensor(np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text)))
    n_test = int(len(tokens) * test_fraction)
    train, test = tokens[:len(tokens) - n_test], tokens[len(tokens) - n_test:]
    if min(len(train), len(test)) <= context + 1:
        raise DataError(f"data.context: {context} is too long for {file} ({len(train)} train / {len(test)} test characters)")
    return Dataset(name, "language", train, None, test, None, num_classes=len(vocab), input_shape=(context,),
                   vocab_size=len(vocab), context=context, classes=tuple(vocab))


def load_shakespeare(path: str | None = None, context: int = 128, test_fraction: float = 0.1,
                     download: bool = False) -> Dataset:
    """Tiny Shakespeare: an explicit path, an offline copy, or a download from its public URL."""
    candidates = [Path(path).expanduser()] if path else [d / SHAKESPEARE_FILE for d in data_dirs()]
    for file in candidates:
        if file.exists():
            return load_text(str(file), context, test_fraction, name="shakespeare")
    if download:
        target = download_dir() / SHAKESPEARE_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            urllib.request.urlretrieve(SHAKESPEARE_URL, target)
        except OSError as e:
            raise DataError(f"shakespeare: download from {SHAKESPEARE_URL} failed ({e})") from None
        return load_text(str(target), context, test_fraction, name="shakespeare")
    raise DataError(f"shakespeare: {SHAKESPEARE_FILE} not found (looked in {', '.join(str(c.parent) for c in candidates)}); "
                    f"set LRTRANSFER_DATA to a directory holding it, set data.path, or set data.download = true")
