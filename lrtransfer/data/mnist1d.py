"""MNIST-1D (Greydanus 2020): 1-D signals of 40 points, 10 classes, generated — no download."""
from __future__ import annotations

import numpy as np
import torch

from .base import Dataset, fraction, positive_int
from .cache import cache_key, load_cached, save_cached


def load_mnist1d(samples: int = 4000, test_fraction: float = 0.2, seed: int = 42) -> Dataset:
    """Generate ``samples`` examples with the mnist1d package (cached: 40,000 take ~15 s).

    Inputs are standardized with one mean and std over the training set (a scalar, so the
    signals keep their shape).
    """
    positive_int(samples, "samples")
    fraction(test_fraction, "test_fraction")
    if not isinstance(seed, int):
        from ..errors import ConfigError
        raise ConfigError(f"data.seed: must be an integer, got {seed!r}")
    key = cache_key("mnist1d", samples, test_fraction, seed)
    arrays = load_cached("mnist1d", key)
    if arrays is None:
        from mnist1d.data import get_dataset_args, make_dataset
        args = get_dataset_args()
        args.num_samples, args.train_split, args.seed = samples, 1 - test_fraction, seed
        d = make_dataset(args)
        arrays = {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}
        save_cached("mnist1d", key, arrays)
    x, xt = (torch.as_tensor(arrays[k], dtype=torch.float32) for k in ("x", "x_test"))
    y, yt = (torch.as_tensor(arrays[k], dtype=torch.int64) for k in ("y", "y_test"))
    mean, std = x.mean(), x.std()
    x, xt = (x - mean) / std, (xt - mean) / std
    return Dataset("mnist1d", "classification", x, y, xt, yt, num_classes=10, input_shape=(x.shape[1],),
                   classes=tuple(str(i) for i in range(10)))
