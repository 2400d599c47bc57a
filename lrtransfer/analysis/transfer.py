"""Transfer numbers from a runs table: optimal LR per scale, drift, slope, regret, with seed
bootstrap confidence intervals and a transfer verdict per group.

Pure pandas/numpy; importable without torch. The definitions (cell, optimum, base scale,
drift, regret, CIs, verdict, flags, grouping) are in docs/analysis.md.
"""
from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import UserError, nearest
from ..run.provenance import MODEL_SCALE_AXES, SCALE_AXES, is_metadata
from .common import check_ci, check_n_boot, check_real, group_rng, is_int, resampled_means, seed_resamples


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
VERDICTS = ("transfers", "drifts", "inconclusive")
# the fewest seeds (at every scale's optimum) for which the drift CI holds its level: measured on
# synthetic designs, 2 seeds over-cover (95–97% at a nominal 90%), 3 and 5 cover 91–93%
# (docs/analysis.md §3); a verdict from fewer is inconclusive and flagged few-seeds
CALIBRATED_SEEDS = 3
CELL_STATS = ("loss", "std", "lo", "hi", "n_seeds", "n_runs", "n_diverged", "n_failed", "diverged")
TRANSFER_COLUMNS = ("series", "axis", "scale", "opt_lr", "opt_log2_lr", "opt_lr_fit", "opt_log2_lr_fit",
                    "opt_log2_lr_fit_lo", "opt_log2_lr_fit_hi", "best_loss", "best_loss_std", "n_seeds",
                    "base_scale", "base_lr", "loss_at_base_lr", "regret", "regret_ci_lo", "regret_ci_hi",
                    "base_lr_diverged", "base_lr_missing", "n_lrs", "n_finished", "n_diverged", "edge", "too_few",
                    "too_few_seeds", "flat")
DRIFT_COLUMNS = ("series", "axis", "base_scale", "max_scale", "base_lr", "drift", "endpoint_drift", "drift_octaves",
                 "drift_octaves_fit", "slope", "regret", "max_regret", "n_scales", "n_seeds", "flags")
VERDICT_COLUMNS = ("series", "axis", "base_scale", "max_scale", "n_seeds", "base_lr",
                   "drift", "drift_ci_lo", "drift_ci_hi", "slope", "slope_ci_lo", "slope_ci_hi",
                   "intercept", "intercept_ci_lo", "intercept_ci_hi", "law_scatter",
                   "endpoint_drift", "endpoint_drift_ci_lo", "endpoint_drift_ci_hi",
                   "regret", "regret_ci_lo", "regret_ci_hi", "max_regret", "verdict", "flags", "tolerance", "ci",
                   "drift_octaves", "drift_octaves_fit", "n_scales", "loss_change_at_base_lr",
                   "loss_change_ci_lo", "loss_change_ci_hi", "worse_with_scale", "n_boot")
PREDICTION_COLUMNS = ("series", "axis", "target", "pred_lr", "pred_log2_lr", "pred_log2_lr_lo", "pred_log2_lr_hi",
                      "pred_lr_lo", "pred_lr_hi", "octaves_beyond", "slope", "intercept", "law_scatter", "n_scales",
                      "n_seeds", "ci", "flags")
# the per-scale flags of a transfer row, in the order they are listed (docs/analysis.md §5);
# each test works on one row (a dict) and on a table's columns alike
SCALE_FLAGS = (("no-finished", lambda r: r["n_finished"] == 0), ("edge", lambda r: r["edge"]),
               ("too-few", lambda r: r["too_few"] & (r["n_finished"] > 0)),
               ("too-few-seeds", lambda r: r["too_few_seeds"]), ("flat", lambda r: r["flat"]),
               ("base-lr-diverged", lambda r: r["base_lr_diverged"]),
               ("base-lr-not-run", lambda r: r["base_lr_missing"]))


def metric_spec(metric: str, runs: pd.DataFrame | None = None) -> Metric:
    """The declared metric behind a name; with ``runs``, checks its column is there."""
    if metric not in METRIC_SPECS:
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
    """The scale-like keys (``SCALE_AXES``: width, depth, batch_size, steps, ...) that take two
    or more values within some series, in that order."""
    return [a for a in SCALE_AXES if a in runs and _varies(runs, a)]


def _varies(runs: pd.DataFrame, key: str) -> bool:
    """Whether ``key`` takes two or more values within some series: a key each series runs at
    one value (batch size set per series, say) is a condition of the series, not a scale to
    transfer across (missing values ignored)."""
    if "series" not in runs:
        return _nunique(runs[key]) > 1
    try:
        return bool(runs.groupby("series", sort=False)[key].nunique().max() > 1)
    except TypeError:  # unhashable values (lists, dicts)
        return False


def _nunique(col: pd.Series) -> int:
    try:
        return int(col.nunique())
    except TypeError:  # unhashable values (lists, dicts): not a config key a run scales along
        return 0


def _axis_problem(runs: pd.DataFrame, key: str) -> str | None:
    """Why ``key`` cannot be a scale axis of ``runs``, or None. A scale is a config column (not
    the LR, seed, series, a metric or provenance) whose values are numbers > 0, read in octaves
    (log2); a key not declared scale-like must also vary (one value is no scale to transfer
    across), while a declared one may be constant (one scale per group)."""
    if key not in runs:
        return f"the runs table has no {key} column"
    if is_metadata(key):
        return f"{key} is not a config key a run scales along (the LR, seed, series, metrics and provenance never are)"
    col = runs[key].dropna()
    if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
        shown = ", ".join(map(str, list(dict.fromkeys(map(str, col)))[:3]))
        return f"its values ({shown}) are not numbers"
    if col.empty:
        return f"every run has {key} missing"
    bad = col[~(np.isfinite(col.astype(float)) & (col > 0))]
    if len(bad):
        return f"its values must be finite and > 0 (a scale is read in log2); it has {bad.iloc[0]:g}"
    if key not in SCALE_AXES and _nunique(col) < 2:
        return f"every run has {key} = {col.iloc[0]}, nothing varies along it"
    if key not in SCALE_AXES and not _varies(runs, key):
        return f"each series runs one {key}, so no series varies along it"
    return None


def axis_choices(runs: pd.DataFrame) -> list[str]:
    """The keys ``--axis`` accepts for ``runs``: the scale-like keys it has (``SCALE_AXES``,
    declared order), then every other numeric config column with values > 0 that varies."""
    ordered = [a for a in SCALE_AXES if a in runs] + [c for c in runs.columns if c not in SCALE_AXES]
    return [c for c in ordered if _axis_problem(runs, c) is None]


def resolve_axes(runs: pd.DataFrame, axis: str | None) -> list[str]:
    """``[axis]`` checked (``axis_choices``), or for ``None`` every varying scale-like key (if
    none varies, the model's one size: width, else depth)."""
    if axis is None:
        axes = scale_axes(runs) or [a for a in MODEL_SCALE_AXES if a in runs][:1]
        if not axes:
            raise UserError(f"the runs table has no scale column: none of {', '.join(SCALE_AXES)} varies, and it "
                            f"has no {' or '.join(MODEL_SCALE_AXES)} column")
        return axes
    why = _axis_problem(runs, axis)
    if why is not None:
        choices = axis_choices(runs)
        raise UserError(f"--axis {axis!r}: {why}{nearest(axis, choices) if axis not in runs else ''}; allowed "
                        f"here: {', '.join(choices) or 'none'} (the scale-like keys the runs have, and any other "
                        f"numeric config key with values > 0 that varies)")
    return [axis]


def transfer_axes(runs: pd.DataFrame, axis: str | None = None) -> list[str]:
    """The axes of ``resolve_axes`` that take two or more values within some series: those a
    transfer verdict can be given along (empty when no scale varies, e.g. a single-width
    lr x weight-decay grid)."""
    return [a for a in resolve_axes(runs, axis) if _varies(runs, a)]


def _nunique_max(runs: pd.DataFrame, by: list[str], col: str) -> int:
    try:
        return int(runs.groupby(by, dropna=False, sort=False)[col].nunique(dropna=False).max())
    except TypeError:  # unhashable values (lists, dicts): not a config column
        return 0


def group_keys(runs: pd.DataFrame, axis: str) -> list[str]:
    """Config columns besides series/axis/lr/seed that vary within a series: each value is
    analysed apart (e.g. depth in a width x depth grid, or batch_size). Keys a series fixes
    are not keys; nor are metadata columns or functions of the model shape (docs/analysis.md §6)."""
    if runs.empty:
        return []
    cand = [c for c in runs.columns if c != axis and not is_metadata(c) and _nunique_max(runs, ["series"], c) > 1]
    shape = ["series", axis]
    other = [a for a in SCALE_AXES if a != axis and a in cand]
    keys = []
    for col in cand:
        if col in SCALE_AXES:
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


def check_options(min_runs=3, ci=0.9, tolerance=1.0, n_boot=1000, seed=0) -> None:
    """UserError naming the option for any value outside what the analysis can use."""
    if not is_int(min_runs) or min_runs < 1:
        raise UserError(f"--min-runs {min_runs!r}: allowed: an integer >= 1")
    check_ci(ci)
    check_real("--tolerance", tolerance, lambda v: 0 < v < math.inf, "a finite number of octaves > 0, e.g. 1.0")
    check_n_boot(n_boot)
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
    return _line_rows(u, y)[0]


def _line_rows(u: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares line y = intercept + slope·u through every row of ``y`` (R x K): its slope
    and intercept per row; NaN below 2 points or where a row has a NaN."""
    if len(u) < 2:
        return np.full(y.shape[0], math.nan), np.full(y.shape[0], math.nan)
    du = u - u.mean()
    slope = (y - y.mean(axis=1, keepdims=True)) @ du / (du @ du)
    return slope, y.mean(axis=1) - slope * u.mean()


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

@dataclass
class _Scale:
    """One scale of a group. Every curve is (1 + n_boot) x n_lrs: row 0 is all seeds (the point
    values), rows 1.. the bootstrap replicates; ``idx``/``fit``/``best`` are per row."""
    scale: object
    cells: pd.DataFrame
    x: np.ndarray           # ascending log2 LRs
    means: np.ndarray       # seed-mean loss per cell
    usable: np.ndarray      # finished or diverged: a point the curve can be read at
    div: np.ndarray         # diverged cells
    idx: np.ndarray         # grid argmin column (-1: nothing finished)
    fit: np.ndarray         # fitted log2 optimum
    best: np.ndarray        # seed-mean loss at the argmin
    n_seed: int
    at_base: np.ndarray | None = None   # loss read at the base LR
    regret: np.ndarray | None = None


def _seed_matrices(s: pd.DataFrame, seeds: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (seed, lr) of one scale: the metric where the seed finished (else 0), and 0/1 for
    finished and for diverged."""
    lrs = s["lr"].to_numpy(float)
    lr_col = np.searchsorted(lrs, seeds["lr"].to_numpy(float))
    seed_row, seed_ids = pd.factorize(seeds["_seed"], use_na_sentinel=False)
    shape = (len(seed_ids), len(lrs))
    value, finished, diverged = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    fin = seeds["n_fin"].to_numpy() > 0
    value[seed_row, lr_col] = np.where(fin, seeds["value"].to_numpy(float), 0.0)
    finished[seed_row, lr_col] = fin
    diverged[seed_row, lr_col] = (~fin) & (seeds["n_div"].to_numpy() > 0)
    return value, finished, diverged


def _bootstrap_scale(scale, s: pd.DataFrame, seeds: pd.DataFrame, n_boot: int, rng: np.random.Generator) -> _Scale:
    """One scale's seed-mean curves, all seeds and ``n_boot`` seed resamples, with their optima."""
    s = s.sort_values("lr", kind="stable")
    value, finished, diverged = _seed_matrices(s, seeds)
    n_seed = len(value)
    weights = seed_resamples(n_seed, n_boot, rng)
    means, count = resampled_means(weights, value, finished)
    div_cell = (count == 0) & ((weights @ diverged) > 0)
    x = np.log2(s["lr"].to_numpy(float))
    idx, fit, _ = _fit_rows(x, means)
    best = np.where(idx >= 0, means[np.arange(len(idx)), np.clip(idx, 0, None)], math.nan)
    return _Scale(scale, s, x, means, (count > 0) | div_cell, div_cell, idx, fit, best, n_seed)


def _read_base_lr(sc: _Scale, base_fit: np.ndarray) -> None:
    """The scale's loss at the base LR and its regret, per row."""
    sc.at_base = _interp_rows(sc.x, sc.means, sc.usable, sc.div, base_fit)
    # the best loss is read the same way, at the scale's own fitted optimum: a reading
    # between grid points then costs nothing by itself (regret 0 at the base scale)
    own = _interp_rows(sc.x, sc.means, sc.usable, sc.div, sc.fit)
    with np.errstate(invalid="ignore"):  # a diverged base LR is infinite regret even where nothing finished
        sc.regret = np.where(sc.at_base == math.inf, math.inf, np.maximum(sc.at_base - own, 0.0))


def _is_flat(sc: _Scale, i: int, std: float, n_seeds: int) -> bool:
    """Whether the LRs within one standard error of the minimum span >= 2 octaves."""
    se = std / math.sqrt(n_seeds) if math.isfinite(std) else 0.0
    m0 = sc.means[0]
    near = np.isfinite(m0) & (m0 <= m0[i] + se + 1e-12)
    return bool(np.ptp(sc.x[near]) >= 2 - 1e-9)


def _scale_row(sc: _Scale, base: _Scale | None, base_fit: np.ndarray, ax: str, min_runs: int, ci: float) -> dict:
    """The transfer row of one scale (``TRANSFER_COLUMNS`` but the series)."""
    s, i = sc.cells, int(sc.idx[0])
    n_finished = int((s["n_seeds"] > 0).sum())
    best_cell = s.iloc[i] if i >= 0 else None
    n_seeds = int(best_cell["n_seeds"]) if best_cell is not None else 0
    std = float(best_cell["std"]) if best_cell is not None else math.nan
    at_base, regret = float(sc.at_base[0]), float(sc.regret[0])
    opt_lr = float(s["lr"].iloc[i]) if i >= 0 else math.nan
    fit_lo, fit_hi = t_interval(float(sc.fit[0]), sc.fit[1:], ci, sc.n_seed)
    reg_lo, reg_hi = _ci(sc.regret[1:], ci, min(sc.n_seed, base.n_seed) if base else sc.n_seed)
    return {"axis": ax, "scale": sc.scale,
            "opt_lr": opt_lr, "opt_log2_lr": _log2(opt_lr),
            "opt_lr_fit": 2.0 ** float(sc.fit[0]), "opt_log2_lr_fit": float(sc.fit[0]),
            "opt_log2_lr_fit_lo": fit_lo, "opt_log2_lr_fit_hi": fit_hi,
            "best_loss": float(sc.best[0]), "best_loss_std": std, "n_seeds": n_seeds,
            "base_scale": base.scale if base else math.nan, "base_lr": 2.0 ** float(base_fit[0]),
            "loss_at_base_lr": at_base if math.isfinite(at_base) else math.nan,
            "regret": regret, "regret_ci_lo": reg_lo, "regret_ci_hi": reg_hi,
            "base_lr_diverged": at_base == math.inf,
            "base_lr_missing": bool(base is not None and math.isnan(at_base)),
            "n_lrs": len(s), "n_finished": n_finished, "n_diverged": int(s["diverged"].sum()),
            "edge": bool(i >= 0 and (i == 0 or i == len(s) - 1)),
            "too_few": n_finished < min_runs, "too_few_seeds": bool(i >= 0 and n_seeds < 2),
            "flat": _is_flat(sc, i, std, n_seeds) if i >= 0 else False}


def _group_intervals(scales: list[_Scale], ci: float, n_boot: int) -> tuple[dict, dict]:
    """The group's numbers with their CIs: the optimum's law (slope = its exponent, intercept),
    the pooled drift it implies, the endpoint drift, and the regret and loss change at the
    largest scale; and the group's replicates (``boot``: row 0 the point value, rows 1.. the
    bootstrap; docs/analysis.md §3)."""
    with_opt = [sc for sc in scales if sc.idx[0] >= 0]
    names = ("drift", "endpoint_drift", "slope", "intercept", "regret", "loss_change")
    boot = {name: np.full(n_boot + 1, math.nan) for name in names}
    u = np.log2(np.array([float(sc.scale) for sc in with_opt]))
    if with_opt:
        base, top = with_opt[0], with_opt[-1]
        boot["slope"], boot["intercept"] = _line_rows(u, np.column_stack([sc.fit for sc in with_opt]))
        # the law's trend over the scale range: every scale's optimum weighs in, not two endpoints
        boot["drift"] = boot["slope"] * (u[-1] - u[0])
        boot["endpoint_drift"] = top.fit - base.fit
        boot["regret"] = top.regret
        with np.errstate(invalid="ignore"):
            boot["loss_change"] = top.at_base - base.at_base
    fewest = min((sc.n_seed for sc in with_opt), default=0)
    fits, n_seeds = [sc.fit for sc in with_opt], [sc.n_seed for sc in with_opt]
    slope_coef, intercept_coef = _law_weights(u)
    # the law's numbers are linear in the per-scale optima, which are resampled independently
    law = {"slope": slope_coef, "intercept": intercept_coef,
           "drift": slope_coef * (u[-1] - u[0] if len(u) else math.nan)}
    group = {}
    for name, samples in boot.items():
        group[name] = float(samples[0])
        if name in law:
            interval = functools.partial(pooled_interval, group[name], law[name], fits, n_seeds, ci)
            group[f"{name}_ci_lo"], group[f"{name}_ci_hi"] = interval()
            continue
        interval = _ci if name == "regret" else functools.partial(t_interval, group[name])
        group[f"{name}_ci_lo"], group[f"{name}_ci_hi"] = interval(samples[1:], ci, fewest)
    scatter = _law_scatter(u, fits, n_seeds)
    group["law_scatter"] = scatter
    boot.update(log2_scales=u, fits=fits, n_seeds_per_scale=n_seeds, n_seeds=fewest, law_scatter=scatter)
    return group, boot


def _law_weights(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The coefficients c_k that make the least-squares slope and intercept of points (u_k, y_k)
    the sums Σ c_k y_k; NaN below 2 points."""
    if len(u) < 2:
        return np.full(len(u), math.nan), np.full(len(u), math.nan)
    du = u - u.mean()
    slope = du / (du @ du)
    return slope, 1 / len(u) - u.mean() * slope


def pooled_interval(point: float, coef: np.ndarray, fits: list[np.ndarray], n_seeds: list[int], level: float,
                    extra_var: float = 0.0, extra_df: float = math.inf) -> tuple[float, float]:
    """CI of a linear combination Σ c_k·F_k of per-scale fitted optima (each resampled over its own
    n_k seeds: independent): point ± t_{(1+level)/2, df}·√(Σ c_k² v_k + extra_var), v_k the
    bootstrap variance of F_k times n_k/(n_k−1), df by Welch–Satterthwaite (each v_k has n_k − 1
    degrees of freedom, ``extra_var`` ``extra_df``). A t with the fewest seeds' n − 1 df, as
    ``t_interval`` uses for one scale, over-covers a sum of several (96% at 90% on synthetic
    designs with 3 seeds and 3–5 scales; docs/analysis.md §3). NaN for a scale with fewer than 2
    seeds or fewer than half its replicates finite, or below 2 scales."""
    coef = np.asarray(coef, dtype=float)
    if len(fits) < 2 or not math.isfinite(point) or not np.all(np.isfinite(coef)):
        return math.nan, math.nan
    parts, dfs = [], []
    for c, f, n in zip(coef, fits, n_seeds):
        replicates = np.asarray(f[1:], dtype=float)
        if 2 * int(np.isfinite(replicates).sum()) < len(replicates):
            return math.nan, math.nan
        v = _boot_variance(replicates, n)
        if not math.isfinite(v):
            return math.nan, math.nan
        parts.append(c * c * v)
        dfs.append(n - 1)
    parts.append(extra_var)
    dfs.append(extra_df)
    parts, dfs = np.array(parts), np.array(dfs, dtype=float)
    var = float(parts.sum())
    if var == 0:
        return point, point
    df = var ** 2 / float(np.sum(np.where(parts > 0, parts ** 2 / dfs, 0.0)))
    from scipy.stats import t
    half = float(t.ppf((1 + level) / 2, df)) * math.sqrt(var)
    return point - half, point + half


def _boot_variance(samples: np.ndarray, n: int) -> float:
    """The variance of a statistic from its replicates, times n/(n−1) (the bootstrap over n seeds
    underestimates it by (n−1)/n, as in ``t_interval``); NaN for n < 2 or < 2 finite replicates."""
    finite = samples[np.isfinite(samples)]
    if n < 2 or len(finite) < 2:
        return math.nan
    return float(finite.var(ddof=1)) * n / (n - 1)


def _law_scatter(u: np.ndarray, fits: list[np.ndarray], n_seeds: list[int]) -> float:
    """τ, octaves: the standard deviation of the per-scale optima about the law beyond their own
    seed noise, by the method of moments: E[Σ r_k²] = Σ (1 − h_k)(v_k + τ²) for the residuals r of
    the point fit, leverages h and per-scale bootstrap variances v (docs/analysis.md §3). 0 when the
    residuals are within the noise; NaN below 3 scales (a line through 2 points has no residual)."""
    k = len(u)
    if k < 3:
        return math.nan
    point = np.array([float(f[0]) for f in fits])
    slope, intercept = _line_rows(u, point[None, :])
    resid = point - (intercept[0] + slope[0] * u)
    du = u - u.mean()
    leverage = 1 / k + du ** 2 / (du @ du)
    noise = np.array([_boot_variance(f[1:], n) for f, n in zip(fits, n_seeds)])
    if not (np.all(np.isfinite(noise)) and np.all(np.isfinite(resid))):
        return math.nan
    return math.sqrt(max((resid @ resid - ((1 - leverage) * noise).sum()) / (k - 2), 0.0))


def _analyse_group(g_cells: pd.DataFrame, g_seeds: pd.DataFrame, ax: str, min_runs: int, ci: float,
                   n_boot: int, rng: np.random.Generator) -> tuple[list[dict], dict, dict]:
    """Transfer rows (scales ascending, without the group labels), the group's numbers with their
    CIs and its replicates."""
    scales = [_bootstrap_scale(scale, s, g_seeds[g_seeds[ax] == scale], n_boot, rng)
              for scale, s in g_cells.groupby(ax, sort=True)]
    base = next((sc for sc in scales if sc.idx[0] >= 0), None)
    base_fit = base.fit if base else np.full(n_boot + 1, math.nan)
    for sc in scales:
        _read_base_lr(sc, base_fit)
    rows = [_scale_row(sc, base, base_fit, ax, min_runs, ci) for sc in scales]
    return (rows, *_group_intervals(scales, ci, n_boot))


def _tidy_keys(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Whole-number float key columns (ints that picked up NaN from another axis' rows) -> Int64."""
    for k in keys:
        col = table[k]
        if pd.api.types.is_float_dtype(col):
            vals = col.dropna()
            if len(vals) and np.all(np.isfinite(vals)) and np.all(vals == np.round(vals)):
                table[k] = col.astype("Int64")
    return table


def scale_flags(row: dict) -> str:
    """The per-scale flags of one transfer row, space-separated (``SCALE_FLAGS``)."""
    return " ".join(name for name, on in SCALE_FLAGS if on(row))


def _flags(g: pd.DataFrame) -> str:
    """Per-scale flags of one group's transfer rows, ``kind@scale``, kind by kind."""
    return " ".join(f"{name}@{s}" for name, on in SCALE_FLAGS for s in g.loc[on(g), "scale"])


def _group_point(g: pd.DataFrame) -> dict:
    """Point values of one group from its transfer rows (scales ascending): ``DRIFT_COLUMNS``."""
    has = g[g["opt_log2_lr"].notna()]
    grid, fit = has["opt_log2_lr"].astype(float), has["opt_log2_lr_fit"].astype(float)
    u = np.log2(has["scale"].astype(float).to_numpy())
    regrets = g["regret"].dropna()
    top = has.iloc[-1] if len(has) else None
    slope = _slope_rows(u, fit.to_numpy()[None, :])[0]
    flags = _flags(g) + (" single-scale" if len(has) < 2 else "")
    return {"base_scale": g["base_scale"].iloc[0], "max_scale": top["scale"] if top is not None else math.nan,
            "base_lr": g["base_lr"].iloc[0],
            "drift": float(slope * (u[-1] - u[0])) if len(fit) > 1 else (0.0 if len(fit) else math.nan),
            "endpoint_drift": float(fit.iloc[-1] - fit.iloc[0]) if len(fit) else math.nan,
            "drift_octaves": float(grid.max() - grid.min()) if len(grid) else math.nan,
            "drift_octaves_fit": float(fit.max() - fit.min()) if len(fit) else math.nan,
            "slope": float(slope),
            "regret": float(top["regret"]) if top is not None else math.nan,
            "max_regret": float(regrets.max()) if len(regrets) else math.nan,
            "n_scales": len(has), "n_seeds": int(has["n_seeds"].min()) if len(has) else 0,
            "flags": flags.strip()}


def seeds_needed(drift_ci_lo: float, drift_ci_hi: float, n_seeds: int, tolerance: float = 1.0) -> float:
    """Seeds per scale a decided verdict needs, assuming the drift CI's half-width shrinks as
    1/√n around a fixed centre: n·(half-width / distance from the centre to the nearest of
    ±tolerance)², rounded up; ``inf`` when the centre sits on a boundary, NaN without a CI.
    A CI that already decides needs ``n_seeds``."""
    if not (math.isfinite(drift_ci_lo) and math.isfinite(drift_ci_hi)) or n_seeds < 1:
        return math.nan
    half, centre = (drift_ci_hi - drift_ci_lo) / 2, (drift_ci_hi + drift_ci_lo) / 2
    distance = min(abs(centre - tolerance), abs(centre + tolerance))
    if distance == 0:
        return math.inf
    # the interval decides when it no longer reaches the boundary: half-width < distance
    return float(max(n_seeds, math.floor(n_seeds * (half / distance) ** 2) + 1))


def to_decide(row: dict, brief: bool = False) -> str:
    """What would decide an ``inconclusive`` verdict-table row, in words ('' for a decided one):
    the blocking flag's remedy first (an LR window past an edge, seeds, a second scale), else the
    seeds per scale the drift CI needs (``seeds_needed``). ``brief``: a few words, for tables."""
    if row.get("verdict") != "inconclusive":
        return ""
    flags = str(row.get("flags") or "").split()
    edges = [f.split("@", 1)[1] for f in flags if f.startswith("edge@")]
    tolerance = float(row.get("tolerance", 1.0))
    if edges:
        return (f"LRs past the edge at {', '.join(edges)}" if brief else
                f"widen the LR grid past the edge at {row['axis']} {', '.join(edges)} and sweep again")
    if "single-scale" in flags:
        return "a 2nd scale" if brief else f"a second {row['axis']} with an optimum"
    if any(f.startswith(("too-few@", "no-finished@")) for f in flags):
        return ("more finished LRs" if brief else
                "more finished LRs at the flagged scales (a narrower window, or a grid that avoids divergence)")
    if any(f.startswith("too-few-seeds@") for f in flags) or "few-seeds" in flags:
        return (f"≥ {CALIBRATED_SEEDS} seeds" if brief else
                f"at least {CALIBRATED_SEEDS} finished seeds at every scale's optimum")
    need = seeds_needed(float(row["drift_ci_lo"]), float(row["drift_ci_hi"]), int(row["n_seeds"]), tolerance)
    if math.isnan(need):
        return "a drift CI" if brief else "a drift CI (more seeds)"
    if math.isinf(need):
        return (f"drift on the ±{tolerance:g} line" if brief else
                f"nothing short of a much finer measurement: the drift sits on the ±{tolerance:g}-octave line "
                f"(a verdict needs it clearly inside or outside)")
    return (f"~{int(need)} seeds/scale" if brief else
            f"about {int(need)} seeds per scale (the CI's half-width shrinking as 1/√seeds), or half-octave LRs "
            f"around each optimum (`sweep --until decided` adds both)")


def verdict(drift_ci_lo: float, drift_ci_hi: float, tolerance: float = 1.0, blocked: bool = False) -> str:
    """``transfers`` / ``drifts`` / ``inconclusive`` from the drift CI (docs/analysis.md);
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

def _group_summary(label: dict, ax: str, g_rows: pd.DataFrame, group: dict, tolerance: float, ci: float,
                   n_boot: int) -> dict:
    """One group's verdict-table row (``VERDICT_COLUMNS`` with its labels)."""
    point = _group_point(g_rows)
    worse = group["loss_change_ci_lo"] > 0
    # with fewer seeds than the drift CI is calibrated for, a verdict would claim a confidence it has not
    few = 2 <= point["n_seeds"] < CALIBRATED_SEEDS
    return {**label, "axis": ax, **point, **group, "drift": point["drift"], "slope": point["slope"],
            "regret": point["regret"], "loss_change_at_base_lr": group["loss_change"],
            "verdict": verdict(group["drift_ci_lo"], group["drift_ci_hi"], tolerance, _blocked(g_rows) or few),
            "flags": (point["flags"] + (" few-seeds" if few else "") + (" worse-with-scale" if worse else "")).strip(),
            "tolerance": float(tolerance), "ci": float(ci), "worse_with_scale": bool(worse), "n_boot": n_boot}


def _analyse_axis(runs: pd.DataFrame, metric: str, ax: str, order: dict,
                  options: dict) -> tuple[list[str], list[dict], list[dict], list[dict]]:
    """One scale axis: its group keys, its transfer rows, its verdict rows and their replicates."""
    r, keys = _run_frame(runs, metric, ax)
    extra = keys[1:-2]
    # one id per group, so cells and per-seed rows can be matched even with NaN keys
    r["_gid"] = r.groupby(keys[:-2], dropna=False, sort=False).ngroup()
    c = _sort_cells(_cell_stats(r, ["_gid", *keys]), keys, order)
    per_seed = r.groupby(["_gid", ax, "lr", "_seed"], dropna=False, sort=False).agg(
        value=("_value", "mean"), n_fin=("_value", "count"), n_div=("_div", "sum")).reset_index()
    seeds_by_gid = dict(iter(per_seed.groupby("_gid", sort=False)))
    rows, summaries, boots = [], [], []
    for gid in dict.fromkeys(c["_gid"]):
        g = c[c["_gid"] == gid]
        label = {"series": g["series"].iloc[0], **{k: g[k].iloc[0] for k in extra}}
        rng = group_rng(options["seed"], (ax, *label.values()))
        scale_rows, group, boot = _analyse_group(g, seeds_by_gid[gid], ax, options["min_runs"], options["ci"],
                                                 options["n_boot"], rng)
        rows += [{**label, **row} for row in scale_rows]
        summaries.append(_group_summary(label, ax, pd.DataFrame(scale_rows), group, options["tolerance"],
                                        options["ci"], options["n_boot"]))
        boots.append(boot)
    return extra, rows, summaries, boots


def analyse(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, min_runs: int = 3,
            ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000,
            seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(transfer_table, verdict_table)`` from one bootstrap (see those and docs/analysis.md)."""
    return analyse_with_replicates(runs, metric, axis, min_runs, ci, tolerance, n_boot, seed)[:2]


def analyse_with_replicates(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None,
                            min_runs: int = 3, ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000,
                            seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """``analyse``'s two tables and, for each verdict-table row (same order), its group's bootstrap
    replicates: a dict of arrays of 1 + ``n_boot`` rows (row 0 the point value) for ``drift``
    (pooled), ``endpoint_drift``, ``slope``, ``intercept``, ``regret`` and ``loss_change``, with
    ``log2_scales`` (the scales with an optimum), ``n_seeds`` (fewest seeds over them) and
    ``law_scatter``. Seeds are resampled as units within each scale (docs/analysis.md §3)."""
    check_options(min_runs, ci, tolerance, n_boot, seed)
    runs = _prepare(runs)
    metric_column(metric, runs)
    order = _series_order(runs)
    options = {"min_runs": min_runs, "ci": ci, "tolerance": tolerance, "n_boot": n_boot, "seed": seed}
    rows, summaries, boots, all_keys = [], [], [], []
    for ax in resolve_axes(runs, axis):
        extra, axis_rows, axis_summaries, axis_boots = _analyse_axis(runs, metric, ax, order, options)
        all_keys += [k for k in extra if k not in all_keys]
        rows += axis_rows
        summaries += axis_summaries
        boots += axis_boots
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
    return table, summary, boots


def transfer_table(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, min_runs: int = 3,
                   ci: float = 0.9, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (series, group keys, axis, scale): the optimum with its bootstrap CI and the
    regret of the base LR.

    Columns: ``series``, the group keys (e.g. ``depth`` when axis is width in a width x depth
    grid), then ``TRANSFER_COLUMNS[1:]`` (docs/analysis.md). Rows are in order of series'
    first appearance, then group, then ascending scale.
    """
    return analyse(runs, metric, axis, min_runs, ci, 1.0, n_boot, seed)[0]


def verdict_table(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, min_runs: int = 3,
                  ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (series, group keys, axis): ``series``, the group keys, then
    ``VERDICT_COLUMNS[1:]``: base and largest scale, ``n_seeds`` (fewest finished seeds at an
    optimum over the scales), the fitted base LR, the signed drift, slope and regret at
    ``max_scale`` each with its CI (``<name>_ci_lo``/``_hi``), ``max_regret``, ``verdict``,
    ``flags``, the ``tolerance`` and ``ci`` level used (docs/analysis.md)."""
    return analyse(runs, metric, axis, min_runs, ci, tolerance, n_boot, seed)[1]


def group_columns(table: pd.DataFrame) -> list[str]:
    """The group-key columns of a transfer, drift, verdict or prediction table: those not in its
    fixed schema."""
    fixed = {*TRANSFER_COLUMNS, *DRIFT_COLUMNS, *VERDICT_COLUMNS, *PREDICTION_COLUMNS}
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


# ----------------------------------------------------------------------------- the optimum's law, extrapolated

def prediction_targets(runs: pd.DataFrame, target: dict) -> list[tuple[str, float]]:
    """``{axis: value or [values]}`` checked against the runs as (axis, value) pairs: the axis must
    be a scale axis the runs vary, the value a positive finite number (UserError naming
    ``--predict`` otherwise)."""
    runs = _prepare(runs)
    axes = [a for a in axis_choices(runs) if _nunique(runs[a].dropna()) > 1]  # a law needs two scales
    pairs = []
    for key, values in dict(target).items():
        for value in values if isinstance(values, (list, tuple)) else [values]:
            shown = f"{value:g}" if isinstance(value, numbers.Real) and not isinstance(value, bool) else repr(value)
            if key not in axes:
                raise UserError(f"--predict {key}={shown}: {key!r} is not a scale axis the runs vary; allowed: "
                                f"{', '.join(axes) if axes else 'none (no scale-like key takes two values)'}")
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
                raise UserError(f"--predict {key}={shown}: the {key} must be a positive number (the scale to "
                                f"predict the optimal LR at), e.g. {key}=4096")
            pairs.append((key, float(value)))
    return pairs


def predict_law(boot: dict, scale: float, ci: float) -> dict:
    """The optimum's law of one group (its replicates, ``analyse_with_replicates``) at ``scale``:
    the predicted log2 optimal LR, its prediction interval and how far beyond the swept scales it
    reaches (docs/analysis.md §3)."""
    u, fits, n_seeds = boot["log2_scales"], boot["fits"], boot["n_seeds_per_scale"]
    at = math.log2(scale)
    slope, intercept = _law_weights(u)
    coef = intercept + at * slope        # the prediction as Σ coef_k · (scale k's fitted optimum)
    point = float(boot["intercept"][0] + at * boot["slope"][0])
    tau = boot["law_scatter"]
    # beyond the seed noise of the line: the target's own deviation from the law and the deviations
    # the fitted line absorbed (leverage Σ coef²), both of variance τ², estimated with k − 2 df
    extra = tau ** 2 * (1 + float(coef @ coef)) if math.isfinite(tau) else 0.0
    lo, hi = pooled_interval(point, coef, fits, n_seeds, ci, extra, max(len(u) - 2, 1))
    beyond = max(at - u.max(), u.min() - at, 0.0) if len(u) else math.nan
    return {"pred_log2_lr": point, "pred_log2_lr_lo": lo, "pred_log2_lr_hi": hi, "octaves_beyond": float(beyond)}


def predict(runs: pd.DataFrame, target: dict, metric: str = "train_loss", min_runs: int = 3, ci: float = 0.9,
            n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The optimal LR the optimum's law (log2 η* = intercept + slope·log2 scale, fitted to every
    scale's fitted optimum) predicts at each ``target`` scale, e.g. ``{"width": 4096}`` or
    ``{"width": [2048, 4096]}``: one row per (series, group keys, axis, target), columns
    ``PREDICTION_COLUMNS`` with the group keys after ``series``: ``pred_lr`` (2^``pred_log2_lr``)
    with its prediction interval at level ``ci`` (``pred_log2_lr_lo``/``_hi``, ``pred_lr_lo``/
    ``_hi``), ``octaves_beyond`` (octaves of scale outside the swept range, 0 inside), the law's
    ``slope``/``intercept``/``law_scatter``, and the group's verdict-table ``flags``. NaN where a
    group has fewer than 2 scales with an optimum (docs/analysis.md §3)."""
    pairs = prediction_targets(runs, target)
    rows = []
    for ax in dict.fromkeys(a for a, _ in pairs):
        _, summary, boots = analyse_with_replicates(runs, metric, ax, min_runs, ci, 1.0, n_boot, seed)
        keys = group_columns(summary)
        for row, boot in zip(summary.to_dict("records"), boots):
            for value in (v for a, v in pairs if a == ax):
                law = predict_law(boot, value, ci)
                rows.append({"series": row["series"], **{k: row[k] for k in keys}, "axis": ax,
                             "target": int(value) if float(value).is_integer() else value, **law,
                             "pred_lr": 2.0 ** law["pred_log2_lr"], "pred_lr_lo": 2.0 ** law["pred_log2_lr_lo"],
                             "pred_lr_hi": 2.0 ** law["pred_log2_lr_hi"], "slope": row["slope"],
                             "intercept": row["intercept"], "law_scatter": row["law_scatter"],
                             "n_scales": row["n_scales"], "n_seeds": row["n_seeds"], "ci": float(ci),
                             "flags": row["flags"]})
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in PREDICTION_COLUMNS))
    return _tidy_keys(pd.DataFrame(rows, columns=["series", *keys, *PREDICTION_COLUMNS[1:]]), keys)
