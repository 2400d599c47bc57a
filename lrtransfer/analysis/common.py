"""What every analysis shares: missing values, the per-group bootstrap RNG and the checks of
the bootstrap options."""
from __future__ import annotations

import math
import numbers
import zlib

import numpy as np
import pandas as pd

from ..errors import UserError


def missing(x) -> bool:
    """Whether a table value is missing: None, pandas' NA/NaT or a float NaN."""
    return x is None or x is pd.NA or x is pd.NaT or (isinstance(x, (float, np.floating)) and math.isnan(x))


def group_rng(seed: int, label: tuple) -> np.random.Generator:
    """The bootstrap RNG of one group, seeded from ``seed`` and the group's label."""
    # from the label, not the group's position: adding a series leaves the others' CIs as they were
    return np.random.default_rng([seed, zlib.crc32(repr(tuple(str(v) for v in label)).encode())])


def seed_resamples(n_seed: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(1 + n_boot) x n_seed weights: row 0 takes every seed once, row k how often each seed is
    drawn when ``n_seed`` seeds are resampled with replacement (multinomial counts)."""
    return np.vstack([np.ones((1, n_seed)), rng.multinomial(n_seed, np.full(n_seed, 1.0 / n_seed), size=n_boot)])


def resampled_means(weights: np.ndarray, values: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For seeds x columns ``values`` (used where ``present``): each weight row's mean per
    column over the seeds it draws (NaN where it draws none present), and that count."""
    count = weights @ present
    with np.errstate(all="ignore"):
        means = np.where(count > 0, (weights @ np.where(present, values, 0.0)) / count, math.nan)
    return means, count


def check_real(name: str, value, ok, allowed: str) -> None:
    """UserError naming the option when ``value`` is not a real number that ``ok`` accepts."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(float(value)):
        raise UserError(f"{name} {value!r}: allowed: {allowed}")


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_ci(ci) -> None:
    check_real("--ci", ci, lambda v: 0 < v < 1, "a confidence level strictly between 0 and 1, e.g. 0.9")


def check_n_boot(n_boot) -> None:
    if not is_int(n_boot) or n_boot < 1:
        raise UserError(f"--n-boot {n_boot!r}: allowed: an integer >= 1 (bootstrap replicates), e.g. 1000")
