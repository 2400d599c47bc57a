"""Character-level language modelling: Tiny Shakespeare and any UTF-8 text file."""
from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .base import Dataset, data_dirs, download_dir, fraction, positive_int

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_FILE = "tinyshakespeare.txt"


def load_text(path: str | None = None, context: int = 128, test_fraction: float = 0.1, name: str = "text") -> Dataset:
    """Characters of a UTF-8 file; the vocabulary is its sorted set of characters and the last
    ``test_fraction`` of the text is the test split."""
    if path is None:
        raise ConfigError("data.path: the text dataset needs a path to a UTF-8 text file")
    positive_int(context, "context")
    fraction(test_fraction, "test_fraction")
    file = Path(path).expanduser()
    try:
        text = file.read_bytes().decode("utf-8")  # exact characters: no newline translation
    except FileNotFoundError:
        raise DataError(f"data.path: {file} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"data.path: {file} is a directory, not a UTF-8 text file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"data.path: cannot read {file} as UTF-8 text ({e})") from None
    if not text:
        raise DataError(f"data.path: {file} is empty")
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # one code point per character
    vocab_codes = np.unique(codes)  # sorted: token i is the i-th smallest code point
    vocab = [chr(c) for c in vocab_codes]
    tokens = torch.from_numpy(np.searchsorted(vocab_codes, codes).astype(np.int64))
    n_test = int(len(tokens) * test_fraction)
    train, test = tokens[:len(tokens) - n_test], tokens[len(tokens) - n_test:]
    if min(len(train), len(test)) <= context + 1:
        raise ConfigError(f"data.context: {context} is too long for {file} ({len(train)} train / {len(test)} test characters)")
    return Dataset(name, "language", train, None, test, None, num_classes=len(vocab), input_shape=(context,),
                   vocab_size=len(vocab), context=context, classes=tuple(vocab))


def _shakespeare_candidates(path: str | None) -> list[Path]:
    if path:
        return [Path(path).expanduser()]
    dirs = data_dirs()
    if download_dir() not in dirs:  # where an earlier ``download = true`` put it
        dirs.append(download_dir())
    return [d / SHAKESPEARE_FILE for d in dirs]


def locate_shakespeare(path: str | None = None) -> Path | None:
    """The file ``load_shakespeare`` reads (same search order), or None when there is none yet."""
    return next((f for f in _shakespeare_candidates(path) if f.exists()), None)


def load_shakespeare(path: str | None = None, context: int = 128, test_fraction: float = 0.1,
                     download: bool = False) -> Dataset:
    """Tiny Shakespeare: an explicit path, an offline copy, or a download from its public URL."""
    if not isinstance(download, bool):
        raise ConfigError(f"data.download: must be true or false, got {download!r}")
    candidates = _shakespeare_candidates(path)
    for file in candidates:
        if file.exists():
            return load_text(str(file), context, test_fraction, name="shakespeare")
    if download:
        target = download_dir() / SHAKESPEARE_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp = target.with_name(target.name + ".part")
            with urllib.request.urlopen(SHAKESPEARE_URL, timeout=60) as response, open(tmp, "wb") as f:
                f.write(response.read())
            tmp.replace(target)  # never leave a half-downloaded file under the final name
        except OSError as e:
            raise DataError(f"shakespeare: download from {SHAKESPEARE_URL} failed ({e})") from None
        return load_text(str(target), context, test_fraction, name="shakespeare")
    raise DataError(f"shakespeare: {SHAKESPEARE_FILE} not found (looked for {', '.join(str(c) for c in candidates)}). "
                    f"Set LRTRANSFER_DATA to a directory holding {SHAKESPEARE_FILE}, pass data.path, "
                    f"or set data.download = true to fetch it from {SHAKESPEARE_URL}")
