"""Transfer numbers from a runs table: optimal LR per scale, drift in octaves, and regret.

Definitions (per series, scale axis and any other varying config key):

* a *cell* is one (scale, lr); its loss is the mean over the seeds that finished ("done");
  a cell whose seeds all diverged is *diverged*.
* the *optimal LR* at a scale is the grid argmin, refined by a parabola in log2(lr) through
  the argmin and its two neighbours (kept only when convex; the vertex is clipped to the
  neighbours' interval). ``edge`` flags an argmin at the smallest or largest LR run.
* **drift** = max − min of log2 optimal LR across scales (octaves).
* **regret** at a scale = loss at the base-scale optimal LR − best loss at that scale, where
  the base scale is the smallest; inf when the base LR diverged there.

Columns treated as metrics or metadata, never as grouping keys: ``METADATA`` below and every
``final_*`` column. Importable without torch.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .errors import UserError

METRICS = {"train_loss": "final_train_loss", "test_loss": "final_test_loss"}
AXES = ("width", "depth")
METADATA = {"run_id", "status", "error", "wall_seconds", "diverged_at_step", "lrtransfer_version", "git_sha",
            "torch_version", "device", "host", "first_train_loss", "steps_done", "lr", "seed", "series"}


def metric_column(metric: str) -> str:
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r}: allowed: {', '.join(METRICS)}")
    return METRICS[metric]


def scale_axes(runs: pd.DataFrame) -> list[str]:
    return [a for a in AXES if a in runs and runs[a].nunique() > 1]


def resolve_axes(runs: pd.DataFrame, axis: str | None) -> list[str]:
    varying = scale_axes(runs)
    if axis is None:
        return varying or [a for a in AXES if a in runs][:1]
    if axis not in AXES:
        raise UserError(f"--axis {axis!r}: allowed: {', '.join(AXES)}")
    if axis not in runs:
        raise UserError(f"--axis {axis}: the runs table has no {axis} column")
    return [axis]


def group_keys(runs: pd.DataFrame, axis: str) -> list[str]:
    """Config columns besides series/axis/lr/seed that vary within a series: each value is
    analysed apart (e.g. depth in a width x depth grid). Keys a series fixes are not keys."""
    keys = []
    for col in runs.columns:
        if col in METADATA or col == axis or col.startswith("final_"):
            continue
        try:
            if runs.groupby("series")[col].nunique(dropna=False).max() > 1:
                keys.append(col)
        except TypeError:  # unhashable values: not a config column
            continue
    return keys


def cells(runs: pd.DataFrame, metric: str = "train_loss", axis: str = "width") -> pd.DataFrame:
    """One row per (series, group keys, scale, lr): seed mean/std/min/max and counts."""
    col = metric_column(metric)
    if runs.empty or "status" not in runs:
        raise UserError("no runs to analyse")
    keys = ["series", *group_keys(runs, axis), axis, "lr"]
    r = runs.copy()
    r["_value"] = r[col].where(r["status"] == "done")
    g = r.groupby(keys, dropna=False, sort=True)
    out = g["_value"].agg(loss="mean", std="std", lo="min", hi="max", n_done="count").reset_index()
    out["n_runs"] = g.size().values
    out["n_diverged"] = g["status"].apply(lambda s: int((s == "diverged").sum())).values
    out["diverged"] = (out["n_done"] == 0) & (out["n_diverged"] > 0)
    return out


def optimum(lrs, losses, grid_lrs=None) -> dict:
    """Grid argmin of ``losses`` over ``lrs`` and its parabolic refinement in log2(lr)."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    ok = np.isfinite(losses)
    lrs, losses = lrs[ok], losses[ok]
    if len(lrs) == 0:
        return {"lr_grid": math.nan, "lr_fit": math.nan, "loss_grid": math.nan, "on_edge": False}
    order = np.argsort(lrs)
    lrs, losses = lrs[order], losses[order]
    i = int(np.argmin(losses))
    grid = np.asarray(grid_lrs if grid_lrs is not None else lrs, dtype=float)
    on_edge = bool(lrs[i] <= grid.min() or lrs[i] >= grid.max())
    fit = lrs[i]
    if 0 < i < len(lrs) - 1:
        x = np.log2(lrs[i - 1:i + 2])
        a, b, _ = np.polyfit(x, losses[i - 1:i + 2], 2)
        if a > 0:
            fit = 2.0 ** float(np.clip(-b / (2 * a), x[0], x[2]))
    return {"lr_grid": float(lrs[i]), "lr_fit": float(fit), "loss_grid": float(losses[i]), "on_edge": on_edge}


def transfer_table(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None,
                   min_runs: int = 3) -> pd.DataFrame:
    """One row per (series, group keys, axis, scale) with the optimum and the regret."""
    rows = []
    for ax in resolve_axes(runs, axis):
        c = cells(runs, metric, ax)
        extra = [k for k in c.columns if k not in ("series", ax, "lr", "loss", "std", "lo", "hi", "n_done",
                                                    "n_runs", "n_diverged", "diverged")]
        for gkey, g in c.groupby(["series", *extra], dropna=False, sort=False):
            gkey = gkey if isinstance(gkey, tuple) else (gkey,)
            scales = sorted(g[ax].unique())
            base_lr = math.nan
            per_scale = {}
            for scale in scales:
                s = g[g[ax] == scale]
                opt = optimum(s["lr"], s["loss"], grid_lrs=s["lr"])
                per_scale[scale] = (s, opt)
                if scale == scales[0]:
                    base_lr = opt["lr_grid"]
            for scale in scales:
                s, opt = per_scale[scale]
                at_base = s[np.isclose(s["lr"], base_lr)] if math.isfinite(base_lr) else s.iloc[0:0]
                base_diverged = bool(len(at_base) and at_base["diverged"].all())
                loss_at_base = float(at_base["loss"].iloc[0]) if len(at_base) and not base_diverged else math.nan
                best = opt["loss_grid"]
                if base_diverged:
                    regret = math.inf
                elif math.isfinite(loss_at_base) and math.isfinite(best):
                    regret = max(loss_at_base - best, 0.0)
                else:
                    regret = math.nan
                n_finished = int((s["n_done"] > 0).sum())
                rows.append({"series": gkey[0], **dict(zip(extra, gkey[1:])), "axis": ax, "scale": scale,
                             "opt_lr": opt["lr_grid"], "opt_log2_lr": _log2(opt["lr_grid"]),
                             "opt_lr_fit": opt["lr_fit"], "opt_log2_lr_fit": _log2(opt["lr_fit"]),
                             "best_loss": best, "base_lr": base_lr, "loss_at_base_lr": loss_at_base,
                             "regret": regret, "base_lr_diverged": base_diverged, "n_finished": n_finished,
                             "n_diverged": int(s["diverged"].sum()), "edge": opt["on_edge"],
                             "too_few": n_finished < min_runs})
    if not rows:
        raise UserError("no runs to analyse")
    table = pd.DataFrame(rows)
    if table["opt_lr"].isna().all():
        raise UserError("no finished runs: every run diverged or failed")
    return table


def _log2(x: float) -> float:
    return math.log2(x) if x and math.isfinite(x) and x > 0 else math.nan


def drift_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (series, group keys, axis): drift in octaves, max regret, and flags."""
    extra = [k for k in table.columns if k not in TRANSFER_COLUMNS]
    rows = []
    for gkey, g in table.groupby(["series", *extra, "axis"], dropna=False, sort=False):
        opt, fit = g["opt_log2_lr"].dropna(), g["opt_log2_lr_fit"].dropna()
        flags = [f"edge@{s}" for s in g.loc[g["edge"], "scale"]] + \
                [f"too-few@{s}" for s in g.loc[g["too_few"], "scale"]] + \
                [f"base-lr-diverged@{s}" for s in g.loc[g["base_lr_diverged"], "scale"]]
        regrets = g["regret"].dropna()
        rows.append({"series": gkey[0], **dict(zip(extra, gkey[1:-1])), "axis": gkey[-1],
                     "drift_octaves": float(opt.max() - opt.min()) if len(opt) else math.nan,
                     "drift_octaves_fit": float(fit.max() - fit.min()) if len(fit) else math.nan,
                     "max_regret": float(regrets.max()) if len(regrets) else math.nan,
                     "n_scales": int(len(opt)), "flags": " ".join(flags)})
    return pd.DataFrame(rows)


TRANSFER_COLUMNS = {"series", "axis", "scale", "opt_lr", "opt_log2_lr", "opt_lr_fit", "opt_log2_lr_fit",
                    "best_loss", "base_lr", "loss_at_base_lr", "regret", "base_lr_diverged", "n_finished",
                    "n_diverged", "edge", "too_few"}


def _json_value(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        v = float(v)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: _json_value(v) for k, v in row.items()} for row in df.to_dict("records")]


def _pow2(x: float) -> str:
    return "—" if not math.isfinite(x) else f"2^{math.log2(x):.0f}" if abs(math.log2(x) - round(math.log2(x))) < 1e-9 \
        else f"2^{math.log2(x):.2f}"


def _num(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else ("inf" if math.isinf(x) else f"{x:.4f}")


def report(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, format: str = "markdown",
           min_runs: int = 3) -> str:
    """The transfer report as Markdown, JSON (NaN -> null, inf -> "inf") or CSV."""
    if format not in ("markdown", "json", "csv"):
        raise UserError(f"--format {format!r}: allowed: markdown, json, csv")
    table = transfer_table(runs, metric, axis, min_runs)
    drift = drift_table(table)
    if format == "json":
        return json.dumps({"metric": metric, "transfer": _records(table), "drift": _records(drift)}, indent=2)
    if format == "csv":
        keys = [k for k in drift.columns if k in table.columns]
        return table.merge(drift, on=keys, how="left").to_csv(index=False)
    lines = []
    extra = [k for k in table.columns if k not in TRANSFER_COLUMNS]
    for gkey, g in table.groupby(["series", *extra, "axis"], dropna=False, sort=False):
        ax = gkey[-1]
        label = gkey[0] + "".join(f", {k}={v}" for k, v in zip(extra, gkey[1:-1]))
        lines += [f"### {label}: {metric} across {ax}", "",
                  f"| {ax} | optimal LR | fitted | best loss | loss at base LR | regret | flags |",
                  "|---:|---:|---:|---:|---:|---:|---|"]
        for r in g.to_dict("records"):
            flags = " ".join(f for f, on in (("edge", r["edge"]), ("too-few", r["too_few"]),
                                              ("base-lr-diverged", r["base_lr_diverged"])) if on)
            lines.append(f"| {r['scale']} | {_pow2(r['opt_lr'])} | {_pow2(r['opt_lr_fit'])} | {_num(r['best_loss'])} "
                         f"| {_num(r['loss_at_base_lr'])} | {_num(r['regret'])} | {flags} |")
        d = drift[(drift["series"] == gkey[0]) & (drift["axis"] == ax)]
        for k, v in zip(extra, gkey[1:-1]):
            d = d[d[k] == v]
        d = d.iloc[0]
        lines += ["", f"**drift: {d['drift_octaves']:.2f} octaves** (fitted {d['drift_octaves_fit']:.2f}); "
                      f"max regret {_num(d['max_regret'])}" + (f"; flags: {d['flags']}" if d["flags"] else ""), ""]
    lines += ["### Summary", "", "| series | axis | drift (octaves) | fitted | max regret | flags |",
              "|---|---|---:|---:|---:|---|"]
    for r in drift.to_dict("records"):
        label = r["series"] + "".join(f", {k}={r[k]}" for k in extra)
        lines.append(f"| {label} | {r['axis']} | {r['drift_octaves']:.2f} | {r['drift_octaves_fit']:.2f} "
                     f"| {_num(r['max_regret'])} | {r['flags']} |")
    return "\n".join(lines) + "\n"
