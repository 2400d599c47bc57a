"""Several results directories side by side: did a change move the optimum?

``compare(runs_by_dir)`` runs the transfer analysis on each directory and puts the
numbers in two tables with a ``results`` column naming the directory:

* ``scales``: per results, series and scale — the fitted optimal LR with its CI, the best
  seed-mean loss, and ``shift``: the fitted optimum minus the first directory's at the same
  series and scale, in octaves (positive: this directory wants a larger LR);
* ``verdicts``: per results and series — verdict, drift and slope with their CIs;
* ``contrasts`` (``comparison``): per later results and series, the difference of its slope and
  drift from the same series' in the first directory, with CIs (``analysis.contrast``).

A series or scale missing from a directory is simply absent from its rows; the shift is NaN
where the first directory has no optimum to compare with. ``report.compare`` renders the
tables; ``plots.compare_curves`` overlays the directories' loss-vs-LR curves.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from . import contrast, transfer as analysis
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
    return comparison(runs_by_dir, metric, axis, ci, tolerance, min_runs, n_boot, seed)[:2]


def comparison(runs_by_dir: dict[str, pd.DataFrame], metric: str = "train_loss", axis: str | None = None,
               ci: float = 0.9, tolerance: float = 1.0, min_runs: int = 3, n_boot: int = 1000,
               seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(scales, verdicts, contrasts): ``compare``'s tables and, per later directory and series,
    the contrast of that series with the same series (axis and group) in the first directory
    (``contrast.contrast_row``; ``results`` names the later directory, ``series_a`` is the first
    directory's series and ``series_b`` this one's, so abs_drift_diff > 0 means this directory's
    optimum moves less)."""
    scales, verdicts, boots = [], [], {}
    for label, runs in runs_by_dir.items():
        table, summary, boot = analysis.analyse_with_replicates(runs, metric=metric, axis=axis, min_runs=min_runs,
                                                                ci=ci, tolerance=tolerance, n_boot=n_boot, seed=seed)
        scales.append(table.assign(results=label))
        verdicts.append(summary.assign(results=label))
        boots[label] = (summary, boot)
    scale_table = pd.concat(scales, ignore_index=True)
    first = scale_table[scale_table["results"] == next(iter(runs_by_dir))]
    reference = first.set_index(["series", "axis", "scale"])["opt_log2_lr_fit"]
    keys = list(zip(scale_table["series"], scale_table["axis"], scale_table["scale"]))
    scale_table["shift"] = [row - reference.get(k, math.nan) for row, k in zip(scale_table["opt_log2_lr_fit"], keys)]
    return (scale_table[SCALE_COLUMNS].reset_index(drop=True),
            pd.concat(verdicts, ignore_index=True)[VERDICT_COLUMNS].reset_index(drop=True),
            _contrasts_with_first(boots, ci))


def _contrasts_with_first(boots: dict, ci: float) -> pd.DataFrame:
    """Each later directory's series against the same series, axis and group in the first."""
    labels_ = list(boots)
    base_summary, base_boot = boots[labels_[0]]
    keys = ["series", "axis", *analysis.group_columns(base_summary)]

    def index(summary):
        return {tuple(None if pd.isna(v) else v for v in row[keys]): i for i, row in summary.iterrows()}

    base_index = index(base_summary)
    rows = []
    for label in labels_[1:]:
        summary, boot = boots[label]
        for key, i in index(summary).items():
            if key not in base_index:
                continue
            j = base_index[key]
            row = contrast.contrast_row(f"{labels_[0]}:{key[0]}", f"{label}:{key[0]}", base_summary.loc[j].to_dict(),
                                        summary.loc[i].to_dict(), base_boot[base_summary.index.get_loc(j)],
                                        boot[summary.index.get_loc(i)], ci)
            rows.append({"results": label, "series": key[0], **row})
    return pd.DataFrame(rows, columns=["results", "series", *contrast.CONTRAST_COLUMNS])
