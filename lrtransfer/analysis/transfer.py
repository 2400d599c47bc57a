"""Transfer numbers from a runs table: optimal LR per scale, drift, slope, regret, with seed
bootstrap confidence intervals and a transfer verdict.

Pure pandas/numpy; importable without torch. The renderers (markdown, JSON, CSV) are in
``report.py`` and ``render.py``; ``report`` and the old formatting names are re-exported here.

Metrics (``METRIC_SPECS``, each declared once with its direction): ``train_loss`` and
``test_loss`` are minimized, ``test_acc`` (``final_test_acc``) is maximized. Everything below
is written for a minimized metric; a maximized one is analysed as its negation, so its optimum
is the maximum, its regret = best value − value at the base LR (≥ 0, the accuracy lost), and
``loss_change_at_base_lr`` / ``worse-with-scale`` keep meaning *worse* (the accuracy fell).
Tables report ``best_loss``, ``loss_at_base_lr`` and the cells' ``loss``/``lo``/``hi`` in
the metric's own units (the column names stay ``loss`` for every metric).

Definitions (per series, scale axis and every other varying config key: a *group*):

* a *cell* is one (scale, lr). Its loss is the mean of the metric over the seeds that
  finished (status ``"done"`` and a finite metric), with ``std``/``lo``/``hi`` across those
  seeds and ``n_seeds`` their number. A cell where no seed finished and at least one diverged
  is *diverged*; a cell whose runs all failed counts as *not run*. Diverged cells never
  enter an optimum and are counted in ``n_diverged``. The cells of one scale, ordered by LR,
  are that scale's *seed-mean curve*. (Runs sharing a cell and a seed are averaged into one
  seed first; without a ``seed`` column the runs of a cell are numbered as its seeds.)
* the *optimal LR* at a scale is the grid argmin of the seed-mean curve over finished cells
  (ties: the smaller LR), refined by a parabola in log2(lr) through the argmin and its two
  finished neighbours. The vertex is kept only when both neighbours exist and the parabola
  is convex, and is clipped to the neighbours' interval; otherwise the *fitted optimum* is
  the grid argmin (``optimum``). ``edge`` flags an argmin at the smallest or largest LR run
  at that scale (the true optimum may be outside).
* the *base scale* is the smallest scale of a group that has a finished run (normally simply
  the smallest scale); its fitted optimum is the *base LR* (``base_lr``; not a grid point in
  general).
* **regret** at a scale = the loss at the base LR read off that scale's seed-mean curve by
  linear interpolation in log2(lr) between the two nearest LRs that finished or diverged
  (an exact grid LR is read directly), minus the best seed-mean loss at that scale (≥ 0). It
  is ``inf`` when the interpolation touches a diverged cell (``base_lr_diverged``), NaN when
  the base LR lies outside the LRs run (finished or diverged) at that scale
  (``base_lr_missing``). At the base scale it is 0 when the base LR is a grid LR, and
  otherwise the error of linear interpolation there (the grid's resolution floor).
* **drift** = fitted log2 optimum at the largest scale with a finished run (``max_scale``)
  minus at the base scale: signed octaves, negative when the optimum moves to smaller LR as
  the scale grows. ``drift_octaves`` = max − min of the *grid* log2 optimum across the scales
  with an optimum (``n_scales``), ``drift_octaves_fit`` the same with the fitted optimum.
* **slope** = least-squares slope of the fitted log2 optimum against log2(scale) over the
  scales with an optimum: octaves of LR per octave of scale (NaN below 2 scales).
* **loss change at the base LR** = loss at the base LR at ``max_scale`` − at the base scale
  (both read as for the regret); ``worse_with_scale`` when its CI lies above 0.

Bootstrap: a replicate redraws, independently at every scale, as many seeds as that scale
has, with replacement, and recomputes every cell's mean over the drawn seeds that finished
there (a cell none of whose drawn seeds finished is diverged if one of them diverged, else
not run), then every number above from those curves (the base LR too), ``n_boot`` times
(default 1000). With n seeds (the fewest at any scale involved) the CI at level ``ci``
(default 0.9) is, for the fitted optima, the drift, the slope and the loss change, the
point value ± t_{(1+ci)/2, n−1}·√(n/(n−1))·(standard deviation of the replicates)
(``t_interval``); for the regret, which is ≥ 0 and may be infinite, the expanded percentile
interval (``expanded_level``; inverted-CDF percentiles, so infinite regrets stay exact).
Plain percentiles are too narrow with few seeds (see ``t_interval``). Replicates where a
number is undefined (NaN) are left out; the CI is NaN when more than half are, or with
fewer than 2 seeds.
Each group's RNG is seeded from (``seed``, the group's label), so reports are reproducible
and one group's CI does not depend on which other series are in the table.

Verdict per group, with ``tolerance`` (default 1 octave over the whole scale range):

* ``transfers``: the drift CI lies inside [−tolerance, +tolerance];
* ``drifts``: the drift CI lies wholly outside it (hi < −tolerance or lo > +tolerance);
* ``inconclusive``: the CI straddles ±tolerance or is undefined, or some scale has its
  optimum on a grid edge (``edge``), fewer than ``min_runs`` finished LRs (``too-few``,
  ``no-finished``) or fewer than 2 finished seeds at its optimum (``too-few-seeds``), or
  fewer than 2 scales have an optimum (``single-scale``).

Flags (space-separated; ``kind@scale`` where per scale): no-finished, edge, too-few,
too-few-seeds, flat (informational: the LRs whose seed-mean loss is within one standard
error, seed std / sqrt(n_seeds), of the minimum cell's loss span ≥ 2 octaves: the optimum is
poorly determined), base-lr-diverged, base-lr-not-run; per group single-scale and
worse-with-scale (informational, ``verdict_table`` only: it needs the bootstrap).

Grouping: the scale axis is ``width`` or ``depth``; ``axis=None`` takes the one that varies,
or both when both vary (rows for one axis then carry the other axis' value in its column).
Every other column that varies within a series becomes a grouping key (e.g. ``batch_size``),
except the metric and metadata columns, which never do:

* the names in ``METADATA`` (run id, lr, seed, series, status, error, timing, host, device,
  versions, ...);
* names starting with ``final_`` or ``first_`` (metrics) or ending with ``_version``,
  ``_sha``, ``_seconds``, ``_at_step``, ``_at`` or ``_time`` (metadata);
* columns that are a function of the model's shape: constant for each (series, width, depth)
  point, such as a parameter count (they would otherwise split every scale into its own
  group).

Tables: ``transfer_table`` (one row per group and scale, ``TRANSFER_COLUMNS``; the fitted
optimum's CI in ``opt_log2_lr_fit_lo``/``_hi``, the regret's in ``regret_ci_lo``/``_hi``),
``drift_table`` (point values per group from a transfer table, ``DRIFT_COLUMNS``) and
``verdict_table`` (per group with CIs and verdict, ``VERDICT_COLUMNS``: ``regret`` there is
the regret at ``max_scale``, ``n_seeds`` the fewest finished seeds at an optimum over the
scales). CIs are two columns ``<name>_ci_lo`` / ``<name>_ci_hi`` in tables and CSV; JSON
writes each pair as one list ``<name>_ci: [lo, hi]`` (``opt_log2_lr_fit_ci`` for the
optimum). JSON output has no NaN: NaN and missing values are ``null``, infinities the
strings ``"inf"`` / ``"-inf"``.
"""
from __future__ import annotations

import functools
import math
import numbers
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import UserError
from ..run.provenance import is_metadata



@dataclass(frozen=True)
class Metric:
    """A metric a transfer analysis can rank LRs by: its runs-table column and its direction."""
    name: str
    column: str
    direction: str          # "min" (losses) or "max" (accuracy)
    unit: str = ""          # printed after regrets

    @property
    def maximize(self) -> bool:
        return self.direction == "max"

    @property
    def sign(self) -> float:
        """+1 for a minimized metric, −1 for a maximized one: sign × value is minimized."""
        return -1.0 if self.maximize else 1.0


# every metric, declared once with its direction
METRIC_SPECS = {m.name: m for m in (Metric("train_loss", "final_train_loss", "min", " nats"),
                                    Metric("test_loss", "final_test_loss", "min", " nats"),
                                    Metric("test_acc", "final_test_acc", "max"))}
METRICS = {name: m.column for name, m in METRIC_SPECS.items()}
AXES = ("width", "depth")
FORMATS = ("markdown", "json", "csv")  # the report's (render.FORMATS)
VERDICTS = ("transfers", "drifts", "inconclusive")
CELL_STATS = ("loss", "std", "lo", "hi", "n_seeds", "n_runs", "n_diverged", "n_failed", "diverged")
TRANSFER_COLUMNS = ("series", "axis", "scale", "opt_lr", "opt_log2_lr", "opt_lr_fit", "opt_log2_lr_fit",
                    "opt_log2_lr_fit_lo", "opt_log2_lr_fit_hi", "best_loss", "best_loss_std", "n_seeds",
                    "base_scale", "base_lr", "loss_at_base_lr", "regret", "regret_ci_lo", "regret_ci_hi",
                    "base_lr_diverged", "base_lr_missing", "n_lrs", "n_finished", "n_diverged", "edge", "too_few",
                    "too_few_seeds", "flat")
DRIFT_COLUMNS = ("series", "axis", "base_scale", "max_scale", "base_lr", "drift", "drift_octaves",
                 "drift_octaves_fit", "slope", "regret", "max_regret", "n_scales", "n_seeds", "flags")
VERDICT_COLUMNS = ("series", "axis", "base_scale", "max_scale", "n_seeds", "base_lr",
                   "drift", "drift_ci_lo", "drift_ci_hi", "slope", "slope_ci_lo", "slope_ci_hi",
                   "regret", "regret_ci_lo", "regret_ci_hi", "max_regret", "verdict", "flags", "tolerance", "ci",
                   "drift_octaves", "drift_octaves_fit", "n_scales", "loss_change_at_base_lr",
                   "loss_change_ci_lo", "loss_change_ci_hi", "worse_with_scale", "n_boot")
def metric_spec(metric: str, runs: pd.DataFrame | None = None) -> Metric:
    """The declared metric behind a name; with ``runs``, checks its column is there."""
    if metric not in METRIC_SPECS:
        from ..errors import nearest
        raise UserError(f"--metric {metric!r}: unknown metric{nearest(metric, METRIC_SPECS)}; "
                        f"allowed: {', '.join(METRIC_SPECS)}")
    spec = METRIC_SPECS[metric]
    if runs is not None and not runs.empty and spec.column not in runs:
        raise UserError(f"--metric {metric}: the runs table has no {spec.column} column")
    return spec


def metric_column(metric: str, runs: pd.DataFrame | None = None) -> str:
    """The runs-table column behind a metric name; with ``runs``, checks it is there."""
    return metric_spec(metric, runs).column


def scale_axes(runs: pd.DataFrame) -> list[str]:
    """The scale axes (width, depth) with more than one distinct value."""
    return [a for a in AXES if a in runs and runs[a].nunique() > 1]


def resolve_axes(runs: pd.DataFrame, axis: str | None) -> list[str]:
    """``[axis]`` checked, or for ``None`` every varying axis (the first present one if none varies)."""
    if axis is not None and axis not in AXES:
        raise UserError(f"--axis {axis!r}: allowed: {', '.join(AXES)}")
    if axis is None:
        axes = scale_axes(runs) or [a for a in AXES if a in runs][:1]
        if not axes:
            raise UserError(f"the runs table has no scale column: expected one of {', '.join(AXES)}")
        return axes
    if axis not in runs:
        raise UserError(f"--axis {axis}: the runs table has no {axis} column")
    return [axis]


def _nunique_max(runs: pd.DataFrame, by: list[str], col: str) -> int:
    try:
        return int(runs.groupby(by, dropna=False, sort=False)[col].nunique(dropna=False).max())
    except TypeError:  # unhashable values (lists, dicts): not a config column
        return 0


def group_keys(runs: pd.DataFrame, axis: str) -> list[str]:
    """Config columns besides series/axis/lr/seed that vary within a series: each value is
    analysed apart (e.g. depth in a width x depth grid, or batch_size). Keys a series fixes
    are not keys; nor are metadata columns or functions of the model shape (see module doc)."""
    if runs.empty:
        return []
    cand = [c for c in runs.columns if c != axis and not is_metadata(c) and _nunique_max(runs, ["series"], c) > 1]
    shape = ["series", axis]
    other = [a for a in AXES if a != axis and a in cand]
    keys = []
    for col in cand:
        if col in AXES:
            # an axis that moves in lockstep with this one is the same scale, not a group
            if _nunique_max(runs, shape, col) > 1:
                keys.append(col)
        elif _nunique_max(runs, shape + other, col) > 1:
            keys.append(col)
    return keys


def _prepare(runs: pd.DataFrame) -> pd.DataFrame:
    if runs is None or runs.empty:
        raise UserError("no runs to analyse: the runs table is empty")
    missing = [c for c in ("lr", "status") if c not in runs]
    if missing:
        raise UserError(f"no runs to analyse: the runs table lacks column(s) {', '.join(missing)}")
    if "series" not in runs:
        runs = runs.assign(series="default")
    lr = pd.to_numeric(runs["lr"], errors="coerce")
    bad = runs.loc[~(lr > 0), "lr"]
    if len(bad):
        raise UserError(f"learning rates must be > 0; the runs table has lr={bad.iloc[0]!r}")
    return runs


def _series_order(runs: pd.DataFrame) -> dict:
    return {name: i for i, name in enumerate(dict.fromkeys(runs["series"]))}


def _check_options(min_runs=3, ci=0.9, tolerance=1.0, n_boot=1000, seed=0) -> None:
    """UserError naming the option for any value outside what the analysis can use."""
    def is_int(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if not is_int(min_runs) or min_runs < 1:
        raise UserError(f"--min-runs {min_runs!r}: allowed: an integer >= 1")
    if isinstance(ci, bool) or not isinstance(ci, numbers.Real) or not 0 < ci < 1:
        raise UserError(f"--ci {ci!r}: allowed: a confidence level strictly between 0 and 1, e.g. 0.9")
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not 0 < tolerance < math.inf:
        raise UserError(f"--tolerance {tolerance!r}: allowed: a finite number of octaves > 0, e.g. 1.0")
    if not is_int(n_boot) or n_boot < 1:
        raise UserError(f"--n-boot {n_boot!r}: allowed: an integer >= 1 (bootstrap replicates), e.g. 1000")
    if not is_int(seed) or seed < 0:
        raise UserError(f"--seed {seed!r}: allowed: an integer >= 0")


def _run_frame(runs: pd.DataFrame, metric: str, axis: str) -> tuple[pd.DataFrame, list[str]]:
    """Per run: the cell keys (series, group keys, axis, lr), ``_value`` (the metric where the
    run finished, else NaN), ``_div``/``_fail`` (0/1) and ``_seed``; and the cell keys."""
    spec = metric_spec(metric, runs)
    if axis not in runs:
        raise UserError(f"--axis {axis}: the runs table has no {axis} column")
    keys = ["series", *group_keys(runs, axis), axis, "lr"]
    # analysed as sign × value, which is minimized whatever the metric's direction
    value = spec.sign * pd.to_numeric(runs[spec.column], errors="coerce").astype(float)
    status = runs["status"].astype(str)
    value = value.where((status == "done") & np.isfinite(value))
    r = runs[keys].assign(_value=value, _div=(status == "diverged").astype(int),
                          _fail=(~status.isin(["done", "diverged"])).astype(int))
    if "seed" in runs:
        r["_seed"] = runs["seed"]
    else:  # the runs of a cell are exchangeable: number them
        r["_seed"] = r.groupby(keys, dropna=False, sort=False).cumcount()
    return r, keys


def _cell_stats(r: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    g = r.groupby(keys, dropna=False, sort=False)
    out = g.agg(loss=("_value", "mean"), std=("_value", "std"), lo=("_value", "min"), hi=("_value", "max"),
                n_seeds=("_value", "count"), n_runs=("_value", "size"), n_diverged=("_div", "sum"),
                n_failed=("_fail", "sum")).reset_index()
    out["diverged"] = (out["n_seeds"] == 0) & (out["n_diverged"] > 0)
    return out


def _sort_cells(c: pd.DataFrame, keys: list[str], order: dict) -> pd.DataFrame:
    c = c.sort_values(keys, key=lambda s: s.map(order) if s.name == "series" else s, kind="stable")
    return c.reset_index(drop=True)


def cells(runs: pd.DataFrame, metric: str = "train_loss", axis: str = "width") -> pd.DataFrame:
    """One row per (series, group keys, scale, lr), series in order of first appearance:
    ``loss`` (seed mean of finished runs), ``std``, ``lo``/``hi`` (min/max over seeds),
    ``n_seeds`` (finished seeds), ``n_runs``, ``n_diverged``, ``n_failed`` and ``diverged``."""
    runs = _prepare(runs)
    r, keys = _run_frame(runs, metric, axis)
    return _in_metric_units(_sort_cells(_cell_stats(r, keys), keys, _series_order(runs)), metric)


def _in_metric_units(c: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Cell statistics of sign × value back in the metric's own units (min and max swap places
    for a maximized metric)."""
    if not metric_spec(metric).maximize:
        return c
    return c.assign(loss=-c["loss"], lo=-c["hi"], hi=-c["lo"])


# ----------------------------------------------------------------------------- optimum (vectorized)

def _fit_rows(x: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid argmin and parabola vertex of every row of ``losses`` (R x L) over ascending log2
    LRs ``x`` (L); non-finite losses are ignored. Returns the argmin column (-1 for a row with
    nothing finite), the fitted log2 optimum (NaN there) and whether the vertex was used.
    One implementation for ``optimum`` and every bootstrap replicate."""
    losses = np.atleast_2d(losses)
    n_rows, n_lr = losses.shape
    ok = np.isfinite(losses)
    has = ok.any(axis=1)
    if n_lr == 0:
        return np.full(n_rows, -1), np.full(n_rows, math.nan), np.zeros(n_rows, bool)
    i = np.argmin(np.where(ok, losses, np.inf), axis=1)  # first minimum: ties go to the smaller LR
    col = np.arange(n_lr)
    # neighbours are the adjacent *finished* LRs (diverged and missing ones are skipped)
    prev = np.where(ok & (col < i[:, None]), col, -1).max(axis=1)
    nxt = np.where(ok & (col > i[:, None]), col, n_lr).min(axis=1)
    inner = has & (prev >= 0) & (nxt < n_lr)
    p, n = np.clip(prev, 0, n_lr - 1), np.clip(nxt, 0, n_lr - 1)
    x0, x1, x2 = x[p], x[i], x[n]
    rows = np.arange(n_rows)
    y0, y1, y2 = losses[rows, p], losses[rows, i], losses[rows, n]
    with np.errstate(all="ignore"):
        d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
        a = (d12 - d01) / (x2 - x0)  # the parabola's leading coefficient
        vertex = (x0 + x1) / 2 - d01 / (2 * a)  # where the derivative d01 + a(2x - x0 - x1) is 0
    fitted = inner & (a > 0)
    fit = np.where(fitted, np.clip(vertex, x0, x2), x1)
    return np.where(has, i, -1), np.where(has, fit, math.nan), fitted


def optimum(lrs, losses, grid_lrs=None) -> dict:
    """Grid argmin of ``losses`` over ``lrs`` and its parabolic refinement in log2(lr).

    Non-finite losses (diverged, failed) are ignored. Returns ``lr_grid`` (argmin; ties go to
    the smaller LR), ``lr_fit`` (vertex of the parabola through the argmin and its two
    neighbours in log2(lr), clipped to the neighbours' interval; the grid argmin when a
    neighbour is missing or the parabola is not convex), ``loss_grid``, ``fitted`` (whether
    the vertex was used) and ``on_edge`` (argmin at the smallest or largest of ``grid_lrs``,
    default ``lrs``: the LRs that were run, diverged ones included). NaNs when nothing is finite.
    """
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    grid = np.asarray(grid_lrs if grid_lrs is not None else lrs, dtype=float)
    keep = np.isfinite(lrs) & (lrs > 0)
    lrs, losses = lrs[keep], losses[keep]
    order = np.argsort(lrs, kind="stable")
    lrs, losses = lrs[order], losses[order]
    idx, fit, fitted = _fit_rows(np.log2(lrs), losses[None, :])
    i = int(idx[0])
    if i < 0:
        return {"lr_grid": math.nan, "lr_fit": math.nan, "loss_grid": math.nan, "fitted": False, "on_edge": False}
    grid = grid[np.isfinite(grid)]
    on_edge = bool(len(grid) == 0 or lrs[i] <= grid.min() or lrs[i] >= grid.max())
    return {"lr_grid": float(lrs[i]), "lr_fit": float(lrs[i]) if not fitted[0] else float(2.0 ** fit[0]),
            "loss_grid": float(losses[i]), "fitted": bool(fitted[0]), "on_edge": on_edge}


def _interp_rows(x: np.ndarray, means: np.ndarray, usable: np.ndarray, diverged: np.ndarray,
                 at: np.ndarray) -> np.ndarray:
    """Every row's curve (``means``, R x L over ascending log2 LRs ``x``) read at ``at`` (R,)
    by linear interpolation between the nearest usable (finished or diverged) LRs on either
    side; an LR within 1e-9 octaves of a grid LR reads that LR alone. inf when a point used
    is diverged, NaN when ``at`` is NaN or not bracketed by usable LRs."""
    n_rows, n_lr = means.shape
    if n_lr == 0:
        return np.full(n_rows, math.nan)
    col = np.arange(n_lr)
    target = at[:, None]
    lo = np.where(usable & (x <= target + 1e-9), col, -1).max(axis=1)
    hi = np.where(usable & (x >= target - 1e-9), col, n_lr).min(axis=1)
    valid = np.isfinite(at) & (lo >= 0) & (hi < n_lr)
    lo, hi = np.clip(lo, 0, n_lr - 1), np.clip(hi, 0, n_lr - 1)
    rows = np.arange(n_rows)
    y_lo, y_hi = means[rows, lo], means[rows, hi]
    span = x[hi] - x[lo]
    with np.errstate(all="ignore"):
        t = np.where(span > 0, (at - x[lo]) / span, 0.0)
        value = np.where(lo == hi, y_lo, y_lo + t * (y_hi - y_lo))
    touched_diverged = diverged[rows, lo] | diverged[rows, hi]
    return np.where(valid, np.where(touched_diverged, math.inf, value), math.nan)


def _slope_rows(u: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of every row of ``y`` (R x K) against ``u`` (K); NaN below 2 points
    or where a row has a NaN."""
    if len(u) < 2:
        return np.full(y.shape[0], math.nan)
    du = u - u.mean()
    return (y - y.mean(axis=1, keepdims=True)) @ du / (du @ du)


def expanded_level(level: float, n: int) -> float:
    """The percentile level that gives a ``level`` interval from ``n`` seeds (Hesterberg's
    expanded percentile bootstrap): 1 − 2Φ(√(n/(n−1))·t_{(1−level)/2, n−1}).

    A plain percentile bootstrap over n seeds is too narrow for small n (it resamples the
    seeds' spread, which underestimates the population's by (n−1)/n, and uses normal instead
    of t tails): on synthetic tables its 90% intervals covered the truth ~70% of the time with
    3 seeds. Widening to the t quantile with the variance correction restores the stated level
    (tests/test_analysis.py measures it). ``level`` itself for n < 2 (no spread to resample).
    """
    if n < 2:
        return level
    from scipy.stats import norm, t
    return float(1 - 2 * norm.cdf(math.sqrt(n / (n - 1)) * t.ppf((1 - level) / 2, n - 1)))


def t_interval(point: float, samples: np.ndarray, level: float, n: int) -> tuple[float, float]:
    """``point`` ± t_{(1+level)/2, n−1} · √(n/(n−1)) · (standard deviation of the replicates).

    For the fitted optima, the drift and the slope: near-linear functions of the seed-mean
    losses, whose bootstrap standard error is accurate up to the (n−1)/n variance factor,
    while a percentile interval cannot reach beyond the most extreme resample (with 3 seeds
    it covered a per-scale optimum ~70% of the time at a nominal 90%). NaN when fewer than
    half of the replicates are finite, or for n < 2.
    """
    samples = np.asarray(samples, dtype=float)
    finite = samples[np.isfinite(samples)]
    if n < 2 or not math.isfinite(point) or len(finite) == 0 or 2 * len(finite) < len(samples):
        return math.nan, math.nan
    from scipy.stats import t
    half = float(t.ppf((1 + level) / 2, n - 1)) * math.sqrt(n / (n - 1)) * float(finite.std(ddof=1) if len(finite) > 1 else 0.0)
    return point - half, point + half


def _ci(samples: np.ndarray, level: float, n_seeds: int) -> tuple[float, float]:
    """Expanded-percentile interval (``expanded_level``) of the defined (non-NaN) replicates;
    NaN when more than half are NaN. For the regret, which is ≥ 0 and may be infinite."""
    samples = np.asarray(samples, dtype=float)
    defined = samples[~np.isnan(samples)]
    if len(defined) == 0 or 2 * len(defined) < len(samples):
        return math.nan, math.nan
    level = expanded_level(level, n_seeds)
    # inverted-CDF quantiles pick order statistics, so an infinite regret never meets inf - inf
    lo, hi = np.quantile(defined, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(lo), float(hi)


def _log2(x) -> float:
    return math.log2(x) if x is not None and np.isfinite(x) and x > 0 else math.nan


# ----------------------------------------------------------------------------- one group

def _group_rng(seed: int, label: tuple) -> np.random.Generator:
    # from the label, not the group's position: adding a series leaves the others' CIs as they were
    return np.random.default_rng([seed, zlib.crc32(repr(tuple(str(v) for v in label)).encode())])


def _analyse_group(g_cells: pd.DataFrame, g_seeds: pd.DataFrame, ax: str, min_runs: int, ci: float,
                   n_boot: int, rng: np.random.Generator) -> tuple[list[dict], dict]:
    """Transfer rows (scales ascending, without the group labels) and the group's bootstrap
    numbers. Every curve below is (1 + n_boot) x n_lrs: row 0 is all seeds (the point values),
    rows 1.. the bootstrap replicates."""
    scales = []
    for scale, s in g_cells.groupby(ax, sort=True):
        s = s.sort_values("lr", kind="stable")
        lrs = s["lr"].to_numpy(float)
        x = np.log2(lrs)
        seeds = g_seeds[g_seeds[ax] == scale]
        lr_col = np.searchsorted(lrs, seeds["lr"].to_numpy(float))
        seed_row, seed_ids = pd.factorize(seeds["_seed"], use_na_sentinel=False)
        n_seed, n_lr = len(seed_ids), len(lrs)
        value, finished, diverged = np.zeros((n_seed, n_lr)), np.zeros((n_seed, n_lr)), np.zeros((n_seed, n_lr))
        fin = seeds["n_fin"].to_numpy() > 0
        value[seed_row, lr_col] = np.where(fin, seeds["value"].to_numpy(float), 0.0)
        finished[seed_row, lr_col] = fin
        diverged[seed_row, lr_col] = (~fin) & (seeds["n_div"].to_numpy() > 0)
        # resampling n seeds with replacement = multinomial counts of how often each seed is drawn
        weights = np.vstack([np.ones((1, n_seed)),
                             rng.multinomial(n_seed, np.full(n_seed, 1.0 / n_seed), size=n_boot)])
        count = weights @ finished
        with np.errstate(all="ignore"):
            means = np.where(count > 0, (weights @ value) / count, math.nan)
        div_cell = (count == 0) & ((weights @ diverged) > 0)
        idx, fit, _ = _fit_rows(x, means)
        best = np.where(idx >= 0, means[np.arange(len(idx)), np.clip(idx, 0, None)], math.nan)
        scales.append({"scale": scale, "cells": s, "lrs": lrs, "x": x, "means": means, "usable": (count > 0) | div_cell,
                       "div": div_cell, "idx": idx, "fit": fit, "best": best, "n_seed": n_seed})

    with_opt = [k for k, sc in enumerate(scales) if sc["idx"][0] >= 0]
    base = scales[with_opt[0]] if with_opt else None
    base_fit = base["fit"] if base else np.full(n_boot + 1, math.nan)
    rows = []
    for sc in scales:
        sc["at_base"] = _interp_rows(sc["x"], sc["means"], sc["usable"], sc["div"], base_fit)
        # the best loss is read the same way, at the scale's own fitted optimum: a reading
        # between grid points then costs nothing by itself (regret 0 at the base scale)
        own = _interp_rows(sc["x"], sc["means"], sc["usable"], sc["div"], sc["fit"])
        with np.errstate(invalid="ignore"):  # a diverged base LR is infinite regret even where nothing finished
            sc["regret"] = np.where(sc["at_base"] == math.inf, math.inf, np.maximum(sc["at_base"] - own, 0.0))
        s, i = sc["cells"], int(sc["idx"][0])
        n_finished = int((s["n_seeds"] > 0).sum())
        best_cell = s.iloc[i] if i >= 0 else None
        n_seeds = int(best_cell["n_seeds"]) if best_cell is not None else 0
        std = float(best_cell["std"]) if best_cell is not None else math.nan
        flat = False
        if i >= 0:  # LRs within one standard error of the minimum span >= 2 octaves
            se = std / math.sqrt(n_seeds) if math.isfinite(std) else 0.0
            m0 = sc["means"][0]
            near = np.isfinite(m0) & (m0 <= m0[i] + se + 1e-12)
            flat = bool(np.ptp(sc["x"][near]) >= 2 - 1e-9)
        at_base, regret = float(sc["at_base"][0]), float(sc["regret"][0])
        opt_lr = float(sc["lrs"][i]) if i >= 0 else math.nan
        fit_lo, fit_hi = t_interval(float(sc["fit"][0]), sc["fit"][1:], ci, sc["n_seed"])
        reg_lo, reg_hi = _ci(sc["regret"][1:], ci, min(sc["n_seed"], base["n_seed"]) if base else sc["n_seed"])
        rows.append({"axis": ax, "scale": sc["scale"],
                     "opt_lr": opt_lr, "opt_log2_lr": _log2(opt_lr),
                     "opt_lr_fit": 2.0 ** float(sc["fit"][0]), "opt_log2_lr_fit": float(sc["fit"][0]),
                     "opt_log2_lr_fit_lo": fit_lo, "opt_log2_lr_fit_hi": fit_hi,
                     "best_loss": float(sc["best"][0]), "best_loss_std": std, "n_seeds": n_seeds,
                     "base_scale": base["scale"] if base else math.nan, "base_lr": 2.0 ** float(base_fit[0]),
                     "loss_at_base_lr": at_base if math.isfinite(at_base) else math.nan,
                     "regret": regret, "regret_ci_lo": reg_lo, "regret_ci_hi": reg_hi,
                     "base_lr_diverged": at_base == math.inf,
                     "base_lr_missing": bool(base is not None and math.isnan(at_base)),
                     "n_lrs": len(s), "n_finished": n_finished, "n_diverged": int(s["diverged"].sum()),
                     "edge": bool(i >= 0 and (i == 0 or i == len(s) - 1)),
                     "too_few": n_finished < min_runs, "too_few_seeds": bool(i >= 0 and n_seeds < 2),
                     "flat": flat})

    boot = {"drift": np.full(n_boot + 1, math.nan), "slope": np.full(n_boot + 1, math.nan),
            "regret": np.full(n_boot + 1, math.nan), "loss_change": np.full(n_boot + 1, math.nan)}
    if with_opt:
        top = scales[with_opt[-1]]
        u = np.log2(np.array([float(scales[k]["scale"]) for k in with_opt]))
        boot["drift"] = top["fit"] - base["fit"]
        boot["slope"] = _slope_rows(u, np.column_stack([scales[k]["fit"] for k in with_opt]))
        boot["regret"] = top["regret"]
        with np.errstate(invalid="ignore"):
            boot["loss_change"] = top["at_base"] - base["at_base"]
    group = {}
    fewest = min((scales[k]["n_seed"] for k in with_opt), default=0)
    for name, samples in boot.items():
        group[name] = float(samples[0])
        interval = _ci if name == "regret" else functools.partial(t_interval, group[name])
        group[f"{name}_ci_lo"], group[f"{name}_ci_hi"] = interval(samples[1:], ci, fewest)
    return rows, group


def _tidy_keys(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Whole-number float key columns (ints that picked up NaN from another axis' rows) -> Int64."""
    for k in keys:
        col = table[k]
        if pd.api.types.is_float_dtype(col):
            vals = col.dropna()
            if len(vals) and np.all(np.isfinite(vals)) and np.all(vals == np.round(vals)):
                table[k] = col.astype("Int64")
    return table


def _flags(g: pd.DataFrame) -> str:
    """Per-scale flags of one group's transfer rows, ``kind@scale``, kind by kind."""
    def at(mask, name):
        return [f"{name}@{s}" for s in g.loc[mask, "scale"]]
    return " ".join(at(g["n_finished"] == 0, "no-finished") + at(g["edge"], "edge")
                    + at(g["too_few"] & (g["n_finished"] > 0), "too-few") + at(g["too_few_seeds"], "too-few-seeds")
                    + at(g["flat"], "flat")
                    + at(g["base_lr_diverged"], "base-lr-diverged") + at(g["base_lr_missing"], "base-lr-not-run"))


def _group_point(g: pd.DataFrame) -> dict:
    """Point values of one group from its transfer rows (scales ascending): ``DRIFT_COLUMNS``."""
    has = g[g["opt_log2_lr"].notna()]
    grid, fit = has["opt_log2_lr"].astype(float), has["opt_log2_lr_fit"].astype(float)
    u = np.log2(has["scale"].astype(float).to_numpy())
    regrets = g["regret"].dropna()
    top = has.iloc[-1] if len(has) else None
    flags = _flags(g) + (" single-scale" if len(has) < 2 else "")
    return {"base_scale": g["base_scale"].iloc[0], "max_scale": top["scale"] if top is not None else math.nan,
            "base_lr": g["base_lr"].iloc[0],
            "drift": float(fit.iloc[-1] - fit.iloc[0]) if len(fit) else math.nan,
            "drift_octaves": float(grid.max() - grid.min()) if len(grid) else math.nan,
            "drift_octaves_fit": float(fit.max() - fit.min()) if len(fit) else math.nan,
            "slope": float(_slope_rows(u, fit.to_numpy()[None, :])[0]),
            "regret": float(top["regret"]) if top is not None else math.nan,
            "max_regret": float(regrets.max()) if len(regrets) else math.nan,
            "n_scales": len(has), "n_seeds": int(has["n_seeds"].min()) if len(has) else 0,
            "flags": flags.strip()}


def verdict(drift_ci_lo: float, drift_ci_hi: float, tolerance: float = 1.0, blocked: bool = False) -> str:
    """``transfers`` / ``drifts`` / ``inconclusive`` from the drift CI (see the module doc);
    ``blocked``: a data problem (edge, too few runs or seeds, one scale) forces inconclusive."""
    lo, hi = drift_ci_lo, drift_ci_hi
    if blocked or not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if -tolerance <= lo and hi <= tolerance:
        return "transfers"
    if hi < -tolerance or lo > tolerance:
        return "drifts"
    return "inconclusive"


def _blocked(g: pd.DataFrame) -> bool:
    """Whether one group's transfer rows make any drift verdict premature."""
    return bool(g["edge"].any() or g["too_few"].any() or g["too_few_seeds"].any() or (g["n_finished"] == 0).any()
                or g["opt_log2_lr"].notna().sum() < 2)


# ----------------------------------------------------------------------------- tables

def analyse(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, min_runs: int = 3,
            ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000,
            seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(transfer_table, verdict_table)`` from one bootstrap (see those and the module doc)."""
    _check_options(min_runs, ci, tolerance, n_boot, seed)
    runs = _prepare(runs)
    metric_column(metric, runs)
    order = _series_order(runs)
    rows, summaries, all_keys = [], [], []
    for ax in resolve_axes(runs, axis):
        r, keys = _run_frame(runs, metric, ax)
        extra = keys[1:-2]
        all_keys += [k for k in extra if k not in all_keys]
        # one id per group, so cells and per-seed rows can be matched even with NaN keys
        r["_gid"] = r.groupby(keys[:-2], dropna=False, sort=False).ngroup()
        c = _sort_cells(_cell_stats(r, ["_gid", *keys]), keys, order)
        per_seed = r.groupby(["_gid", ax, "lr", "_seed"], dropna=False, sort=False).agg(
            value=("_value", "mean"), n_fin=("_value", "count"), n_div=("_div", "sum")).reset_index()
        seeds_by_gid = dict(iter(per_seed.groupby("_gid", sort=False)))
        for gid in dict.fromkeys(c["_gid"]):
            g = c[c["_gid"] == gid]
            label = {"series": g["series"].iloc[0], **{k: g[k].iloc[0] for k in extra}}
            rng = _group_rng(seed, (ax, *label.values()))
            scale_rows, boot = _analyse_group(g, seeds_by_gid[gid], ax, min_runs, ci, n_boot, rng)
            g_rows = pd.DataFrame(scale_rows)
            point = _group_point(g_rows)
            worse = boot["loss_change_ci_lo"] > 0
            flags = (point["flags"] + (" worse-with-scale" if worse else "")).strip()
            rows += [{**label, **row} for row in scale_rows]
            summaries.append({**label, "axis": ax, **point, **boot, "drift": point["drift"], "slope": point["slope"],
                              "regret": point["regret"], "loss_change_at_base_lr": boot["loss_change"],
                              "verdict": verdict(boot["drift_ci_lo"], boot["drift_ci_hi"], tolerance,
                                                 _blocked(g_rows)),
                              "flags": flags, "tolerance": float(tolerance), "ci": float(ci),
                              "worse_with_scale": bool(worse), "n_boot": n_boot})
    table = pd.DataFrame(rows)
    if table.empty:
        raise UserError("no runs to analyse")
    if table["opt_lr"].isna().all():
        raise UserError(f"no finished runs with a finite {metric_column(metric)}: every run diverged or failed "
                        f"(statuses: {', '.join(sorted(set(runs['status'].astype(str))))})")
    table = _tidy_keys(table[["series", *all_keys, *TRANSFER_COLUMNS[1:]]], all_keys)
    sign = metric_spec(metric).sign
    table["best_loss"], table["loss_at_base_lr"] = sign * table["best_loss"], sign * table["loss_at_base_lr"]
    summary = pd.DataFrame(summaries)
    summary = _tidy_keys(summary[["series", *all_keys, *VERDICT_COLUMNS[1:]]], all_keys)
    return table, summary


def transfer_table(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, min_runs: int = 3,
                   ci: float = 0.9, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (series, group keys, axis, scale): the optimum with its bootstrap CI and the
    regret of the base LR.

    Columns: ``series``, the group keys (e.g. ``depth`` when axis is width in a width x depth
    grid), then ``TRANSFER_COLUMNS[1:]`` (see the module doc). Rows are in order of series'
    first appearance, then group, then ascending scale.
    """
    return analyse(runs, metric, axis, min_runs, ci, 1.0, n_boot, seed)[0]


def verdict_table(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, min_runs: int = 3,
                  ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (series, group keys, axis): ``series``, the group keys, then
    ``VERDICT_COLUMNS[1:]``: base and largest scale, ``n_seeds`` (fewest finished seeds at an
    optimum over the scales), the fitted base LR, the signed drift, slope and regret at
    ``max_scale`` each with its CI (``<name>_ci_lo``/``_hi``), ``max_regret``, ``verdict``,
    ``flags``, the ``tolerance`` and ``ci`` level used (see the module doc)."""
    return analyse(runs, metric, axis, min_runs, ci, tolerance, n_boot, seed)[1]


def group_columns(table: pd.DataFrame) -> list[str]:
    """The group-key columns of a transfer, drift or verdict table: those not in its fixed schema."""
    fixed = {*TRANSFER_COLUMNS, *DRIFT_COLUMNS, *VERDICT_COLUMNS}
    return [k for k in table.columns if k not in fixed]


def drift_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (series, group keys, axis) of a transfer table: its point values, no CIs.

    ``base_scale``/``max_scale`` (smallest / largest scale with an optimum), ``base_lr``
    (fitted), ``drift`` (signed, fitted, max_scale − base scale), ``drift_octaves`` /
    ``drift_octaves_fit`` (max − min of the grid / fitted log2 optimum over the ``n_scales``
    scales with an optimum), ``slope``, ``regret`` (at max_scale), ``max_regret`` (inf when the
    base LR diverged somewhere), ``n_seeds`` and ``flags`` (the per-scale flags; see
    ``verdict_table`` for the CIs, the verdict and worse-with-scale).
    """
    extra = group_columns(table)
    rows = []
    for gkey, g in table.groupby(["series", *extra, "axis"], dropna=False, sort=False):
        rows.append({"series": gkey[0], **dict(zip(extra, gkey[1:-1])), "axis": gkey[-1],
                     **_group_point(g.sort_values("scale", kind="stable"))})
    drift = pd.DataFrame(rows, columns=["series", *extra, *DRIFT_COLUMNS[1:]])
    return _tidy_keys(drift, extra)


# ----------------------------------------------------------------------------- renderers

# the formatting helpers and the report moved to render.py / report.py; these names stay for importers
from ..report.render import interval as _interval, json_value as _json_value, missing as _missing  # noqa: E402,F401
from ..report.render import num as _num, pct as _pct, pow2 as _pow2, records as _records, signed as _signed  # noqa: E402,F401


def summary_line(row: dict, extra: list[str] = (), metric: str = "train_loss") -> str:
    """One quotable sentence for a ``verdict_table`` row (``report.summary_line``)."""
    from ..report.transfer import summary_line as line
    return line(row, extra, metric)


def report(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, format: str = "markdown",
           min_runs: int = 3, ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000, seed: int = 0) -> str:
    """The transfer report of ``runs`` in ``format`` (markdown | json | csv): ``analyse``'s
    numbers rendered by ``report.render`` (see that module)."""
    from ..report.transfer import check_format, render
    check_format(format)
    table, summary = analyse(runs, metric, axis, min_runs, ci, tolerance, n_boot, seed)
    return render(table, summary, format, metric, min_runs, ci, tolerance, n_boot, seed)
