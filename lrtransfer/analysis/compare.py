"""Several results directories side by side: did a change move the optimum?

``compare(runs_by_dir)`` runs the transfer analysis on each directory and puts the
numbers in two tables with a ``results`` column naming the directory:

* ``scales``: per results, series and scale — the fitted optimal LR with its CI, the best
  seed-mean loss, and ``shift``: the fitted optimum minus the first directory's at the same
  series and scale, in octaves (positive: this directory wants a larger LR);
* ``verdicts``: per results and series — verdict, drift and slope with their CIs.

A series or scale missing from a directory is simply absent from its rows; the shift is NaN
where the first directory has no optimum to compare with. ``report.compare`` renders the
tables; ``plots.compare_curves`` overlays the directories' loss-vs-LR curves.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from . import transfer as analysis
from ..errors import UserError
from ..results.store import load_results

SCALE_COLUMNS = ["results", "series", "axis", "scale", "opt_log2_lr_fit", "opt_log2_lr_fit_lo",
                 "opt_log2_lr_fit_hi", "shift", "best_loss", "n_seeds"]
VERDICT_COLUMNS = ["results", "series", "axis", "base_scale", "max_scale", "verdict", "flags", "drift",
                   "drift_ci_lo", "drift_ci_hi", "slope", "slope_ci_lo", "slope_ci_hi"]


def labels(dirs: list[Path]) -> list[str]:
    """Short unique names for the directories: their own names, or more of the path where two
    share a name."""
    dirs = [Path(d) for d in dirs]
    for depth in range(1, max(len(d.parts) for d in dirs) + 1):
        names = ["/".join(d.parts[-depth:]) for d in dirs]
        if len(set(names)) == len(names):
            return names
    raise UserError(f"compare: the same results directory is given twice: {', '.join(map(str, dirs))}")


def load(dirs: list[str | Path]) -> dict[str, pd.DataFrame]:
    """{label: runs} for each results directory (``UserError`` naming a missing one)."""
    if len(dirs) < 2:
        raise UserError(f"compare: give at least two results directories, got {len(dirs)}")
    return {label: load_results(d)[0] for label, d in zip(labels([Path(d) for d in dirs]), dirs)}


def compare(runs_by_dir: dict[str, pd.DataFrame], metric: str = "train_loss", axis: str | None = None,
            ci: float = 0.9, tolerance: float = 1.0, min_runs: int = 3, n_boot: int = 1000,
            seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scales, verdicts): the transfer numbers of every directory, comparable row by row."""
    scales, verdicts = [], []
    for label, runs in runs_by_dir.items():
        kw = dict(metric=metric, axis=axis, min_runs=min_runs, ci=ci, n_boot=n_boot, seed=seed)
        scales.append(analysis.transfer_table(runs, **kw).assign(results=label))
        verdicts.append(analysis.verdict_table(runs, tolerance=tolerance, **kw).assign(results=label))
    scale_table = pd.concat(scales, ignore_index=True)
    first = scale_table[scale_table["results"] == next(iter(runs_by_dir))]
    reference = first.set_index(["series", "axis", "scale"])["opt_log2_lr_fit"]
    keys = list(zip(scale_table["series"], scale_table["axis"], scale_table["scale"]))
    scale_table["shift"] = [row - reference.get(k, math.nan) for row, k in zip(scale_table["opt_log2_lr_fit"], keys)]
    return (scale_table[SCALE_COLUMNS].reset_index(drop=True),
            pd.concat(verdicts, ignore_index=True)[VERDICT_COLUMNS].reset_index(drop=True))
