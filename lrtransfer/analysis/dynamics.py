"""Training dynamics from the stored tables: the three regimes of scale-invariant training on the
sphere, and the lr·wd trajectory invariance of decoupled weight decay.

Pure pandas/numpy (no torch); every function takes the tables ``load_results`` and
``lrtransfer.results.store.load_diagnostics`` return, so it works the same in a notebook.

Regimes (Kodryan et al. 2022): with scale-invariant weights kept on a sphere and a fixed
effective LR (ELR = lr / ‖w‖²), training, as the ELR grows, *converges* (the loss keeps falling
and the angular steps shrink), settles into a *chaotic* equilibrium (the loss plateaus at a
level that rises with the ELR while the weights keep turning at a roughly constant angular
speed) or *diverges* (the loss sits near ln(classes), chance). ``regimes`` labels every run
from the last ``window`` fraction of its logged curve, in this order:

1. ``diverge``: the run's status is ``diverged``, or its late loss is at least
   ``chance_fraction`` × chance loss;
2. ``converge``: the late slope of ln(loss) against ln(step) is ≤ ``slope`` (still falling);
3. ``chaotic``: the loss has plateaued and the weights still move: the mean angle per step of
   all scale-invariant weights together (diagnostics atom −1) over the window is ≥ ``angle``,
   or unknown (no diagnostics);
4. ``converge`` otherwise: a plateau with the weights at rest sits at a minimum.

``regime_boundaries`` places the converge→chaotic and chaotic→diverge switches on the ELR (or
LR) axis, per seed as the geometric midpoint between the largest x of the lower regime and
the smallest x of the upper one, then summarises them across seeds in octaves.

lr·wd invariance (AdamW): the late loss depends (almost) only on the product lr·wd, the early
loss on lr. ``lrwd_invariance`` compares the spread of the late loss across cells with the same
product against the spread across cells with the same lr (and the converse for the early
loss), with a seed-bootstrap CI on both ratios.
"""
from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from .transfer import _group_rng, _json_value, _num, _pct, _records, _signed
from ..errors import UserError

REGIMES = ("converge", "chaotic", "diverge")
REGIME_COLUMNS = ("run_id", "regime", "late_loss", "late_slope", "late_angle", "chance_loss", "n_points")
X_CHOICES = ("elr", "lr", "lr_applied")
SCALE_AXES = ("width", "depth")
# the boundaries between consecutive regimes, named by the regime they lead into
BOUNDARIES = {"to_chaotic": ("converge", "chaotic"), "to_diverge": ("chaotic", "diverge")}
LRWD_METRICS = {"train_loss": "final_train_loss", "test_loss": "final_test_loss"}


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


def _scale_keys(runs: pd.DataFrame) -> list[str]:
    """width / depth where they vary within some series: each value is its own group."""
    return [a for a in SCALE_AXES if a in runs and runs.groupby("series")[a].nunique().max() > 1]


def _real(name: str, value, ok, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(float(value)):
        raise UserError(f"{name} {value!r}: allowed: {allowed}")


def check_regime_options(window=0.25, chance_fraction=0.9, slope=-0.1, angle=1e-3) -> None:
    """UserError naming the option (as the CLI spells it) for a threshold regimes cannot use."""
    _real("--regime-window", window, lambda v: 0 < v <= 1, "a fraction of the logged points in (0, 1], e.g. 0.25")
    _real("--regime-chance", chance_fraction, lambda v: 0 < v <= 1,
          "a fraction of the chance loss in (0, 1], e.g. 0.9")
    _real("--regime-slope", slope, lambda v: -math.inf < v < 0,
          "a negative slope of ln(loss) per ln(step), e.g. -0.1")
    _real("--regime-angle", angle, lambda v: 0 <= v < math.inf, "an angle per step in radians >= 0, e.g. 0.001")


def _late_slope(steps: np.ndarray, losses: np.ndarray) -> float:
    ok = (steps > 0) & (losses > 0)
    x, y = np.log(steps[ok]), np.log(losses[ok])
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan
    return float(np.polyfit(x, y, 1)[0])


def regimes(runs: pd.DataFrame, curves: pd.DataFrame, diagnostics: pd.DataFrame | None = None, *,
            window: float = 0.25, chance_fraction: float = 0.9, slope: float = -0.1,
            angle: float = 1e-3) -> pd.DataFrame:
    """One row per run that finished (done or diverged; failed runs have no regime), in the
    runs' order, with ``REGIME_COLUMNS``: the regime and its evidence (see the module doc).

    ``late_loss`` is the mean train_loss over the last ``window`` fraction of the logged points
    (at least one; the final train loss when the run logged none), ``late_slope`` the
    least-squares slope of ln(train_loss) against ln(step) over that window (at least two
    points, else NaN: not evidence of falling), ``late_angle`` the mean angle per step of
    diagnostics atom −1 over the same steps (NaN without it), ``chance_loss`` ln(classes) from
    the runs table (NaN in old results: the chance test is then skipped).
    """
    check_regime_options(window, chance_fraction, slope, angle)
    if runs is None or runs.empty:
        raise UserError("no runs to analyse: the runs table is empty")
    runs = with_dynamics_columns(runs)
    by_run = dict(iter(curves.groupby("run_id", sort=False))) if curves is not None and len(curves) else {}
    angles = {}
    if diagnostics is not None and len(diagnostics) and "angle" in diagnostics:
        d = diagnostics[diagnostics["atom"] == -1]
        angles = dict(iter(d.groupby("run_id", sort=False)))
    rows = []
    for run in runs.to_dict("records"):
        status = str(run.get("status"))
        if status not in ("done", "diverged"):
            continue
        c = by_run.get(run["run_id"])
        late_loss = late_slope = late_angle = math.nan
        n_points = 0
        if c is not None:
            c = c[np.isfinite(c["train_loss"].to_numpy(float))].sort_values("step")
            n_points = len(c)
        if n_points:
            k = max(1, math.ceil(window * n_points))
            tail = c.iloc[-k:]
            steps, losses = tail["step"].to_numpy(float), tail["train_loss"].to_numpy(float)
            late_loss = float(losses.mean())
            late_slope = _late_slope(steps, losses)
            a = angles.get(run["run_id"])
            if a is not None:
                a = a[a["step"] >= steps[0]]["angle"].to_numpy(float)
                a = a[np.isfinite(a)]
                late_angle = float(a.mean()) if len(a) else math.nan
        else:
            late_loss = float(run.get("final_train_loss", math.nan))
        chance = float(run["chance_loss"])
        if status == "diverged" or (math.isfinite(chance) and late_loss >= chance_fraction * chance):
            regime = "diverge"
        elif late_slope <= slope:  # NaN compares False: an unknown slope is no evidence of falling
            regime = "converge"
        elif math.isnan(late_angle) or late_angle >= angle:
            regime = "chaotic"
        else:
            regime = "converge"
        rows.append({"run_id": run["run_id"], "regime": regime, "late_loss": late_loss, "late_slope": late_slope,
                     "late_angle": late_angle, "chance_loss": chance, "n_points": n_points})
    return pd.DataFrame(rows, columns=list(REGIME_COLUMNS))


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


def seed_boundaries(runs: pd.DataFrame, regime_table: pd.DataFrame, x: str = "elr") -> pd.DataFrame:
    """One row per (series, varying width/depth, seed): ``to_chaotic`` / ``to_diverge``, each the
    geometric midpoint between the largest x of the lower regime and the smallest x of the upper
    one (NaN when either regime is absent), ``monotone`` (the regimes never step back along x),
    ``n_points`` and a ``note`` naming absent regimes and out-of-order x."""
    runs = with_dynamics_columns(runs)
    r = runs.assign(_x=x_values(runs, x)).merge(regime_table[["run_id", "regime"]], on="run_id")
    r = r[r["_x"] > 0]
    if "seed" not in r:
        r["seed"] = 0
    keys = ["series", *_scale_keys(runs)]
    code = {name: i for i, name in enumerate(REGIMES)}
    rows = []
    for gkey, g in r.groupby([*keys, "seed"], sort=False, dropna=False):
        g = g.assign(_code=g["regime"].map(code)).sort_values(["_x", "_code"], kind="stable")
        codes = g["_code"].to_numpy()
        row = dict(zip([*keys, "seed"], gkey))
        notes = []
        for name, (lower, upper) in BOUNDARIES.items():
            lo, hi = g.loc[g["regime"] == lower, "_x"], g.loc[g["regime"] == upper, "_x"]
            row[name] = math.sqrt(lo.max() * hi.min()) if len(lo) and len(hi) else math.nan
        missing = [name for name in REGIMES if name not in set(g["regime"])]
        if missing:
            notes.append("no " + " / ".join(missing) + " runs")
        row["monotone"] = bool((np.diff(codes) >= 0).all())
        if not row["monotone"]:
            xs, names = g["_x"].to_numpy(float), g["regime"].tolist()
            back = [i for i in range(1, len(codes)) if codes[i] < codes[i - 1]]
            notes.append("out of order: " + ", ".join(f"{names[i]} at {x}={_p2(xs[i])} above {names[i - 1]} at "
                                                      f"{_p2(xs[i - 1])}" for i in back))
        row["n_points"] = len(g)
        row["note"] = "; ".join(notes)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, "seed", *BOUNDARIES, "monotone", "n_points", "note"])


def regime_boundaries(runs: pd.DataFrame, regime_table: pd.DataFrame, x: str = "elr") -> pd.DataFrame:
    """One row per series (and width/depth where they vary) summarising ``seed_boundaries``
    across seeds. Per boundary B in ``to_chaotic``, ``to_diverge``: ``B`` = 2^(mean log2 of the
    seeds' boundaries), ``B_log2`` that mean, ``B_log2_min`` / ``_max`` / ``_std`` (sample std;
    octaves) and ``B_n`` the seeds with that boundary. Also ``x``, ``n_seeds``,
    ``n_out_of_order`` (seeds whose regimes step back along x), ``monotone`` (none do) and
    ``note`` (per-seed notes, with the seeds they hold for)."""
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
        notes = g.groupby("note", sort=False)["seed"].apply(list)
        row["note"] = "; ".join(f"seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}: {n}"
                                for n, s in notes.items() if n)
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- lr·wd

def _lrwd_seed_frame(runs: pd.DataFrame, curves: pd.DataFrame, early: float, metric: str) -> tuple[pd.DataFrame, dict]:
    """Per (group, lr, wd, seed): late and early loss of the finished runs; and exclusion counts."""
    if metric not in LRWD_METRICS:
        raise UserError(f"--metric {metric!r}: allowed: {', '.join(LRWD_METRICS)}")
    _real("early", early, lambda v: 0 < v <= 1, "a fraction of the run's steps in (0, 1], e.g. 0.1")
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
    keys = ["series", *_scale_keys(runs)]
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


def _mean_group_std(values: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """For (replicates × cells) ``values``: the mean over ``groups`` (column index arrays) of the
    std (ddof 1) across each group's cells; NaN cells are left out of their group."""
    stds = []
    for idx in groups:
        sub = values[:, idx]
        n = np.isfinite(sub).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.nanstd(sub, axis=1, ddof=1) if sub.shape[1] > 1 else np.full(len(sub), np.nan)
        stds.append(np.where(n >= 2, s, np.nan))
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.stack(stds, axis=1), axis=1) if stds else np.full(len(values), np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((num == 0) & (den == 0), np.nan, num / den)


def _verdict(lo: float, hi: float) -> str:
    if _missing(lo) or _missing(hi):
        return "inconclusive"
    return "holds" if hi < 1 else "fails" if lo > 1 else "inconclusive"


def _missing(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _lrwd_group(g: pd.DataFrame, ci: float, n_boot: int, rng: np.random.Generator) -> dict:
    cells = list(g.groupby(["lr", "weight_decay"], sort=True))
    lrs = np.array([k[0] for k, _ in cells], dtype=float)
    products = np.array([c["log2_product"].iloc[0] for _, c in cells])
    by_product = [np.flatnonzero(products == p) for p in np.unique(products)]
    by_lr = [np.flatnonzero(lrs == v) for v in np.unique(lrs)]
    by_product = [i for i in by_product if len(i) >= 2]
    by_lr = [i for i in by_lr if len(i) >= 2]
    seed_counts = np.array([len(c) for _, c in cells])
    # row 0: the point values (all seeds); rows 1..: each cell's seeds redrawn with replacement
    late = np.empty((1 + n_boot, len(cells)))
    early = np.empty_like(late)
    for j, (_, c) in enumerate(cells):
        lv, ev = c["late"].to_numpy(float), c["early"].to_numpy(float)
        late[0, j], early[0, j] = lv.mean(), np.nanmean(ev) if np.isfinite(ev).any() else np.nan
        draw = rng.integers(0, len(c), size=(n_boot, len(c)))
        late[1:, j] = lv[draw].mean(axis=1)
        with np.errstate(invalid="ignore"), _quiet():
            early[1:, j] = np.nanmean(ev[draw], axis=1)
    out = {"n_cells": len(cells), "n_seeds": int(seed_counts.min()) if len(cells) else 0,
           "n_product_groups": len(by_product), "n_lr_groups": len(by_lr)}
    stats = {"late_spread_equal_product": _mean_group_std(late, by_product),
             "late_spread_equal_lr": _mean_group_std(late, by_lr),
             "early_spread_equal_lr": _mean_group_std(early, by_lr),
             "early_spread_equal_product": _mean_group_std(early, by_product)}
    stats["late_ratio"] = _ratio(stats["late_spread_equal_product"], stats["late_spread_equal_lr"])
    stats["early_ratio"] = _ratio(stats["early_spread_equal_lr"], stats["early_spread_equal_product"])
    for name, values in stats.items():
        out[name] = float(values[0])
    tail = (1 - ci) / 2 * 100
    for name in ("late_ratio", "early_ratio"):
        boot = stats[name][1:]
        boot = boot[~np.isnan(boot)]
        # with one seed per cell every replicate is the point value: no interval to speak of
        if out["n_seeds"] < 2 or len(boot) < n_boot / 2:
            lo = hi = math.nan
        else:
            lo, hi = (float(v) for v in np.percentile(boot, [tail, 100 - tail]))
        out[f"{name}_ci_lo"], out[f"{name}_ci_hi"] = lo, hi
        out[name.replace("_ratio", "_verdict")] = _verdict(lo, hi)
    return out


class _quiet:
    """Silence numpy's 'mean of empty slice' warning (an all-NaN early loss is just NaN)."""
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


LRWD_COLUMNS = ("n_cells", "n_seeds", "n_product_groups", "n_lr_groups", "late_spread_equal_product",
                "late_spread_equal_lr", "late_ratio", "late_ratio_ci_lo", "late_ratio_ci_hi", "late_verdict",
                "early_spread_equal_lr", "early_spread_equal_product", "early_ratio", "early_ratio_ci_lo",
                "early_ratio_ci_hi", "early_verdict")


def lrwd_table(runs: pd.DataFrame, curves: pd.DataFrame, *, early: float = 0.1, metric: str = "train_loss",
               ci: float = 0.9, n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """One row per series (and width/depth where they vary) whose weight_decay varies, with
    ``LRWD_COLUMNS``; and the counts of excluded runs and skipped groups (see ``lrwd_invariance``)."""
    _real("--ci", ci, lambda v: 0 < v < 1, "a confidence level strictly between 0 and 1, e.g. 0.9")
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise UserError(f"--n-boot {n_boot!r}: allowed: an integer >= 1 (bootstrap replicates), e.g. 1000")
    per_seed, counts = _lrwd_seed_frame(runs, curves, early, metric)
    keys = [k for k in per_seed.columns if k in ("series", *SCALE_AXES)]
    rows, skipped = [], []
    for gkey, g in per_seed.groupby(keys, sort=False, dropna=False):
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        label = dict(zip(keys, gkey))
        name = ", ".join(f"{k}={v}" if k != "series" else str(v) for k, v in label.items())
        if g["weight_decay"].nunique() < 2:
            skipped.append(f"{name}: weight_decay does not vary")
            continue
        stats = _lrwd_group(g, ci, n_boot, _group_rng(seed, ("lrwd", *gkey)))
        if stats["n_product_groups"] < 2:
            skipped.append(f"{name}: {stats['n_product_groups']} lr·wd product(s) with >= 2 cells, need 2")
            continue
        rows.append({**label, **stats})
    if not rows:
        why = "; ".join(skipped) or "no finished runs with weight_decay > 0"
        raise UserError(f"lr·wd invariance needs weight_decay to vary and at least 2 lr·wd products each "
                        f"run at >= 2 (lr, wd) cells: {why}")
    counts["skipped"] = skipped
    return pd.DataFrame(rows, columns=[*keys, *LRWD_COLUMNS]), counts


def lrwd_invariance(runs: pd.DataFrame, curves: pd.DataFrame, *, early: float = 0.1, metric: str = "train_loss",
                    ci: float = 0.9, n_boot: int = 1000, seed: int = 0) -> dict:
    """The lr·wd invariance numbers, JSON-able.

    Per finished run (status done, finite metric, weight_decay > 0; diverged, failed and wd = 0
    runs are excluded and counted): late loss = ``final_<metric>``; early loss = mean train_loss
    of the curve points at step ≤ ``early`` × steps (at least the first). Cells (lr, wd) average
    their seeds; they are grouped by log2(lr·wd) (rounded to 1e-6) and by lr. A spread is the
    mean over groups with ≥ 2 cells of the std (ddof 1) of the cells' loss. ``late_ratio`` =
    late spread at equal product / at equal lr (< 1: the late loss follows lr·wd, the
    invariance); ``early_ratio`` = early spread at equal lr / at equal product (< 1: the early
    loss follows lr). Percentile CIs at level ``ci`` from ``n_boot`` replicates that redraw
    each cell's seeds with replacement (seeded from ``seed`` and the group: reproducible);
    verdict ``holds`` when the CI lies below 1, ``fails`` above 1, else ``inconclusive`` (also
    with one seed per cell). Keys: metric, column, early, ci, n_boot, seed, n_runs, n_diverged,
    n_failed, n_zero_wd, skipped (groups without a usable wd axis), groups (one record per
    series / width / depth, CIs as ``<ratio>_ci: [lo, hi]``), cells (per-cell seed means).
    UserError when no group has a weight_decay that varies and ≥ 2 products with ≥ 2 cells.
    """
    table, counts = lrwd_table(runs, curves, early=early, metric=metric, ci=ci, n_boot=n_boot, seed=seed)
    cells = lrwd_cells(runs, curves, early=early, metric=metric)
    return {"metric": metric, "column": LRWD_METRICS[metric], "early": early, "ci": ci, "n_boot": n_boot,
            "seed": seed, **counts, "groups": _records(table), "cells": _records(cells)}


# ----------------------------------------------------------------------------- reports

def _p2(x) -> str:
    """A positive number as 2^k (2 decimals off the integer grid)."""
    if _missing(x) or not np.isfinite(x) or x <= 0:
        return "—"
    k = math.log2(x)
    return f"2^{round(k)}" if abs(k - round(k)) < 1e-9 else f"2^{k:.2f}"


def regime_summary(runs: pd.DataFrame, curves: pd.DataFrame, diagnostics: pd.DataFrame | None = None, *,
                   x: str | None = None, window: float = 0.25, chance_fraction: float = 0.9, slope: float = -0.1,
                   angle: float = 1e-3) -> dict:
    """Regimes, per-seed and summarised boundaries, JSON-able. ``x`` defaults to ``elr`` when
    some run has an effective LR, else ``lr``. Keys: x, window, chance_fraction, slope, angle,
    counts (runs per regime), runs (``regimes`` rows with series, seed, scale and x),
    seed_boundaries, boundaries."""
    table = regimes(runs, curves, diagnostics, window=window, chance_fraction=chance_fraction, slope=slope,
                    angle=angle)
    if x is None:
        x = "elr" if (effective_lr(runs) > 0).any() else "lr"
    full = with_dynamics_columns(runs).assign(_x=x_values(runs, x))
    cols = [c for c in ("run_id", "series", *SCALE_AXES, "seed", "status") if c in full]
    per_run = full[cols + ["_x"]].rename(columns={"_x": x}).merge(table, on="run_id")
    return {"x": x, "window": window, "chance_fraction": chance_fraction, "slope": slope, "angle": angle,
            "counts": {name: int((table["regime"] == name).sum()) for name in REGIMES},
            "runs": _records(per_run), "seed_boundaries": _records(seed_boundaries(runs, table, x)),
            "boundaries": _records(regime_boundaries(runs, table, x))}


def _label(row: dict) -> str:
    return str(row["series"]) + "".join(f", {k}={row[k]}" for k in SCALE_AXES if k in row and row[k] is not None)


def _octave_range(row: dict, name: str) -> str:
    lo, hi = row.get(f"{name}_log2_min"), row.get(f"{name}_log2_max")
    return "—" if lo is None or hi is None else f"[{lo:.2f}, {hi:.2f}]"


def regime_report(summary: dict) -> str:
    """Markdown for a ``regime_summary``: one sentence per group, the boundary table, then the
    regime of every (group, x) with the evidence (seed means)."""
    x = summary["x"]
    lines = ["## Regimes", ""]
    counts = summary["counts"]
    lines.append(f"Runs by regime: {counts['converge']} converge, {counts['chaotic']} chaotic, "
                 f"{counts['diverge']} diverge (late window: last {summary['window']:g} of the logged points; "
                 f"diverge at ≥ {summary['chance_fraction']:g} × chance loss; converge while ln(loss) falls at "
                 f"≤ {summary['slope']:g} per ln(step); chaotic when it has stopped falling and the scale-invariant "
                 f"weights still turn ≥ {summary['angle']:g} rad per step, or the angle is not recorded).")
    lines.append("")
    for b in summary["boundaries"]:
        def at(name):
            if b[f"{name}_n"] == 0:
                return "not seen"
            std = b[f"{name}_log2_std"]
            return (f"{x} ≈ {_p2(b[name])} (log2 {b[f'{name}_log2']:.2f}"
                    + (f" ± {std:.2f} octaves" if std is not None else "") + f", {b[f'{name}_n']} seed"
                    + ("s" if b[f"{name}_n"] != 1 else "") + ")")
        order = "in order" if b["monotone"] else f"out of order in {b['n_out_of_order']} seed(s)"
        lines.append(f"- {_label(b)}: converge→chaotic at {at('to_chaotic')}, chaotic→diverge at "
                     f"{at('to_diverge')}; regimes {order}" + (f" ({b['note']})" if b["note"] else "") + ".")
    lines += ["", f"| series | seeds | converge→chaotic {x} | log2 (min, max) | chaotic→diverge {x} "
                  f"| log2 (min, max) | in order |", "|---|---:|---:|---:|---:|---:|---|"]
    for b in summary["boundaries"]:
        lines.append(f"| {_label(b)} | {b['n_seeds']} | {_p2(b['to_chaotic'])} | {_octave_range(b, 'to_chaotic')} "
                     f"| {_p2(b['to_diverge'])} | {_octave_range(b, 'to_diverge')} "
                     f"| {'yes' if b['monotone'] else 'no'} |")
    per_run = pd.DataFrame(summary["runs"])
    keys = [k for k in ("series", *SCALE_AXES) if k in per_run and per_run.groupby("series")[k].nunique().max() > 1]
    keys = ["series", *keys]
    lines += ["", f"| series | {x} | regimes (seeds) | late loss | late slope | late angle (rad/step) "
                  f"| chance loss |", "|---|---:|---|---:|---:|---:|---:|"]
    for gkey, g in per_run.groupby([*keys, x], sort=False):
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        label = dict(zip(keys, gkey))
        regs = g["regime"].value_counts()
        text = ", ".join(f"{name} {regs[name]}" for name in REGIMES if name in regs)
        lines.append(f"| {_label(label)} | {_p2(gkey[-1])} | {text} | {_num(_mean(g['late_loss']))} "
                     f"| {_signed(_mean(g['late_slope']), 3)} | {_num(_mean(g['late_angle']), 5)} "
                     f"| {_num(_mean(g['chance_loss']))} |")
    return "\n".join(lines) + "\n"


def _mean(values) -> float:
    v = pd.to_numeric(pd.Series(list(values)), errors="coerce").astype(float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan


def _ratio_interval(group: dict, name: str) -> str | None:
    """A ratio's CI as "[lo, hi]", or None without one (one seed per cell)."""
    lo, hi = group[f"{name}_ci"]
    return None if lo is None or hi is None else f"[{_num(lo, 2)}, {_num(hi, 2)}]"


def lrwd_report(result: dict) -> str:
    """Markdown for an ``lrwd_invariance`` result: one sentence per group, then the table."""
    pct = _pct(result["ci"])
    lines = ["## lr·wd invariance", ""]
    for g in result["groups"]:
        def ci(name):
            interval = _ratio_interval(g, name)
            return "no CI" if interval is None else f"{pct} CI {interval}"
        lines.append(f"- {_label(g)}: late {result['metric'].replace('_', ' ')} follows lr·wd: "
                     f"**{g['late_verdict']}** — spread at equal lr·wd / at equal lr = {_num(g['late_ratio'], 2)} "
                     f"({ci('late_ratio')}); early loss follows lr: **{g['early_verdict']}** — spread at equal lr / "
                     f"at equal lr·wd = {_num(g['early_ratio'], 2)} ({ci('early_ratio')}); {g['n_cells']} (lr, wd) "
                     f"cells, {g['n_seeds']}+ seeds each.")
    excluded = [f"{result[k]} {k[2:].replace('_', ' ')}" for k in ("n_diverged", "n_failed") if result[k]]
    if result["n_zero_wd"]:
        excluded.append(f"{result['n_zero_wd']} with weight_decay 0")
    lines += ["", (f"Late loss = {result['column']}; early loss = mean train loss over the first "
                   f"{result['early']:g} of the steps. Spread = mean over groups of ≥ 2 cells of the std of the "
                   f"seed-mean loss across the group's cells; a ratio < 1 supports the statement, verdict from the "
                   f"{pct} bootstrap CI over seeds ({result['n_boot']} replicates): holds (below 1), fails "
                   f"(above 1), inconclusive. Runs: {result['n_runs']}"
                   + (f", excluded {', '.join(excluded)}" if excluded else "") + "."
                   + (f" Skipped: {'; '.join(result['skipped'])}." if result["skipped"] else "")), "",
              f"| series | late: spread equal lr·wd | spread equal lr | ratio | {pct} CI | verdict "
              f"| early: spread equal lr | spread equal lr·wd | ratio | {pct} CI | verdict | cells |",
              "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|"]
    for g in result["groups"]:
        late, early = (_ratio_interval(g, name) or "—" for name in ("late_ratio", "early_ratio"))
        lines.append(f"| {_label(g)} | {_num(g['late_spread_equal_product'])} | {_num(g['late_spread_equal_lr'])} "
                     f"| {_num(g['late_ratio'], 2)} | {late} | {g['late_verdict']} "
                     f"| {_num(g['early_spread_equal_lr'])} | {_num(g['early_spread_equal_product'])} "
                     f"| {_num(g['early_ratio'], 2)} | {early} | {g['early_verdict']} "
                     f"| {g['n_cells']} |")
    return "\n".join(lines) + "\n"


def to_json(doc: dict) -> str:
    """Strict JSON (no NaN) for the summaries above."""
    return json.dumps(doc, indent=2, allow_nan=False, default=_json_value) + "\n"


# ----------------------------------------------------------------------------- conditioning

def condition_table(runs: pd.DataFrame, diagnostics: pd.DataFrame, metric: str = "train_loss") -> pd.DataFrame:
    """How well-conditioned the trained matrices are, per series and scale, at each one's best LR.

    For every (series, width/depth) the LR with the lowest seed-mean ``final_<metric>`` among
    finished runs is taken; over its seeds, the condition numbers (σ_max/σ_min, diagnostics
    ``condition``) of the hidden matrices at the last logged step are summarised: ``median``
    and ``max`` over the hidden atoms, averaged over seeds; ``input`` and ``output`` give the
    first and last atom's. Needs diagnostics recorded with ``log_condition = true``.
    """
    column = LRWD_METRICS.get(metric)
    if column is None:
        raise UserError(f"--metric {metric!r}: allowed: {', '.join(LRWD_METRICS)}")
    if diagnostics is None or diagnostics.empty or "condition" not in diagnostics \
            or not np.isfinite(diagnostics["condition"]).any():
        raise UserError("no condition numbers recorded: run the experiment with log_condition = true")
    done = runs[(runs["status"] == "done") & np.isfinite(runs[column])]
    keys = ["series", *_scale_keys(done)]
    best = (done.groupby([*keys, "lr"], dropna=False)[column].mean().reset_index()
            .sort_values(column).groupby(keys, dropna=False).head(1))
    chosen = done.merge(best[[*keys, "lr"]], on=[*keys, "lr"])
    d = diagnostics[diagnostics["run_id"].isin(chosen["run_id"]) & (diagnostics["atom"] >= 0)]
    last = d[d["step"] == d.groupby("run_id")["step"].transform("max")]
    rows = []
    for key, g in chosen.groupby(keys, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        per_run = last[last["run_id"].isin(g["run_id"])]
        hidden = per_run[per_run["role"] == "hidden"].groupby("run_id")["condition"]
        rows.append({**dict(zip(keys, key)), "lr": float(g["lr"].iloc[0]), "loss": float(g[column].mean()),
                     "n_seeds": int(g["seed"].nunique()),
                     "median": float(hidden.median().mean()), "max": float(hidden.max().mean()),
                     "input": float(per_run[per_run["role"] == "input"]["condition"].mean()),
                     "output": float(per_run[per_run["role"] == "output"]["condition"].mean())})
    return pd.DataFrame(rows)
