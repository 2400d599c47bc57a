"""Several results directories side by side: did a change move the optimum?

``compare(dirs)`` runs the transfer analysis (analysis.py) on each directory and puts the
numbers in two tables with a ``results`` column naming the directory:

* ``scales``: per results, series and scale — the fitted optimal LR with its CI, the best
  seed-mean loss, and ``shift``: the fitted optimum minus the first directory's at the same
  series and scale, in octaves (positive: this directory wants a larger LR);
* ``verdicts``: per results and series — verdict, drift and slope with their CIs.

A series or scale missing from a directory is simply absent from its rows; the shift is NaN
where the first directory has no optimum to compare with. ``plots.compare_curves`` overlays
the directories' loss-vs-LR curves.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from . import transfer as analysis
from ..errors import UserError
from ..report.render import Column, interval, markdown_table, num, pct, plus, records, to_csv, to_json
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


def _optimum(r: dict) -> str:
    return f"{plus(r['opt_log2_lr_fit'])} {interval(r['opt_log2_lr_fit_lo'], r['opt_log2_lr_fit_hi'], plus)}"


VERDICT_TABLE = [Column("results", "results"), Column("series", "series"), Column("_axis", "axis"),
                 Column("_verdict", "verdict"), Column("_drift", "drift, octaves ({pct} CI)"),
                 Column("_slope", "slope ({pct} CI)")]
SCALE_TABLE = [Column("series", "series"), Column("_scale", "scale"), Column("results", "results"),
               Column("_optimum", "optimal log2 LR (CI)"), Column("shift", "shift", plus, True),
               Column("best_loss", "best {noun}", num, True), Column("n_seeds", "seeds", lambda n: str(int(n)), True)]


def _headed(columns: list[Column], **words) -> list[Column]:
    return [Column(c.key, c.header.format(**words), c.fmt, c.right) for c in columns]


def markdown(scales: pd.DataFrame, verdicts: pd.DataFrame, ci: float = 0.9, metric: str = "train_loss") -> str:
    """The two tables as markdown (``render.markdown_table``): verdicts, then the optimum per scale."""
    p = pct(ci)
    noun = metric.replace("_", " ") if analysis.metric_spec(metric).maximize else "loss"
    rows = [{**r, "_axis": f"{r['axis']} {r['base_scale']:g}→{r['max_scale']:g}",
             "_verdict": f"**{r['verdict']}**" + (f" ({r['flags']})" if r.get("flags") else ""),
             "_drift": f"{plus(r['drift'])} {interval(r['drift_ci_lo'], r['drift_ci_hi'], plus)}",
             "_slope": f"{plus(r['slope'])} {interval(r['slope_ci_lo'], r['slope_ci_hi'], plus)}"}
            for r in verdicts.to_dict("records")]
    first = scales["results"].iloc[0] if len(scales) else ""
    ordered = scales.sort_values(["series", "axis", "scale"], kind="stable")
    per_scale = [{**r, "_scale": f"{r['axis']}={r['scale']:g}", "_optimum": _optimum(r)}
                 for r in ordered.to_dict("records")]
    return "\n".join(["## Verdicts", "", markdown_table(rows, _headed(VERDICT_TABLE, pct=p)), "",
                      "## Optimum per scale", "",
                      f"Fitted optimal LR (log2, {p} CI) and best seed-mean {noun}; shift = this optimum minus "
                      f"`{first}`'s at the same series and scale, in octaves.", "",
                      markdown_table(per_scale, _headed(SCALE_TABLE, noun=noun))]) + "\n"


def render_comparison(scales: pd.DataFrame, verdicts: pd.DataFrame, format: str = "markdown", ci: float = 0.9,
                      metric: str = "train_loss") -> str:
    """markdown (``markdown``), JSON ``{"verdicts": [...], "scales": [...]}`` (strict, CI pairs as
    lists) or CSV (the per-scale table)."""
    if format == "json":
        return to_json({"metric": metric, "verdicts": records(verdicts), "scales": records(scales)})
    if format == "csv":
        return to_csv(scales, digits=None)
    return markdown(scales, verdicts, ci, metric)
