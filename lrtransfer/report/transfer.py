"""The transfer report: ``analysis.transfer`` numbers rendered as markdown, JSON or CSV.

* ``markdown``: one quotable line per series and axis (verdict, drift, slope and regret at the
  largest scale with their CIs, flags), a summary table, then per (series, group, axis) a
  table of scale / optimal LR (2^k) / fitted / its CI / best value / value at the base LR /
  regret / its CI / seeds / finished and diverged LRs / flags.
* ``json``: ``{"metric", "column", "direction", "min_runs", "ci", "tolerance", "n_boot",
  "seed", "transfer": [rows], "drift": [verdict_table rows]}``, strict JSON (``render.records``).
* ``csv``: the transfer table (per-scale ``regret_ci_lo``/``_hi``, ...) with its group's
  ``CSV_GROUP_COLUMNS`` of the verdict table merged in (``drift_ci_lo``/``_hi``, ...).
"""
from __future__ import annotations

import pandas as pd

from ..analysis import transfer as analysis
from ..analysis.common import missing
from .render import Column, check_format, interval, markdown_table, num, pct, pow2, records, signed, to_json

CSV_GROUP_COLUMNS = ("max_scale", "drift", "drift_ci_lo", "drift_ci_hi", "drift_octaves", "drift_octaves_fit",
                     "slope", "slope_ci_lo", "slope_ci_hi", "max_regret", "n_scales", "verdict", "flags",
                     "worse_with_scale", "tolerance", "ci")

def label(row: dict, extra: list[str]) -> str:
    """A group's name: its series, then ``, key=value`` for each group key it has."""
    return str(row["series"]) + "".join(f", {k}={row[k]}" for k in extra if k in row and not missing(row[k]))


def summary_line(row: dict, extra: list[str] = (), metric: str = "train_loss") -> str:
    """One quotable sentence for a ``verdict_table`` row (markdown bold on the verdict)."""
    unit = analysis.metric_spec(metric).unit
    ax, n = row["axis"], row["n_seeds"]
    scales = f"{row['base_scale']}→{row['max_scale']}" if not missing(row["max_scale"]) else "—"
    line = (f"{label(row, list(extra))} across {ax} {scales} ({n} seed{'' if n == 1 else 's'}): "
            f"**{row['verdict']}** — drift {signed(row['drift'])} octaves "
            f"[{pct(row['ci'])} CI {signed(row['drift_ci_lo'])}, {signed(row['drift_ci_hi'])}], "
            f"slope {signed(row['slope'])} {interval(row['slope_ci_lo'], row['slope_ci_hi'], signed)} "
            f"octaves/octave, regret at {ax} {row['max_scale']} {num(row['regret'], 3)}{unit} "
            f"{interval(row['regret_ci_lo'], row['regret_ci_hi'], lambda v: num(v, 3))}")
    return line + (f"; flags: {row['flags']}" if row["flags"] else "")


def _ci_column(key: str, header: str, fmt) -> Column:
    return Column(key, header, lambda r: interval(r[f"{key}_ci_lo"], r[f"{key}_ci_hi"], fmt), right=True)


def _summary_columns(extra: list[str], p: str) -> list[Column]:
    return [Column("_label", "series"), Column("axis", "axis"), Column("verdict", "verdict"),
            Column("drift", "drift (octaves)", signed, True), Column("_drift_ci", f"drift {p} CI", str, True),
            Column("slope", "slope", signed, True), Column("_slope_ci", f"slope {p} CI", str, True),
            Column("regret", "regret", num, True), Column("_regret_ci", f"regret {p} CI", str, True),
            Column("max_regret", "max regret", num, True),
            Column("drift_octaves", "grid drift", lambda v: num(v, 2), True), Column("flags", "flags")]


def _scale_columns(ax: str, p: str, noun: str) -> list[Column]:
    return [Column("scale", ax, str, True), Column("opt_lr", "optimal LR", pow2, True),
            Column("opt_lr_fit", "fitted", pow2, True), Column("_fit_ci", f"fitted log2 {p} CI", str, True),
            Column("best_loss", f"best {noun}", num, True), Column("loss_at_base_lr", f"{noun} at base LR", num, True),
            Column("regret", "regret", num, True), Column("_regret_ci", f"regret {p} CI", str, True),
            Column("n_seeds", "seeds", str, True), Column("_runs", "finished / diverged", str, True),
            Column("_flags", "flags")]


def markdown(table: pd.DataFrame, summary: pd.DataFrame, metric: str, min_runs: int, ci: float,
             tolerance: float, n_boot: int) -> str:
    spec = analysis.metric_spec(metric)
    extra = analysis.group_columns(table)
    p = pct(ci)
    best = "maximum" if spec.maximize else "argmin"
    lines = [f"## LR transfer: {metric} ({spec.column})", "",
             f"Verdict per series and axis from the {p} bootstrap CI (over seeds, {n_boot} replicates) of the "
             f"drift = fitted log2 optimal LR at the largest scale − at the base scale: **transfers** when it lies "
             f"within ±{tolerance:g} octave{'' if tolerance == 1 else 's'}, **drifts** when wholly outside, else "
             f"**inconclusive** (also with an edge, too-few, too-few-seeds or single-scale flag). Slope: octaves of "
             f"LR per octave of scale. "
             + ("Regret: seed-mean loss at the base-scale fitted LR (linear in log2 LR) − best seed-mean loss."
                if not spec.maximize else
                f"Regret: best seed-mean {metric} − seed-mean {metric} at the base-scale fitted LR (linear in "
                f"log2 LR); {metric} is maximized."), ""]
    lines += ["Grid drift: max − min of the grid (unfitted) log2 optimal LR over the scales, in octaves.", "",
              f"flat: the LRs within one standard error of the best seed-mean {metric} span ≥ 2 octaves, so the "
              f"optimum is poorly determined (informational).", "",
              f"worse-with-scale: {metric} at the base LR is worse at the largest scale than at the base scale, "
              f"its {p} CI wholly on the worse side (informational).", ""]
    lines += [f"- {summary_line(r, extra, metric)}" for r in summary.to_dict("records")]
    rows = [{**r, "_label": label(r, extra),
             "_drift_ci": interval(r["drift_ci_lo"], r["drift_ci_hi"], signed),
             "_slope_ci": interval(r["slope_ci_lo"], r["slope_ci_hi"], signed),
             "_regret_ci": interval(r["regret_ci_lo"], r["regret_ci_hi"], num)} for r in summary.to_dict("records")]
    lines += ["", "### Summary", "", markdown_table(rows, _summary_columns(extra, p))]
    lines += ["", (f"Per scale: optimal LR = grid {best} of the seed-mean {metric}; fitted = parabola vertex in "
                   f"log2(lr), with its {p} CI in log2(lr); flags: edge (optimum at the end of the LR grid), "
                   f"too-few (< {min_runs} finished LRs), too-few-seeds (< 2 finished seeds at the optimum), flat "
                   f"(LRs within one standard error of the best span ≥ 2 octaves), base-lr-diverged, "
                   f"base-lr-not-run, no-finished."), ""]
    noun = "loss" if not spec.maximize else metric.replace("_", " ")
    for gkey, g in table.groupby(["series", *extra, "axis"], dropna=False, sort=False):
        ax = gkey[-1]
        first = g.iloc[0].to_dict()
        rows = [{**r, "_fit_ci": interval(r["opt_log2_lr_fit_lo"], r["opt_log2_lr_fit_hi"], lambda v: num(v, 2)),
                 "_regret_ci": interval(r["regret_ci_lo"], r["regret_ci_hi"], num),
                 "_runs": f"{r['n_finished']} / {r['n_diverged']}",
                 "_flags": analysis.scale_flags(r)} for r in g.to_dict("records")]
        lines += [f"### {label(first, extra)}: {metric} across {ax}", "",
                  markdown_table(rows, _scale_columns(ax, p, noun)),
                  "", f"Base LR {pow2(first['base_lr'])} (fitted at {ax}={first['base_scale']}).", ""]
    return "\n".join(lines) + "\n"


def render(table: pd.DataFrame, summary: pd.DataFrame, format: str = "markdown", metric: str = "train_loss",
           min_runs: int = 3, ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000, seed: int = 0) -> str:
    """``analysis.analyse``'s two tables as the report text in ``format`` (see the module doc)."""
    check_format(format)
    if format == "json":
        spec = analysis.metric_spec(metric)
        return to_json({"metric": metric, "column": spec.column, "direction": spec.direction,
                        "min_runs": min_runs, "ci": ci, "tolerance": tolerance, "n_boot": n_boot, "seed": seed,
                        "transfer": records(table), "drift": records(summary)})
    if format == "csv":
        keys = ["series", *analysis.group_columns(table), "axis"]
        return table.merge(summary[keys + list(CSV_GROUP_COLUMNS)], on=keys, how="left").to_csv(index=False)
    return markdown(table, summary, metric, min_runs, ci, tolerance, n_boot)


def report(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, format: str = "markdown",
           min_runs: int = 3, ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000, seed: int = 0) -> str:
    """The transfer report of ``runs`` in ``format`` (markdown | json | csv): ``analysis.analyse``'s
    numbers rendered by ``render``."""
    check_format(format)
    table, summary = analysis.analyse(runs, metric, axis, min_runs, ci, tolerance, n_boot, seed)
    return render(table, summary, format, metric, min_runs, ci, tolerance, n_boot, seed)
