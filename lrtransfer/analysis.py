"""Transfer numbers from a runs table: optimal LR per scale, drift in octaves, and regret.

Pure pandas/numpy; importable without torch.

Definitions (per series, scale axis and every other varying config key):

* a *cell* is one (scale, lr). Its loss is the mean of the metric over the seeds that
  finished (status ``"done"`` and a finite metric), with ``std``/``lo``/``hi`` across those
  seeds and ``n_seeds`` their number. A cell where no seed finished and at least one diverged
  is *diverged*; diverged cells never enter an optimum and are counted in ``n_diverged``.
* the *optimal LR* at a scale is the grid argmin over finished cells (ties: the smaller LR),
  refined by a parabola in log2(lr) through the argmin and its two neighbours. The vertex is
  kept only when both neighbours exist and the parabola is convex, and is clipped to the
  neighbours' interval; otherwise the fitted optimum is the grid argmin. ``edge`` flags an
  argmin at the smallest or largest LR run at that scale (the true optimum may be outside).
* the *base scale* is the smallest scale of a group that has a finished run (normally simply
  the smallest scale); its grid-optimal LR is the *base LR*.
* **regret** at a scale = loss at the base LR at that scale − best loss at that scale (≥ 0,
  0 at the base scale). It is ``inf`` when the base LR diverged there
  (``base_lr_diverged``), NaN when the base LR was not run (or only failed) there
  (``base_lr_missing``).
* **drift** = max − min of log2 optimal LR across the scales that have an optimum (octaves);
  ``drift_octaves_fit`` the same with the fitted optimum; ``slope`` the least-squares slope
  of the fitted log2 optimum against log2(scale) (octaves of LR per octave of scale).

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

JSON output has no NaN: NaN and missing values are ``null``, infinities the strings
``"inf"`` / ``"-inf"``.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .errors import UserError

METRICS = {"train_loss": "final_train_loss", "test_loss": "final_test_loss"}
AXES = ("width", "depth")
FORMATS = ("markdown", "json", "csv")
METADATA = {"run_id", "series", "lr", "seed", "status", "error", "wall_seconds", "diverged_at_step",
            "lrtransfer_version", "git_sha", "torch_version", "device", "host", "hostname", "first_train_loss",
            "steps_done", "time", "timestamp", "pid", "worker", "attempt", "trial", "trial_number", "study"}
METADATA_PREFIXES = ("final_", "first_")
METADATA_SUFFIXES = ("_version", "_sha", "_seconds", "_at_step", "_at", "_time")
CELL_STATS = ("loss", "std", "lo", "hi", "n_seeds", "n_runs", "n_diverged", "n_failed", "diverged")
TRANSFER_COLUMNS = ("series", "axis", "scale", "opt_lr", "opt_log2_lr", "opt_lr_fit", "opt_log2_lr_fit",
                    "best_loss", "best_loss_std", "n_seeds", "base_scale", "base_lr", "loss_at_base_lr", "regret",
                    "base_lr_diverged", "base_lr_missing", "n_lrs", "n_finished", "n_diverged", "edge", "too_few")
DRIFT_COLUMNS = ("series", "axis", "base_scale", "base_lr", "drift_octaves", "drift_octaves_fit", "slope",
                 "max_regret", "n_scales", "flags")


def is_metadata(col: str) -> bool:
    """True for metric, timing and provenance columns, which are never grouping keys."""
    col = str(col)
    return col in METADATA or col.startswith(METADATA_PREFIXES) or col.endswith(METADATA_SUFFIXES)


def metric_column(metric: str, runs: pd.DataFrame | None = None) -> str:
    """The runs-table column behind a metric name; with ``runs``, checks it is there."""
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r}: allowed: {', '.join(METRICS)}")
    col = METRICS[metric]
    if runs is not None and not runs.empty and col not in runs:
        raise UserError(f"--metric {metric}: the runs table has no {col} column")
    return col


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


def cells(runs: pd.DataFrame, metric: str = "train_loss", axis: str = "width") -> pd.DataFrame:
    """One row per (series, group keys, scale, lr), series in order of first appearance:
    ``loss`` (seed mean of finished runs), ``std``, ``lo``/``hi`` (min/max over seeds),
    ``n_seeds`` (finished seeds), ``n_runs``, ``n_diverged``, ``n_failed`` and ``diverged``."""
    runs = _prepare(runs)
    col = metric_column(metric, runs)
    if axis not in runs:
        raise UserError(f"--axis {axis}: the runs table has no {axis} column")
    keys = ["series", *group_keys(runs, axis), axis, "lr"]
    value = pd.to_numeric(runs[col], errors="coerce").astype(float)
    status = runs["status"].astype(str)
    value = value.where((status == "done") & np.isfinite(value))
    r = runs[keys].assign(_value=value, _div=(status == "diverged").astype(int),
                          _fail=(~status.isin(["done", "diverged"])).astype(int))
    g = r.groupby(keys, dropna=False, sort=False)
    out = g.agg(loss=("_value", "mean"), std=("_value", "std"), lo=("_value", "min"), hi=("_value", "max"),
                n_seeds=("_value", "count"), n_runs=("_value", "size"), n_diverged=("_div", "sum"),
                n_failed=("_fail", "sum")).reset_index()
    out["diverged"] = (out["n_seeds"] == 0) & (out["n_diverged"] > 0)
    order = _series_order(runs)
    out = out.sort_values(keys, key=lambda s: s.map(order) if s.name == "series" else s, kind="stable")
    return out.reset_index(drop=True)


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
    ok = np.isfinite(losses) & np.isfinite(lrs) & (lrs > 0)
    lrs, losses = lrs[ok], losses[ok]
    if len(lrs) == 0:
        return {"lr_grid": math.nan, "lr_fit": math.nan, "loss_grid": math.nan, "fitted": False, "on_edge": False}
    order = np.argsort(lrs, kind="stable")
    lrs, losses = lrs[order], losses[order]
    i = int(np.argmin(losses))
    grid = grid[np.isfinite(grid)]
    on_edge = bool(len(grid) == 0 or lrs[i] <= grid.min() or lrs[i] >= grid.max())
    fit, fitted = float(lrs[i]), False
    if 0 < i < len(lrs) - 1:
        (x0, x1, x2), (y0, y1, y2) = np.log2(lrs[i - 1:i + 2]), losses[i - 1:i + 2]
        d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
        a = (d12 - d01) / (x2 - x0)  # the parabola's leading coefficient
        if a > 0:
            vertex = (x0 + x1) / 2 - d01 / (2 * a)  # where the derivative d01 + a(2x - x0 - x1) is 0
            fit, fitted = float(2.0 ** np.clip(vertex, x0, x2)), True
    return {"lr_grid": float(lrs[i]), "lr_fit": fit, "loss_grid": float(losses[i]), "fitted": fitted,
            "on_edge": on_edge}


def _log2(x) -> float:
    return math.log2(x) if x is not None and np.isfinite(x) and x > 0 else math.nan


def _same_lr(lrs: pd.Series, lr: float) -> pd.Series:
    return pd.Series(np.isclose(lrs.to_numpy(float), lr, rtol=1e-9, atol=0.0), index=lrs.index)


def _scale_rows(g: pd.DataFrame, ax: str, min_runs: int) -> list[dict]:
    """Transfer rows (without the group labels) for one group's cells, scales ascending."""
    per_scale = []
    for scale, s in g.groupby(ax, sort=True):
        per_scale.append((scale, s, optimum(s["lr"], s["loss"], grid_lrs=s["lr"])))
    base = next(((sc, o["lr_grid"]) for sc, _, o in per_scale if math.isfinite(o["lr_grid"])), (math.nan, math.nan))
    base_scale, base_lr = base
    rows = []
    for scale, s, opt in per_scale:
        at_base = s[_same_lr(s["lr"], base_lr)] if math.isfinite(base_lr) else s.iloc[0:0]
        base_diverged = bool(len(at_base) and at_base["diverged"].all())
        finished_at_base = at_base[at_base["n_seeds"] > 0]
        loss_at_base = float(finished_at_base["loss"].iloc[0]) if len(finished_at_base) else math.nan
        base_missing = math.isfinite(base_lr) and not base_diverged and not math.isfinite(loss_at_base)
        best = opt["loss_grid"]
        if base_diverged:
            regret = math.inf
        elif math.isfinite(loss_at_base) and math.isfinite(best):
            regret = max(loss_at_base - best, 0.0)
        else:
            regret = math.nan
        best_cell = s[_same_lr(s["lr"], opt["lr_grid"])] if math.isfinite(opt["lr_grid"]) else s.iloc[0:0]
        n_finished = int((s["n_seeds"] > 0).sum())
        rows.append({"axis": ax, "scale": scale,
                     "opt_lr": opt["lr_grid"], "opt_log2_lr": _log2(opt["lr_grid"]),
                     "opt_lr_fit": opt["lr_fit"], "opt_log2_lr_fit": _log2(opt["lr_fit"]),
                     "best_loss": best,
                     "best_loss_std": float(best_cell["std"].iloc[0]) if len(best_cell) else math.nan,
                     "n_seeds": int(best_cell["n_seeds"].iloc[0]) if len(best_cell) else 0,
                     "base_scale": base_scale, "base_lr": base_lr, "loss_at_base_lr": loss_at_base,
                     "regret": regret, "base_lr_diverged": base_diverged, "base_lr_missing": bool(base_missing),
                     "n_lrs": len(s), "n_finished": n_finished, "n_diverged": int(s["diverged"].sum()),
                     "edge": bool(opt["on_edge"] and n_finished > 0), "too_few": n_finished < min_runs})
    return rows


def _tidy_keys(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Whole-number float key columns (ints that picked up NaN from another axis' rows) -> Int64."""
    for k in keys:
        col = table[k]
        if pd.api.types.is_float_dtype(col):
            vals = col.dropna()
            if len(vals) and np.all(np.isfinite(vals)) and np.all(vals == np.round(vals)):
                table[k] = col.astype("Int64")
    return table


def transfer_table(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None,
                   min_runs: int = 3) -> pd.DataFrame:
    """One row per (series, group keys, axis, scale): the optimum and the regret of the base LR.

    Columns: ``series``, the group keys (e.g. ``depth`` when axis is width in a width x depth
    grid), then ``TRANSFER_COLUMNS[1:]`` (see the module doc). Rows are in order of series'
    first appearance, then group, then ascending scale.
    """
    runs = _prepare(runs)
    metric_column(metric, runs)
    rows, all_keys = [], []
    for ax in resolve_axes(runs, axis):
        c = cells(runs, metric, ax)
        extra = [k for k in c.columns if k not in ("series", ax, "lr", *CELL_STATS)]
        all_keys += [k for k in extra if k not in all_keys]
        for gkey, g in c.groupby(["series", *extra], dropna=False, sort=False):
            label = {"series": gkey[0], **dict(zip(extra, gkey[1:]))}
            rows += [{**label, **r} for r in _scale_rows(g, ax, min_runs)]
    table = pd.DataFrame(rows)
    if table.empty:
        raise UserError("no runs to analyse")
    if table["opt_lr"].isna().all():
        raise UserError(f"no finished runs with a finite {METRICS[metric]}: every run diverged or failed "
                        f"(statuses: {', '.join(sorted(set(runs['status'].astype(str))))})")
    table = table[["series", *all_keys, *TRANSFER_COLUMNS[1:]]]
    return _tidy_keys(table, all_keys)


def group_columns(table: pd.DataFrame) -> list[str]:
    """The group-key columns of a transfer (or drift) table: those not in its fixed schema."""
    return [k for k in table.columns if k not in TRANSFER_COLUMNS and k not in DRIFT_COLUMNS]


def _flags(g: pd.DataFrame) -> str:
    def at(mask, name):
        return [f"{name}@{s}" for s in g.loc[mask, "scale"]]
    return " ".join(at(g["n_finished"] == 0, "no-finished") + at(g["edge"], "edge")
                    + at(g["too_few"] & (g["n_finished"] > 0), "too-few")
                    + at(g["base_lr_diverged"], "base-lr-diverged") + at(g["base_lr_missing"], "base-lr-not-run"))


def drift_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (series, group keys, axis) of a transfer table.

    ``drift_octaves`` / ``drift_octaves_fit``: max − min of the grid / fitted log2 optimal LR
    over the scales with an optimum (``n_scales`` of them); ``slope``: least-squares slope of
    the fitted log2 optimum vs log2(scale) (NaN below 2 scales); ``max_regret`` (inf when the
    base LR diverged somewhere); ``flags``: space-separated ``kind@scale`` with kind one of
    no-finished, edge, too-few, base-lr-diverged, base-lr-not-run.
    """
    extra = group_columns(table)
    rows = []
    for gkey, g in table.groupby(["series", *extra, "axis"], dropna=False, sort=False):
        has = g[g["opt_log2_lr"].notna()]
        opt, fit = has["opt_log2_lr"], has["opt_log2_lr_fit"]
        slope = math.nan
        if len(has) >= 2:
            slope = float(np.polyfit(np.log2(has["scale"].astype(float)), fit.astype(float), 1)[0])
        regrets = g["regret"].dropna()
        rows.append({"series": gkey[0], **dict(zip(extra, gkey[1:-1])), "axis": gkey[-1],
                     "base_scale": g["base_scale"].iloc[0], "base_lr": g["base_lr"].iloc[0],
                     "drift_octaves": float(opt.max() - opt.min()) if len(opt) else math.nan,
                     "drift_octaves_fit": float(fit.max() - fit.min()) if len(fit) else math.nan,
                     "slope": slope, "max_regret": float(regrets.max()) if len(regrets) else math.nan,
                     "n_scales": len(has), "flags": _flags(g)})
    drift = pd.DataFrame(rows, columns=["series", *extra, *DRIFT_COLUMNS[1:]])
    return _tidy_keys(drift, extra)


# ----------------------------------------------------------------------------- report

def _json_value(v):
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    return v if isinstance(v, str) else str(v)


def _records(df: pd.DataFrame) -> list[dict]:
    return [{str(k): _json_value(v) for k, v in row.items()} for row in df.astype(object).to_dict("records")]


def _missing(x) -> bool:
    return x is None or x is pd.NA or (isinstance(x, (float, np.floating)) and math.isnan(x))


def _pow2(x) -> str:
    """An LR as 2^k (k with 2 decimals when off the power-of-two grid)."""
    if _missing(x) or not np.isfinite(x) or x <= 0:
        return "—"
    k = math.log2(x)
    return f"2^{round(k)}" if abs(k - round(k)) < 1e-9 else f"2^{k:.2f}"


def _num(x, digits: int = 4) -> str:
    if _missing(x):
        return "—"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}f}"


def _label(row: dict, extra: list[str]) -> str:
    return str(row["series"]) + "".join(f", {k}={row[k]}" for k in extra if not _missing(row[k]))


def _markdown(table: pd.DataFrame, drift: pd.DataFrame, metric: str, min_runs: int) -> str:
    extra = group_columns(table)
    lines = [f"## LR transfer: {metric} ({METRICS[metric]})", "",
             (f"Optimal LR = grid argmin of the seed-mean {metric}; fitted = parabola vertex in log2(lr); "
             f"regret = loss at the base-scale optimal LR − best loss; flags: edge (optimum at the end of the "
             f"LR grid), too-few (< {min_runs} finished LRs), base-lr-diverged, base-lr-not-run, no-finished."), ""]
    for gkey, g in table.groupby(["series", *extra, "axis"], dropna=False, sort=False):
        ax = gkey[-1]
        first = g.iloc[0].to_dict()
        base_scale = first["base_scale"]
        lines += [f"### {_label(first, extra)}: {metric} across {ax}", "",
                  f"| {ax} | optimal LR | fitted | best loss | loss at base LR | regret "
                  "| finished / diverged | flags |",
                  "|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in g.to_dict("records"):
            flags = " ".join(name for name, on in (("no-finished", r["n_finished"] == 0), ("edge", r["edge"]),
                                                   ("too-few", r["too_few"] and r["n_finished"] > 0),
                                                   ("base-lr-diverged", r["base_lr_diverged"]),
                                                   ("base-lr-not-run", r["base_lr_missing"])) if on)
            lines.append(f"| {r['scale']} | {_pow2(r['opt_lr'])} | {_pow2(r['opt_lr_fit'])} | {_num(r['best_loss'])} "
                         f"| {_num(r['loss_at_base_lr'])} | {_num(r['regret'])} "
                         f"| {r['n_finished']} / {r['n_diverged']} | {flags} |")
        sel = (drift["series"] == gkey[0]) & (drift["axis"] == ax)
        for k, v in zip(extra, gkey[1:-1]):
            sel &= drift[k].isna() if _missing(v) else (drift[k] == v)
        d = drift[sel.fillna(False)].iloc[0]
        lines += ["", f"**drift: {_num(d['drift_octaves'], 2)} octaves** (fitted {_num(d['drift_octaves_fit'], 2)}, "
                      f"slope {_num(d['slope'], 2)} octaves of LR per octave of {ax}) over {d['n_scales']} scales; "
                      f"base LR {_pow2(d['base_lr'])} at {ax}={base_scale}; max regret {_num(d['max_regret'])}"
                      + (f"; flags: {d['flags']}" if d["flags"] else ""), ""]
    lines += ["### Summary", "", "| series | axis | drift (octaves) | fitted | slope | max regret | flags |",
              "|---|---|---:|---:|---:|---:|---|"]
    for r in drift.to_dict("records"):
        lines.append(f"| {_label(r, extra)} | {r['axis']} | {_num(r['drift_octaves'], 2)} "
                     f"| {_num(r['drift_octaves_fit'], 2)} | {_num(r['slope'], 2)} | {_num(r['max_regret'])} "
                     f"| {r['flags']} |")
    return "\n".join(lines) + "\n"


def report(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, format: str = "markdown",
           min_runs: int = 3) -> str:
    """The transfer report.

    * ``markdown``: per (series, group, axis) a table of scale / optimal LR (2^k) / fitted /
      best loss / loss at base LR / regret / finished and diverged LRs / flags, then a drift
      line; a summary table at the end.
    * ``json``: ``{"metric", "column", "min_runs", "transfer": [rows], "drift": [rows]}``,
      strict JSON: NaN/missing -> null, ±inf -> "inf"/"-inf".
    * ``csv``: the transfer table with the drift columns of its group merged in.
    """
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: allowed: {', '.join(FORMATS)}")
    table = transfer_table(runs, metric, axis, min_runs)
    drift = drift_table(table)
    if format == "json":
        doc = {"metric": metric, "column": METRICS[metric], "min_runs": min_runs,
               "transfer": _records(table), "drift": _records(drift)}
        return json.dumps(doc, indent=2, allow_nan=False) + "\n"
    if format == "csv":
        keys = ["series", *group_columns(table), "axis"]
        own = [c for c in ("drift_octaves", "drift_octaves_fit", "slope", "max_regret", "n_scales", "flags")]
        return table.merge(drift[keys + own], on=keys, how="left").to_csv(index=False)
    return _markdown(table, drift, metric, min_runs)
