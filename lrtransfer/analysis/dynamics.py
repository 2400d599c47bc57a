"""Training dynamics from the stored tables: the regimes of scale-invariant training on the
sphere, the lr·wd trajectory invariance of decoupled weight decay, and the conditioning of the
trained matrices. Pure pandas/numpy (no torch): every function takes the tables
``load_results`` and ``load_diagnostics`` return. Definitions: docs/analysis.md §8.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import UserError
from ..run.provenance import SCALE_AXES
from .common import check_ci, check_n_boot, check_real, group_rng, missing, resampled_means, seed_resamples
from .transfer import METRIC_SPECS, t_interval

REGIMES = ("converge", "chaotic", "diverge")     # in the order they follow along the ELR
UNSETTLED = "unsettled"                          # a run whose late trajectory fits none of them yet
LABELS = (*REGIMES, UNSETTLED)
REGIME_COLUMNS = ("run_id", "regime", "late_loss", "late_slope", "slope_p", "below_chance_p", "late_grad",
                  "late_angle", "motion_slope_p", "moving_p", "chance_loss", "n_points", "n_blocks")
X_CHOICES = ("elr", "lr", "lr_applied")
# the boundaries between consecutive regimes, named by the regime they lead into
BOUNDARIES = {"to_chaotic": ("converge", "chaotic"), "to_diverge": ("chaotic", "diverge")}
# the metrics with a training curve (lr·wd's early loss and the conditioning's best LR need one)
LRWD_METRICS = {name: METRIC_SPECS[name].column for name in ("train_loss", "test_loss")}


@dataclass(frozen=True)
class RegimeOptions:
    """The regime rule's settings (docs/analysis.md §8), checked when made: a UserError names
    the option as the CLI spells it."""
    window: float = 0.5     # fraction of the logged points, at the end, that are "late"
    alpha: float = 0.01     # significance level of every test of the rule
    blocks: int = 10        # the late window is cut into this many blocks of consecutive points

    def __post_init__(self):
        check_real("--regime-window", self.window, lambda v: 0 < v <= 1,
                   "a fraction of the logged points in (0, 1], e.g. 0.5")
        check_real("--regime-alpha", self.alpha, lambda v: 0 < v < 0.5,
                   "a significance level in (0, 0.5), e.g. 0.01")
        if isinstance(self.blocks, bool) or not isinstance(self.blocks, (int, np.integer)) or self.blocks < 4:
            raise UserError(f"--regime-blocks {self.blocks!r}: allowed: an integer >= 4 (a trend over block "
                            f"means needs at least 2 degrees of freedom), e.g. 10")


# ----------------------------------------------------------------------------- tables

def with_dynamics_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the columns older result directories lack, at their 'not used' values:
    constraint "none", elr 0, lr_applied = lr, sphere_radius and chance_loss NaN."""
    runs = runs.copy()
    defaults = {"constraint": "none", "elr": 0.0, "sphere_radius": math.nan, "chance_loss": math.nan}
    for col, value in defaults.items():
        if col not in runs:
            runs[col] = value
    if "lr_applied" not in runs:
        runs["lr_applied"] = runs["lr"] if "lr" in runs else math.nan
    if "series" not in runs:
        runs["series"] = "default"
    runs["constraint"] = runs["constraint"].fillna("none").astype(str)
    for col in ("elr", "lr_applied", "sphere_radius", "chance_loss"):
        runs[col] = pd.to_numeric(runs[col], errors="coerce").astype(float)
    runs["elr"] = runs["elr"].fillna(0.0)
    return runs


def effective_lr(runs: pd.DataFrame) -> pd.Series:
    """Per run the effective LR on the sphere: ``elr`` where it was set, else lr_applied /
    sphere_radius² for sphere-constrained runs (the ELR the set LR amounts to), else NaN."""
    runs = with_dynamics_columns(runs)
    derived = runs["lr_applied"] / runs["sphere_radius"] ** 2
    derived = derived.where((runs["constraint"] == "sphere") & (runs["sphere_radius"] > 0))
    return runs["elr"].where(runs["elr"] > 0, derived)


def has_regimes(runs: pd.DataFrame) -> bool:
    """Whether a runs table is an ELR / sphere experiment (the report then has a Regimes section)."""
    runs = with_dynamics_columns(runs)
    return bool((runs["elr"] > 0).any() or (runs["constraint"] == "sphere").any())


def has_lrwd(runs: pd.DataFrame) -> bool:
    """Whether weight_decay takes at least two values (the report then has an lr·wd section)."""
    return "weight_decay" in runs and pd.to_numeric(runs["weight_decay"], errors="coerce").nunique() >= 2


def scale_keys(runs: pd.DataFrame) -> list[str]:
    """The scale-like keys (``SCALE_AXES``: width, depth, batch_size, steps, ...) that vary within
    some series: each value is its own group."""
    return [a for a in SCALE_AXES if a in runs and runs.groupby("series")[a].nunique().max() > 1]


# A difference this small relative to the values compared is float rounding, not a signal.
_ROUNDING = 1e-9


def _block_means(x: np.ndarray, y: np.ndarray, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) averaged over ``blocks`` runs of consecutive points (fewer when there are fewer
    points). Why: neighbouring logged losses are correlated (each is a mean over log_every
    steps of a wandering trajectory); means over longer blocks are close to independent, so
    the tests below see the right amount of noise."""
    parts = np.array_split(np.arange(len(y)), min(blocks, len(y)))
    return np.array([x[p].mean() for p in parts]), np.array([y[p].mean() for p in parts])


def _t_sf(t: float, df: int) -> float:
    from scipy.stats import t as t_dist
    return float(t_dist.sf(t, df))


def _trend(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of y on x and its two-sided p (t test, len − 2 degrees of freedom);
    (NaN, NaN) below 3 points. Noise-free data: p 0 for a slope beyond rounding, else 1."""
    if len(y) < 3 or np.ptp(x) == 0:
        return math.nan, math.nan
    scale = max(float(np.abs(y).max()), 1e-300)
    if np.ptp(y) <= _ROUNDING * scale:
        return 0.0, 1.0
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc ** 2).sum())
    resid = y - y.mean() - slope * xc
    se = math.sqrt(float((resid ** 2).sum()) / (len(y) - 2) / float((xc ** 2).sum()))
    if se <= _ROUNDING * scale / max(float(np.ptp(x)), 1e-300):
        return slope, (0.0 if abs(slope) * np.ptp(x) > _ROUNDING * scale else 1.0)
    return slope, 2.0 * _t_sf(abs(slope) / se, len(y) - 2)


def _below(y: np.ndarray, ref: float) -> float:
    """One-sided p that the mean of ``y`` lies below ``ref`` (t test, len − 1 degrees of
    freedom); noise-free data: 0 when it does beyond rounding, else 1. NaN below 2 values."""
    if len(y) < 2 or not math.isfinite(ref):
        return math.nan
    gap, scale = ref - float(y.mean()), max(abs(ref), float(np.abs(y).max()), 1e-300)
    se = float(y.std(ddof=1)) / math.sqrt(len(y))
    if se <= _ROUNDING * scale:
        return 0.0 if gap > _ROUNDING * scale else 1.0
    return _t_sf(gap / se, len(y) - 1)


def _late_evidence(curve: pd.DataFrame | None, motion: pd.DataFrame | None, options: RegimeOptions,
                   final_loss, chance: float) -> dict:
    """One run's late window: the loss's trend in ln–ln and its gap to chance, the motion's
    (effective gradient norm, else angle per step) trend and its gap to rest (docs/analysis.md §8)."""
    late = dict.fromkeys(REGIME_COLUMNS[2:-2], math.nan) | {"n_points": 0, "n_blocks": 0}
    del late["chance_loss"]
    if curve is not None:
        curve = curve[np.isfinite(curve["train_loss"].to_numpy(float))].sort_values("step")
        late["n_points"] = len(curve)
    if not late["n_points"]:
        return {**late, "late_loss": float(final_loss)}
    tail = curve.iloc[-max(1, math.ceil(options.window * late["n_points"])):]
    steps, losses = tail["step"].to_numpy(float), tail["train_loss"].to_numpy(float)
    late["late_loss"] = float(losses.mean())
    ok = (steps > 0) & (losses > 0)
    bx, by = _block_means(np.log(steps[ok]), np.log(losses[ok]), options.blocks) if ok.any() else ([], [])
    late["n_blocks"] = len(by)
    if len(by):
        late["late_slope"], late["slope_p"] = _trend(np.asarray(bx), np.asarray(by))
        late["below_chance_p"] = _below(_block_means(steps, losses, options.blocks)[1], chance)
    if motion is not None and len(motion):
        m = motion[motion["step"] >= steps[0]].sort_values("step")
        for col, name in (("eff_grad_norm", "late_grad"), ("angle", "late_angle")):
            v = m[col].to_numpy(float) if col in m else np.array([])
            late[name] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
        # the effective gradient norm where recorded (the paper's quantity), else the angle
        # per step (on the sphere angle ≈ elr × effective gradient norm)
        col = "eff_grad_norm" if math.isfinite(late["late_grad"]) else "angle"
        if col in m:
            m = m[np.isfinite(m[col].to_numpy(float)) & (m["step"] > 0)]
            if len(m) >= 3:
                mx, my = _block_means(np.log(m["step"].to_numpy(float)), m[col].to_numpy(float), options.blocks)
                late["motion_slope_p"] = _trend(mx, my)[1]
                late["moving_p"] = _below(-my, 0.0)   # mean > 0 ⇔ −mean < 0
    return late


def classify(status: str, late: dict, options: RegimeOptions) -> str:
    """The regime of one run from its status and late evidence, in the rule's order; "at chance"
    (a stationary loss not below chance) is returned as ``"chance"``: whether that is diverge
    depends on the run's ELR against its seed's other runs (``regimes``)."""
    if status == "diverged":
        return "diverge"
    alpha, p = options.alpha, late["slope_p"]
    if not math.isfinite(p):
        return UNSETTLED                      # too few points for a trend
    if p < alpha and late["late_slope"] < 0:
        return "converge"
    # not below chance and not falling (flat, or wandering up as a random walk on the sphere
    # does): no learning left; NaN (no chance loss recorded) skips the test
    if math.isfinite(late["below_chance_p"]) and late["below_chance_p"] >= alpha:
        return "chance"
    if p < alpha:
        return UNSETTLED                       # rising below chance: not settled
    moving, motion_p = late["moving_p"], late["motion_slope_p"]
    if not math.isfinite(moving):
        return "chaotic"                       # no motion recorded: the stationary loss alone
    if math.isfinite(motion_p) and motion_p < alpha:
        return UNSETTLED                       # the loss is flat but the motion still drifts
    return "chaotic" if moving < alpha else "converge"   # at rest on a plateau: at a minimum


def _x_or_lr(runs: pd.DataFrame) -> pd.Series:
    """The ELR where runs have one, else the LR they trained at."""
    x = effective_lr(runs)
    return x.where(x > 0, runs["lr_applied"].where(runs["lr_applied"] > 0, pd.to_numeric(
        runs.get("lr", pd.Series(math.nan, index=runs.index)), errors="coerce")))


def regimes(runs: pd.DataFrame, curves: pd.DataFrame, diagnostics: pd.DataFrame | None = None,
            options: RegimeOptions = RegimeOptions()) -> pd.DataFrame:
    """One row per run that finished (done or diverged; failed runs have no regime), in the
    runs' order, with ``REGIME_COLUMNS``: the regime (``LABELS``) and its evidence.

    Over the last ``options.window`` of the logged points, cut into ``options.blocks`` blocks
    of consecutive points: ``late_loss`` the mean train loss (the final train loss when none
    was logged), ``late_slope`` / ``slope_p`` the least-squares slope of the blocks' mean
    ln(loss) on their mean ln(step) and its two-sided t-test p, ``below_chance_p`` the one-sided
    p that the loss lies below ``chance_loss`` (ln classes; NaN in old results), ``late_grad`` /
    ``late_angle`` the mean effective gradient norm / angle per step of diagnostics atom −1,
    ``motion_slope_p`` the p of the trend of the first of those recorded, ``moving_p`` the
    one-sided p that it is above 0. The rule: docs/analysis.md §8.
    """
    if runs is None or runs.empty:
        raise UserError("no runs to analyse: the runs table is empty")
    runs = with_dynamics_columns(runs)
    by_run = dict(iter(curves.groupby("run_id", sort=False))) if curves is not None and len(curves) else {}
    motion = {}
    if diagnostics is not None and len(diagnostics) and "angle" in diagnostics:
        motion = dict(iter(diagnostics[diagnostics["atom"] == -1].groupby("run_id", sort=False)))
    rows = []
    for run in runs.to_dict("records"):
        status = str(run.get("status"))
        if status not in ("done", "diverged"):
            continue
        chance = float(run["chance_loss"])
        late = _late_evidence(by_run.get(run["run_id"]), motion.get(run["run_id"]), options,
                              run.get("final_train_loss", math.nan), chance)
        rows.append({"run_id": run["run_id"], "regime": classify(status, late, options), **late,
                     "chance_loss": chance})
    table = pd.DataFrame(rows, columns=list(REGIME_COLUMNS))
    return _resolve_by_seed(runs, table)


def _resolve_by_seed(runs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """What a run's label needs from the other runs of its seed (series, scale, seed):

    * a stationary loss is chaotic only above the converged level, the lowest late loss of the
      seed's converge runs; at or below it the run has converged (a run that reached the floor
      and then spiked once can show no fall over its window);
    * a stationary loss at chance is ``diverge`` when the run's ELR lies above every converge
      and chaotic run of the seed (and the seed has one), else ``unsettled``: a small-ELR run
      still at chance has not started to learn, which says nothing about divergence."""
    keys = ["series", *scale_keys(runs), "seed"]
    r = runs.assign(_x=_x_or_lr(runs), seed=runs["seed"] if "seed" in runs else 0)[[*keys, "run_id", "_x"]]
    r = r.merge(table[["run_id", "regime", "late_loss"]], on="run_id")
    per_seed = lambda values: pd.Series(np.asarray(r.set_index(keys).index.map(
        lambda k: values.get(k, math.nan)), float), index=r["run_id"])
    floor = per_seed(r[r["regime"] == "converge"].groupby(keys, dropna=False)["late_loss"].min())
    table = table.copy()
    at_floor = (table["regime"] == "chaotic") & (table["late_loss"] <= table["run_id"].map(floor))
    table.loc[at_floor, "regime"] = "converge"
    pending = table["regime"] == "chance"
    if pending.any():
        learned = per_seed(r[r["regime"].isin(["converge", "chaotic"])].groupby(keys, dropna=False)["_x"].max())
        above = pd.Series(r["_x"].to_numpy(float), index=r["run_id"]) > learned
        table.loc[pending, "regime"] = np.where(table.loc[pending, "run_id"].map(above).fillna(False).to_numpy(bool),
                                                "diverge", UNSETTLED)
    return table


def x_values(runs: pd.DataFrame, x: str) -> pd.Series:
    if x not in X_CHOICES:
        raise UserError(f"x {x!r}: allowed: {', '.join(X_CHOICES)}")
    runs = with_dynamics_columns(runs)
    values = effective_lr(runs) if x == "elr" else pd.to_numeric(runs[x], errors="coerce").astype(float)
    if not (values > 0).any():
        hint = " (no run sets elr > 0 or is sphere-constrained with a recorded sphere_radius; try x='lr')" \
            if x == "elr" else ""
        raise UserError(f"x {x!r}: no run has a positive {x}{hint}")
    return values


def default_x(runs: pd.DataFrame) -> str:
    """The x axis of the regimes: ``elr`` when some run has an effective LR, else ``lr``."""
    return "elr" if (effective_lr(runs) > 0).any() else "lr"


def seed_boundaries(runs: pd.DataFrame, regime_table: pd.DataFrame, x: str = "elr") -> pd.DataFrame:
    """One row per (series, varying width/depth, seed): ``to_chaotic`` / ``to_diverge``, each the
    geometric midpoint between the largest x of the lower regime and the smallest x of the upper
    one (NaN when either regime is absent), ``monotone`` (the regimes never step back along x),
    ``n_points`` (runs with a regime of ``REGIMES``), ``n_unsettled`` and ``unsettled`` (the x
    of the unsettled runs, left out of everything else), ``absent`` (the regimes no run of the
    seed met) and ``steps_back`` (per step back along x: (regime, x, the regime below it, its x))."""
    runs = with_dynamics_columns(runs)
    r = runs.assign(_x=x_values(runs, x)).merge(regime_table[["run_id", "regime"]], on="run_id")
    r = r[r["_x"] > 0]
    if "seed" not in r:
        r["seed"] = 0
    keys = ["series", *scale_keys(runs)]
    code = {name: i for i, name in enumerate(REGIMES)}
    rows = []
    for gkey, all_runs in r.groupby([*keys, "seed"], sort=False, dropna=False):
        loose = all_runs[all_runs["regime"] == UNSETTLED]
        g = all_runs[all_runs["regime"].isin(REGIMES)]
        g = g.assign(_code=g["regime"].map(code)).sort_values(["_x", "_code"], kind="stable")
        codes, xs, names = g["_code"].to_numpy(), g["_x"].to_numpy(float), g["regime"].tolist()
        row = dict(zip([*keys, "seed"], gkey))
        for name, (lower, upper) in BOUNDARIES.items():
            lo, hi = g.loc[g["regime"] == lower, "_x"], g.loc[g["regime"] == upper, "_x"]
            row[name] = math.sqrt(lo.max() * hi.min()) if len(lo) and len(hi) else math.nan
        row["monotone"] = bool((np.diff(codes) >= 0).all())
        row["n_points"] = len(g)
        row["n_unsettled"] = len(loose)
        row["unsettled"] = tuple(sorted(float(v) for v in loose["_x"]))
        row["absent"] = tuple(name for name in REGIMES if name not in set(names))
        row["steps_back"] = tuple((names[i], float(xs[i]), names[i - 1], float(xs[i - 1]))
                                  for i in range(1, len(codes)) if codes[i] < codes[i - 1])
        rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, "seed", *BOUNDARIES, "monotone", "n_points", "n_unsettled",
                                       "unsettled", "absent", "steps_back"])


def regime_boundaries(runs: pd.DataFrame, regime_table: pd.DataFrame, x: str = "elr") -> pd.DataFrame:
    """One row per series (and width/depth where they vary) summarising ``seed_boundaries``
    across seeds. Per boundary B in ``to_chaotic``, ``to_diverge``: ``B`` = 2^(mean log2 of the
    seeds' boundaries), ``B_log2`` that mean, ``B_log2_min`` / ``_max`` / ``_std`` (sample std;
    octaves) and ``B_n`` the seeds with that boundary. Also ``x``, ``n_seeds``,
    ``n_out_of_order`` (seeds whose regimes step back along x), ``monotone`` (none do) and
    ``n_unsettled`` (runs of all seeds left unsettled)."""
    per_seed = seed_boundaries(runs, regime_table, x)
    keys = [k for k in per_seed.columns if k in ("series", *SCALE_AXES)]
    rows = []
    for gkey, g in per_seed.groupby(keys, sort=False, dropna=False):
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        row = {**dict(zip(keys, gkey)), "x": x, "n_seeds": len(g)}
        for name in BOUNDARIES:
            logs = np.log2(g[name].to_numpy(float))
            logs = logs[np.isfinite(logs)]
            mean = float(logs.mean()) if len(logs) else math.nan
            row.update({name: 2.0 ** mean, f"{name}_log2": mean,
                        f"{name}_log2_min": float(logs.min()) if len(logs) else math.nan,
                        f"{name}_log2_max": float(logs.max()) if len(logs) else math.nan,
                        f"{name}_log2_std": float(logs.std(ddof=1)) if len(logs) > 1 else math.nan,
                        f"{name}_n": int(len(logs))})
        row["n_out_of_order"] = int((~g["monotone"]).sum())
        row["monotone"] = row["n_out_of_order"] == 0
        row["n_unsettled"] = int(g["n_unsettled"].sum())
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- lr·wd

def _lrwd_seed_frame(runs: pd.DataFrame, curves: pd.DataFrame, early: float, metric: str) -> tuple[pd.DataFrame, dict]:
    """Per (group, lr, wd, seed): late and early loss of the finished runs; and exclusion counts."""
    if metric not in LRWD_METRICS:
        raise UserError(f"--metric {metric!r}: allowed: {', '.join(LRWD_METRICS)}")
    check_real("early", early, lambda v: 0 < v <= 1, "a fraction of the run's steps in (0, 1], e.g. 0.1")
    if runs is None or runs.empty:
        raise UserError("no runs to analyse: the runs table is empty")
    col = LRWD_METRICS[metric]
    missing = [c for c in ("lr", "weight_decay", "status", col) if c not in runs]
    if missing:
        raise UserError(f"lr·wd invariance: the runs table lacks column(s) {', '.join(missing)}")
    runs = with_dynamics_columns(runs)
    if "seed" not in runs:
        runs["seed"] = 0
    wd = pd.to_numeric(runs["weight_decay"], errors="coerce").astype(float)
    late = pd.to_numeric(runs[col], errors="coerce").astype(float)
    status = runs["status"].astype(str)
    finished = (status == "done") & np.isfinite(late)
    counts = {"n_runs": int(len(runs)), "n_diverged": int((status == "diverged").sum()),
              "n_failed": int((~status.isin(["done", "diverged"])).sum()),
              "n_zero_wd": int((finished & ~(wd > 0)).sum())}
    keep = finished & (wd > 0)  # lr·wd = 0 has no place on the log2 product axis
    r = runs[keep].assign(_wd=wd[keep], _late=late[keep])
    # early: mean train loss over the points logged by early × steps (at least the first one)
    early_loss = {}
    if curves is not None and len(curves):
        c = curves[curves["run_id"].isin(set(r["run_id"]))].dropna(subset=["train_loss"]).sort_values("step")
        total = r.set_index("run_id")["steps"] if "steps" in r else c.groupby("run_id")["step"].max()
        for rid, g in c.groupby("run_id", sort=False):
            cut = early * float(total.get(rid, g["step"].max()))
            within = g[g["step"] <= cut]
            early_loss[rid] = float((within if len(within) else g.iloc[:1])["train_loss"].mean())
    r["_early"] = r["run_id"].map(early_loss).astype(float)
    keys = ["series", *scale_keys(runs)]
    per_seed = r.groupby([*keys, "lr", "_wd", "seed"], sort=False, dropna=False).agg(
        late=("_late", "mean"), early=("_early", "mean")).reset_index().rename(columns={"_wd": "weight_decay"})
    per_seed["log2_lr"] = np.log2(per_seed["lr"].astype(float))
    per_seed["log2_product"] = np.round(np.log2(per_seed["lr"].astype(float) * per_seed["weight_decay"]), 6)
    return per_seed, counts


def lrwd_cells(runs: pd.DataFrame, curves: pd.DataFrame, *, early: float = 0.1,
               metric: str = "train_loss") -> pd.DataFrame:
    """Per (series, varying width/depth, lr, weight_decay) cell of finished runs with wd > 0:
    ``late`` / ``early`` (seed means), ``n_seeds``, ``log2_lr`` and ``log2_product`` (log2 lr·wd,
    rounded to 1e-6 so that an octave grid's equal products match)."""
    per_seed, _ = _lrwd_seed_frame(runs, curves, early, metric)
    keys = [k for k in per_seed.columns if k in ("series", *SCALE_AXES)]
    return per_seed.groupby([*keys, "lr", "weight_decay", "log2_lr", "log2_product"], sort=False).agg(
        late=("late", "mean"), early=("early", "mean"), n_seeds=("seed", "nunique")).reset_index()


# The 1-D model of the lr·wd statistic (docs/analysis.md §8): loss ≈ f(u), u = log2 lr + c·log2 wd,
# f a polynomial of degree LRWD_DEGREE in u fitted by least squares to the seed-mean cells, and c
# the value in LRWD_C_RANGE with the smallest residual sum of squares.
LRWD_DEGREE = 3
LRWD_C_RANGE = (-1.0, 3.0)
LRWD_ALPHA = 0.05               # the lack-of-fit test's level
_C_GRID = np.linspace(*LRWD_C_RANGE, 201)  # step 0.02; the minimum is refined between grid points


def _basis(u: np.ndarray, degree: int) -> np.ndarray:
    """Orthonormal columns spanning the polynomials of ``degree`` in ``u`` at the cells (fewer
    columns where u takes ≤ ``degree`` distinct values: no fit is better than interpolation)."""
    spread = u.std()
    z = (u - u.mean()) / (spread if spread > 0 else 1.0)
    left, s, _ = np.linalg.svd(np.vander(z, degree + 1, increasing=True), full_matrices=False)
    return left[:, s > s[0] * 1e-9]


def _residuals(y: np.ndarray, u: np.ndarray, degree: int) -> tuple[np.ndarray, int]:
    """The rows of ``y`` (replicates × cells) minus their least-squares polynomial in ``u``; and
    the number of fitted coefficients."""
    q = _basis(u, degree)
    return y - (y @ q) @ q.T, q.shape[1]


def _rss(y: np.ndarray, x: np.ndarray, w: np.ndarray, c: float, degree: int) -> np.ndarray:
    return (_residuals(y, x + c * w, degree)[0] ** 2).sum(axis=-1)


def _fit_c(y: np.ndarray, x: np.ndarray, w: np.ndarray, degree: int) -> np.ndarray:
    """Per row of ``y`` (all cells finite): the c in LRWD_C_RANGE minimising the residual sum of
    squares of the 1-D fit, from a grid of step 0.02 and the vertex of the parabola through the
    best grid point and its neighbours (a bound when the best point is one)."""
    rss = np.stack([_rss(y, x, w, c, degree) for c in _C_GRID], axis=1)
    best = np.argmin(rss, axis=1)
    c = _C_GRID[best].copy()
    inner = np.flatnonzero((best > 0) & (best < len(_C_GRID) - 1))
    r0, r1, r2 = (rss[inner, best[inner] + k] for k in (-1, 0, 1))
    h = _C_GRID[1] - _C_GRID[0]
    curvature = r0 - 2 * r1 + r2
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where(curvature > 0, 0.5 * h * (r0 - r2) / curvature, 0.0)
    c[inner] += np.clip(shift, -h, h)
    return c


def _fit_rows(y: np.ndarray, x: np.ndarray, w: np.ndarray, degree: int) -> np.ndarray:
    """``_fit_c`` of every row of ``y``, each on its finite cells (a replicate that drew no seed
    of a cell lacks it); NaN where fewer than degree + 3 cells are left or lr or wd stops varying."""
    out = np.full(len(y), math.nan)
    finite = np.isfinite(y)
    patterns, inverse = np.unique(finite, axis=0, return_inverse=True)
    for k, keep in enumerate(patterns):
        rows = np.flatnonzero(np.ravel(inverse) == k)
        if keep.sum() >= degree + 3 and np.ptp(x[keep]) > 0 and np.ptp(w[keep]) > 0:
            out[rows] = _fit_c(y[np.ix_(rows, keep)], x[keep], w[keep], degree)
    return out


def _polish(c: float, y: np.ndarray, x: np.ndarray, w: np.ndarray, degree: int) -> float:
    """The point estimate to full precision: bounded Brent within a grid step of ``c``."""
    if not math.isfinite(c):
        return c
    from scipy.optimize import minimize_scalar
    keep = np.isfinite(y)
    h = _C_GRID[1] - _C_GRID[0]
    lo, hi = max(LRWD_C_RANGE[0], c - h), min(LRWD_C_RANGE[1], c + h)
    res = minimize_scalar(lambda v: float(_rss(y[keep], x[keep], w[keep], v, degree)), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-6})
    return float(res.x) if res.fun <= _rss(y[keep], x[keep], w[keep], c, degree) else c


def _lack_of_fit(values: np.ndarray, c: float, x: np.ndarray, w: np.ndarray, degree: int) -> dict:
    """For (seeds × cells) ``values`` (NaN: no finished seed) and the 1-D fit at ``c``: the
    fraction of the cell means' variance it leaves unexplained; the lack-of-fit F test —
    Σ n_j (mean_j − f(u_j))² / (cells − coefficients − 1) against the pure-error mean square
    Σ (seed − mean_j)² / (seeds − cells), p from scipy.stats.f; and the signal test, the same
    pure error against what the fit explains, Σ n_j (f(u_j) − mean)² / coefficients (c included)."""
    out = {"unexplained": math.nan, "lof_f": math.nan, "lof_df": math.nan, "pe_df": math.nan, "lof_p": math.nan,
           "signal_p": math.nan}
    finite = np.isfinite(values)
    n = finite.sum(axis=0)
    keep = n > 0
    if not math.isfinite(c) or keep.sum() < degree + 3:
        return out
    v, n = values[:, keep], n[keep]
    mean = np.where(np.isfinite(v), v, 0.0).sum(axis=0) / n
    resid, k = _residuals(mean, x[keep] + c * w[keep], degree)
    total = float(((mean - mean.mean()) ** 2).sum())
    out["unexplained"] = float((resid ** 2).sum()) / total if total > 0 else math.nan
    ss_lof, df_lof = float((n * resid ** 2).sum()), len(mean) - k - 1   # − 1: c is fitted too
    ss_pe, df_pe = float(np.nansum((v - mean) ** 2)), int(n.sum() - len(mean))
    out["lof_df"], out["pe_df"] = df_lof, df_pe
    if df_lof < 1 or df_pe < 1:
        return out
    fitted = mean - resid
    ss_fit = float((n * (fitted - np.average(mean, weights=n)) ** 2).sum())
    if ss_pe == 0:  # seeds that agree exactly: any lack of fit, any signal is beyond the noise
        out["lof_f"], out["lof_p"] = (math.inf, 0.0) if ss_lof > 0 else (math.nan, math.nan)
        out["signal_p"] = 0.0 if ss_fit > 0 else math.nan
        return out
    from scipy.stats import f as f_dist
    pure = ss_pe / df_pe
    out["lof_f"] = (ss_lof / df_lof) / pure
    out["lof_p"] = float(f_dist.sf(out["lof_f"], df_lof, df_pe))
    out["signal_p"] = float(f_dist.sf((ss_fit / k) / pure, k, df_pe))
    return out


def _verdict(lo: float, hi: float, lof_p: float, signal_p: float, target: float, other: float) -> str:
    """fails: the 1-D fit leaves more than seed noise, or the surface varies beyond the noise and
    c's CI excludes ``target``; holds: it varies, the fit leaves no more than noise and the CI
    holds ``target`` but not ``other``; else inconclusive (a flat surface says nothing of c)."""
    if any(missing(v) for v in (lo, hi, lof_p, signal_p)):
        return "inconclusive"
    if lof_p < LRWD_ALPHA:
        return "fails"
    if signal_p >= LRWD_ALPHA:
        return "inconclusive"
    if not lo <= target <= hi:
        return "fails"
    return "inconclusive" if lo <= other <= hi else "holds"


def _lrwd_group(g: pd.DataFrame, ci: float, n_boot: int, rng: np.random.Generator, degree: int) -> dict:
    cell, cells = pd.factorize(pd.MultiIndex.from_frame(g[["lr", "weight_decay"]]), sort=True)
    seed, seeds = pd.factorize(g["seed"], sort=True)
    x = np.log2(cells.get_level_values(0).to_numpy(float))
    w = np.log2(cells.get_level_values(1).to_numpy(float))
    n_seed, n_cell = len(seeds), len(cells)
    weights = seed_resamples(n_seed, n_boot, rng)   # seeds are the units: one draw for every cell
    per_cell = np.bincount(cell, minlength=n_cell)
    out = {"n_cells": n_cell, "n_seeds": int(per_cell.min()) if n_cell else 0,
           "n_lr": len(np.unique(x)), "n_wd": len(np.unique(w)), "degree": degree}
    for name, target, other in (("late", 1.0, 0.0), ("early", 0.0, 1.0)):
        values = np.full((n_seed, n_cell), math.nan)
        values[seed, cell] = g[name].to_numpy(float)
        means, _ = resampled_means(weights, values, np.isfinite(values))
        c = _fit_rows(means, x, w, degree)
        point = _polish(float(c[0]), means[0], x, w, degree)
        lo, hi = t_interval(point, c[1:], ci, n_seed)
        lof = _lack_of_fit(values, point, x, w, degree)
        out.update({f"{name}_c": point, f"{name}_c_ci_lo": lo, f"{name}_c_ci_hi": hi,
                    f"{name}_c_at_bound": bool(math.isfinite(point) and min(abs(point - b) for b in LRWD_C_RANGE) < 1e-3),
                    **{f"{name}_{k}": v for k, v in lof.items()},
                    f"{name}_verdict": _verdict(lo, hi, lof["lof_p"], lof["signal_p"], target, other)})
    return out


LRWD_COLUMNS = ("n_cells", "n_seeds", "n_lr", "n_wd", "degree",
                *(f"{name}_{k}" for name in ("late", "early")
                  for k in ("c", "c_ci_lo", "c_ci_hi", "c_at_bound", "unexplained", "lof_f", "lof_df", "pe_df",
                            "lof_p", "signal_p", "verdict")))


def lrwd_table(runs: pd.DataFrame, curves: pd.DataFrame, *, early: float = 0.1, metric: str = "train_loss",
               ci: float = 0.9, n_boot: int = 1000, seed: int = 0,
               degree: int = LRWD_DEGREE) -> tuple[pd.DataFrame, dict]:
    """One row per series (and width/depth where they vary) whose weight_decay varies, with
    ``LRWD_COLUMNS``: per loss (late, early) the fitted c of u = log2 lr + c·log2 wd, its seed-
    bootstrap CI (``t_interval``), the lack-of-fit F test of the 1-D fit and the verdict; and the
    counts of excluded runs and skipped groups (see ``lrwd_invariance``)."""
    check_ci(ci)
    check_n_boot(n_boot)
    per_seed, counts = _lrwd_seed_frame(runs, curves, early, metric)
    keys = [k for k in per_seed.columns if k in ("series", *SCALE_AXES)]
    rows, skipped = [], []
    for gkey, g in per_seed.groupby(keys, sort=False, dropna=False):
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        label = dict(zip(keys, gkey))
        name = ", ".join(f"{k}={v}" if k != "series" else str(v) for k, v in label.items())
        n_lr, n_wd = g["lr"].nunique(), g["weight_decay"].nunique()
        n_cells = len(g.groupby(["lr", "weight_decay"]))
        if n_wd < 2:
            skipped.append(f"{name}: weight_decay does not vary")
            continue
        if n_lr < 2 or n_cells < degree + 3:
            skipped.append(f"{name}: {n_lr} lr value(s) and {n_cells} (lr, wd) cells, need >= 2 and >= {degree + 3}")
            continue
        rows.append({**label, **_lrwd_group(g, ci, n_boot, group_rng(seed, ("lrwd", *gkey)), degree)})
    if not rows:
        why = "; ".join(skipped) or "no finished runs with weight_decay > 0"
        raise UserError(f"lr·wd invariance needs weight_decay and lr to vary over at least {degree + 3} "
                        f"(lr, wd) cells: {why}")
    counts["skipped"] = skipped
    return pd.DataFrame(rows, columns=[*keys, *LRWD_COLUMNS]), counts


# ----------------------------------------------------------------------------- conditioning

CONDITION_SETUP = ("param", "condition")   # run columns that tell the conditioning series apart


def condition_table(runs: pd.DataFrame, diagnostics: pd.DataFrame, metric: str = "train_loss") -> pd.DataFrame:
    """How well-conditioned the matrices are, per series and scale, at each one's best LR.

    For every (series, param, condition, width/depth) the LR with the lowest seed-mean
    ``final_<metric>`` among finished runs is taken; over its seeds, the condition numbers
    (σ_max/σ_min, diagnostics ``condition``) at the last logged step: ``median`` and ``max``
    over the hidden atoms, ``input`` and ``output`` the first and last atom's, each averaged
    over seeds. ``median_first`` and ``input_first``: the same at the first logged step
    (``first_step``; 0 is the init where it was logged). Needs ``log_condition = true``.
    """
    column = LRWD_METRICS.get(metric)
    if column is None:
        raise UserError(f"--metric {metric!r}: allowed: {', '.join(LRWD_METRICS)}")
    if diagnostics is None or diagnostics.empty or "condition" not in diagnostics \
            or not np.isfinite(diagnostics["condition"]).any():
        raise UserError("no condition numbers recorded: run the experiment with log_condition = true")
    done = runs[(runs["status"] == "done") & np.isfinite(runs[column])]
    keys = ["series", *(c for c in CONDITION_SETUP if c in done), *scale_keys(done)]
    best = (done.groupby([*keys, "lr"], dropna=False)[column].mean().reset_index()
            .sort_values(column).groupby(keys, dropna=False).head(1))
    chosen = done.merge(best[[*keys, "lr"]], on=[*keys, "lr"])
    d = diagnostics[diagnostics["run_id"].isin(chosen["run_id"]) & (diagnostics["atom"] >= 0)]
    steps = d.groupby("run_id")["step"]
    first = d[d["step"] == steps.transform("min")]
    last = d[d["step"] == steps.transform("max")]

    def summary(at: pd.DataFrame, run_ids) -> dict:
        per_run = at[at["run_id"].isin(run_ids)]
        hidden = per_run[per_run["role"] == "hidden"].groupby("run_id")["condition"]
        return {"median": float(hidden.median().mean()), "max": float(hidden.max().mean()),
                "input": float(per_run[per_run["role"] == "input"]["condition"].mean()),
                "output": float(per_run[per_run["role"] == "output"]["condition"].mean()),
                "step": int(per_run["step"].min()) if len(per_run) else -1}

    rows = []
    for key, g in chosen.groupby(keys, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        start, end = summary(first, g["run_id"]), summary(last, g["run_id"])
        rows.append({**dict(zip(keys, key)), "lr": float(g["lr"].iloc[0]), "loss": float(g[column].mean()),
                     "n_seeds": int(g["seed"].nunique()), "first_step": start["step"],
                     "median_first": start["median"], "input_first": start["input"],
                     **{k: end[k] for k in ("median", "max", "input", "output")}})
    return pd.DataFrame(rows)
