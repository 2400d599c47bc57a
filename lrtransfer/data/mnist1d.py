"""MNIST-1D (Greydanus 2020): 1-D signals of 40 points, 10 classes, generated — no download."""
from __future__ import annotations

import random

import numpy as np
import torch

from ..errors import ConfigError
from .base import Dataset, fraction, positive_int
from .cache import cache_key, load_cached, save_cached


def _generate(samples: int, test_fraction: float, seed: int) -> dict:
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = samples, 1 - test_fraction, seed
    # make_dataset reseeds Python's and numpy's global generators: leave them as they were
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {"x": np.asarray(d["x"], dtype=np.float32), "y": np.asarray(d["y"], dtype=np.int64),
            "x_test": np.asarray(d["x_test"], dtype=np.float32), "y_test": np.asarray(d["y_test"], dtype=np.int64)}


def load_mnist1d(samples: int = 4000, test_fraction: float = 0.2, seed: int = 42) -> Dataset:
    """Generate ``samples`` examples with the mnist1d package (cached: 40,000 take ~15 s).

    mnist1d makes ``samples // 10`` examples per class, shuffled with ``seed``; the last
    ``test_fraction`` of them are the test split. Inputs are standardized with one scalar mean
    and std over the training set (a scalar, not per feature, so the signals keep their shape).
    """
    positive_int(samples, "samples")
    if samples < 20:
        raise ConfigError(f"data.samples: mnist1d needs at least 20 samples (2 per class), got {samples}")
    fraction(test_fraction, "test_fraction")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"data.seed: must be an integer, got {seed!r}")
    n = samples // 10 * 10
    if not 0 < int(n * (1 - test_fraction)) < n:
        raise ConfigError(f"data.test_fraction: {test_fraction} of {n} samples leaves an empty split")
    key = cache_key("mnist1d", 1, samples, test_fraction, seed)
    arrays = load_cached("mnist1d", key)
    if arrays is None:
        arrays = _generate(samples, test_fraction, seed)
        save_cached("mnist1d", key, arrays)
    x, xt = (torch.as_tensor(arrays[k], dtype=torch.float32) for k in ("x", "x_test"))
    y, yt = (torch.as_tensor(arrays[k], dtype=torch.int64) for k in ("y", "y_test"))
    mean, std = x.mean(), x.std().clamp_min(1e-6)
    x, xt = (x - mean) / std, (xt - mean) / std
    return Dataset("mnist1d", "classification", x, y, xt, yt, num_classes=10, input_shape=(x.shape[1],),
                   classes=tuple(str(i) for i in range(10)))
