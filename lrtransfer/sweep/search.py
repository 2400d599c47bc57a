"""How ``tune`` searches: optuna's samplers by name, and what it searches along."""
from __future__ import annotations

from ..errors import UserError, nearest

SAMPLERS = ("tpe", "gp", "random")
ALONG = ("lr", "lrwd")   # the LR at the smallest scale, or lr·wd at a fixed lr


def make_sampler(name: str, seed: int):
    """The optuna sampler called ``name``, seeded; a model-based one starts from 4 random trials."""
    import optuna  # here, so that the names above import without optuna
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=4)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"--sampler {name!r}: allowed: {', '.join(SAMPLERS)}{nearest(name, SAMPLERS)}")
