"""The transfer report: ``analysis.transfer`` numbers rendered as markdown, JSON or CSV.

* ``markdown``: one quotable line per series and axis (verdict, drift, slope and regret at the
  largest scale with their CIs, flags, and for an undecided verdict what would decide it), one
  per contrast between series ("normed Adam drifts 3.06 octaves less than Adam ..."), a summary
  table, a contrasts table, then per (series, group, axis) a
  table of scale / optimal LR (2^k) / fitted / its CI / best value / value at the base LR /
  regret / its CI / seeds / finished and diverged LRs / flags.
* ``json``: ``{"metric", "column", "direction", "min_runs", "ci", "tolerance", "n_boot",
  "seed", "transfer": [rows], "drift": [verdict_table rows], "contrasts": [contrast rows]}``,
  strict JSON (``render.records``),
  with ``"prediction": [analysis.predict rows]`` when asked for (``--predict``; markdown: a
  "Prediction" section).
* ``csv``: the transfer table (per-scale ``regret_ci_lo``/``_hi``, ...) with its group's
  ``CSV_GROUP_COLUMNS`` of the verdict table merged in (``drift_ci_lo``/``_hi``, ...).

A results directory whose runs vary no scale axis has no transfer part (``no_transfer``): a
one-line note in markdown, empty ``transfer``/``drift`` lists and a ``note`` in JSON, and a
UserError for CSV.
"""
from __future__ import annotations

import pandas as pd

from ..analysis import contrast, transfer as analysis
from ..analysis.common import missing
from ..errors import UserError
from ..run.provenance import SCALE_AXES
from .render import Column, check_format, interval, markdown_table, num, pct, pow2, records, signed, to_json

CSV_GROUP_COLUMNS = ("max_scale", "drift", "drift_ci_lo", "drift_ci_hi", "endpoint_drift", "endpoint_drift_ci_lo",
                     "endpoint_drift_ci_hi", "drift_octaves", "drift_octaves_fit", "slope", "slope_ci_lo",
                     "slope_ci_hi", "intercept", "intercept_ci_lo", "intercept_ci_hi", "law_scatter", "max_regret", "n_scales", "verdict", "flags",
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
            f"[{pct(row['ci'])} CI {signed(row['drift_ci_lo'])}, {signed(row['drift_ci_hi'])}] "
            f"(endpoints {signed(row['endpoint_drift'])}), "
            f"slope {signed(row['slope'])} {interval(row['slope_ci_lo'], row['slope_ci_hi'], signed)} "
            f"octaves/octave, regret at {ax} {row['max_scale']} {num(row['regret'], 3)}{unit} "
            f"{interval(row['regret_ci_lo'], row['regret_ci_hi'], lambda v: num(v, 3))}")
    line += f"; flags: {row['flags']}" if row["flags"] else ""
    decide = analysis.to_decide(row)
    return line + (f"; to decide: {decide}" if decide else "")


def _ci_column(key: str, header: str, fmt) -> Column:
    return Column(key, header, lambda r: interval(r[f"{key}_ci_lo"], r[f"{key}_ci_hi"], fmt), right=True)


def _summary_columns(extra: list[str], p: str) -> list[Column]:
    return [Column("_label", "series"), Column("axis", "axis"), Column("verdict", "verdict"),
            Column("drift", "drift (octaves)", signed, True), Column("_drift_ci", f"drift {p} CI", str, True),
            Column("endpoint_drift", "endpoint drift", signed, True),
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


def contrast_table(contrasts: pd.DataFrame, p: str) -> str:
    """The contrasts as a markdown table: slope and drift differences with their CIs."""
    extra = [k for k in contrasts.columns if k not in contrast.CONTRAST_COLUMNS]
    rows = [{**r, "_pair": f"{r['series_a']} − {r['series_b']}" + "".join(f", {k}={r[k]}" for k in extra
                                                                          if not missing(r[k])),
             "_range": f"{r['base_scale']}→{r['max_scale']}",
             "_slope_ci": interval(r["slope_diff_ci_lo"], r["slope_diff_ci_hi"], signed),
             "_drift_ci": interval(r["drift_diff_ci_lo"], r["drift_diff_ci_hi"], signed),
             "_abs_ci": interval(r["abs_drift_diff_ci_lo"], r["abs_drift_diff_ci_hi"], signed),
             "_decided": "yes" if r["decided"] else "no"} for r in contrasts.to_dict("records")]
    columns = [Column("_pair", "a − b"), Column("axis", "axis"), Column("_range", "scales", str, True),
               Column("slope_diff", "slope diff", signed, True), Column("_slope_ci", f"{p} CI", str, True),
               Column("drift_diff", "drift diff", signed, True), Column("_drift_ci", f"{p} CI", str, True),
               Column("abs_drift_diff", "abs. drift diff", signed, True), Column("_abs_ci", f"{p} CI", str, True),
               Column("_decided", "decided")]
    return markdown_table(rows, columns)


def markdown(table: pd.DataFrame, summary: pd.DataFrame, metric: str, min_runs: int, ci: float,
             tolerance: float, n_boot: int, contrasts: pd.DataFrame | None = None) -> str:
    spec = analysis.metric_spec(metric)
    extra = analysis.group_columns(table)
    p = pct(ci)
    best = "maximum" if spec.maximize else "argmin"
    lines = [f"## LR transfer: {metric} ({spec.column})", ""]
    lines += [f"- {summary_line(r, extra, metric)}" for r in summary.to_dict("records")]
    if contrasts is not None and len(contrasts):
        lines += [f"- {contrast.headline(r)}" for r in contrasts.to_dict("records")]
    lines += ["",
             f"Verdict per series and axis from the {p} bootstrap CI (over seeds, {n_boot} replicates) of the "
             f"drift = slope × log2(largest scale / base scale), the slope being that of the optimum's law, the "
             f"least-squares line of the fitted log2 optimal LR against log2 scale through every scale: "
             f"**transfers** when it lies within ±{tolerance:g} octave{'' if tolerance == 1 else 's'}, **drifts** "
             f"when wholly outside, else **inconclusive** (also with an edge, too-few, too-few-seeds, few-seeds "
             f"(fewer than {analysis.CALIBRATED_SEEDS} seeds: the CI is not calibrated there) or single-scale "
             f"flag). Slope: octaves of LR per octave of scale. Endpoint drift: fitted log2 optimal LR at the "
             f"largest scale − at the base scale (two scales only). "
             + ("Regret: seed-mean loss at the base-scale fitted LR (linear in log2 LR) − best seed-mean loss."
                if not spec.maximize else
                f"Regret: best seed-mean {metric} − seed-mean {metric} at the base-scale fitted LR (linear in "
                f"log2 LR); {metric} is maximized."), ""]
    lines += ["Grid drift: max − min of the grid (unfitted) log2 optimal LR over the scales, in octaves.", "",
              f"flat: the LRs within one standard error of the best seed-mean {metric} span ≥ 2 octaves, so the "
              f"optimum is poorly determined (informational).", "",
              f"worse-with-scale: {metric} at the base LR is worse at the largest scale than at the base scale, "
              f"its {p} CI wholly on the worse side (informational).", ""]
    if contrasts is not None and len(contrasts):
        lines += [f"Contrasts: for each pair of series on the same axis, |drift| of the first − |drift| of the "
                  f"second over the scales both cover, with its {p} CI from the same bootstrap; decided when the "
                  f"CI excludes 0 (docs/analysis.md §4).", ""]
    rows = [{**r, "_label": label(r, extra),
             "_drift_ci": interval(r["drift_ci_lo"], r["drift_ci_hi"], signed),
             "_slope_ci": interval(r["slope_ci_lo"], r["slope_ci_hi"], signed),
             "_regret_ci": interval(r["regret_ci_lo"], r["regret_ci_hi"], num)} for r in summary.to_dict("records")]
    lines += ["### Summary", "", markdown_table(rows, _summary_columns(extra, p))]
    if contrasts is not None and len(contrasts):
        lines += ["", "### Contrasts", "", contrast_table(contrasts, p)]
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


def _json_head(metric: str, min_runs: int, ci: float, tolerance: float, n_boot: int, seed: int) -> dict:
    """The JSON report's options, before its tables."""
    spec = analysis.metric_spec(metric)
    return {"metric": metric, "column": spec.column, "direction": spec.direction, "min_runs": min_runs, "ci": ci,
            "tolerance": tolerance, "n_boot": n_boot, "seed": seed}


def no_transfer_note(runs: pd.DataFrame, axis: str | None = None) -> str:
    """The line a report has instead of its transfer section when no scale axis varies (or the
    ``axis`` asked for does not): the scale-like keys and the one value each holds."""
    keys = [axis] if axis else [k for k in SCALE_AXES if k in runs]
    held = [f"{k} = {', '.join(map(str, runs[k].dropna().unique()))}" for k in keys if runs[k].notna().any()]
    what = f"--axis {axis} does not vary" if axis else "No scale axis varies"
    return (f"{what} in these runs ({'; '.join(held) or 'no scale values'}; the scale-like keys are "
            f"{', '.join(SCALE_AXES)}), so there is no LR-transfer verdict.")


def no_transfer(runs: pd.DataFrame, format: str = "markdown", metric: str = "train_loss", axis: str | None = None,
                min_runs: int = 3, ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000, seed: int = 0) -> str:
    """The transfer part of a report whose runs vary no scale axis: markdown, the note alone;
    JSON, the options with empty ``transfer`` and ``drift`` lists and the ``note``; CSV, whose
    whole content is the transfer table, a UserError."""
    check_format(format)
    note = no_transfer_note(runs, axis)
    if format == "csv":
        raise UserError(f"--format csv: {note[0].lower() + note[1:]} The CSV report is the per-scale transfer "
                        f"table, so there is nothing to write; --format markdown or json has the rest of the report.")
    if format == "json":
        return to_json({**_json_head(metric, min_runs, ci, tolerance, n_boot, seed), "transfer": [], "drift": [],
                        "note": note})
    return note + "\n"


def check_predict_format(format: str) -> None:
    """UserError for ``--predict`` with CSV, whose one table has no place for a prediction."""
    if format == "csv":
        raise UserError("--predict with --format csv: the CSV report is the per-scale transfer table and has no "
                        "place for a prediction; allowed: --format markdown or json")


def prediction_markdown(prediction: pd.DataFrame, ci: float) -> str:
    """The "Prediction" section: per group and target the optimal LR the optimum's law predicts."""
    p = pct(ci)
    extra = analysis.group_columns(prediction)
    rows = [{**r, "_label": label(r, extra),
             "_pi": interval(r["pred_log2_lr_lo"], r["pred_log2_lr_hi"], lambda v: num(v, 2)),
             "_law": (f"{num(r['intercept'], 2)} {signed(r['slope'])}·log2 {r['axis']}"
                      if not missing(r["slope"]) else "—")} for r in prediction.to_dict("records")]
    columns = [Column("_label", "series"), Column("axis", "axis"), Column("target", "target", str, True),
               Column("pred_lr", "predicted LR", pow2, True), Column("_pi", f"log2 {p} PI", str, True),
               Column("octaves_beyond", "octaves beyond", lambda v: num(v, 2), True),
               Column("_law", "law: log2 η* ="), Column("law_scatter", "scatter", lambda v: num(v, 2), True),
               Column("flags", "flags")]
    return "\n".join(["### Prediction", "",
                      f"The optimum's law, log2 η* = intercept + slope·log2 scale (least squares through every "
                      f"scale's fitted optimum), at each --predict target. The {p} prediction interval (PI) holds "
                      f"the seeds' bootstrap uncertainty of the line and, with ≥ 3 scales, the scatter of the "
                      f"optima about it beyond their noise (scatter, octaves); octaves beyond: how far outside "
                      f"the swept scales the law is extrapolated (0 inside).", "",
                      markdown_table(rows, columns)]) + "\n"


def render(table: pd.DataFrame, summary: pd.DataFrame, format: str = "markdown", metric: str = "train_loss",
           min_runs: int = 3, ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000, seed: int = 0,
           prediction: pd.DataFrame | None = None, contrasts: pd.DataFrame | None = None) -> str:
    """``analysis.analyse``'s two tables (and ``analysis.predict``'s, ``analysis.contrast``'s) as the
    report text in ``format`` (see the module doc)."""
    check_format(format)
    if prediction is not None:
        check_predict_format(format)
    if format == "json":
        return to_json({**_json_head(metric, min_runs, ci, tolerance, n_boot, seed),
                        "transfer": records(table), "drift": records(summary),
                        **({"contrasts": records(contrasts)} if contrasts is not None else {}),
                        **({"prediction": records(prediction)} if prediction is not None else {})})
    if format == "csv":
        keys = ["series", *analysis.group_columns(table), "axis"]
        return table.merge(summary[keys + list(CSV_GROUP_COLUMNS)], on=keys, how="left").to_csv(index=False)
    text = markdown(table, summary, metric, min_runs, ci, tolerance, n_boot, contrasts)
    return text if prediction is None else text + "\n" + prediction_markdown(prediction, ci)


def report(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, format: str = "markdown",
           min_runs: int = 3, ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000, seed: int = 0,
           predict: dict | None = None, contrast_pairs=None) -> str:
    """The transfer report of ``runs`` in ``format`` (markdown | json | csv): ``analysis.analyse``'s
    numbers rendered by ``render``, with the contrasts between series (``analysis.contrast``: the
    ``contrast_pairs`` named, e.g. ``["normed_adam:adam"]``, else every pair on the same axis);
    with ``predict`` (``{axis: value or [values]}``, markdown and JSON only) also the optimal LR the
    optimum's law predicts there (``analysis.predict``)."""
    check_format(format)
    prediction = None
    if predict:
        check_predict_format(format)
        prediction = analysis.predict(runs, predict, metric, min_runs, ci, n_boot, seed)
    pairs = contrast.parse_pairs(contrast_pairs)
    table, summary, boots = analysis.analyse_with_replicates(runs, metric, axis, min_runs, ci, tolerance, n_boot,
                                                             seed)
    contrasts = contrast.contrasts(summary, boots, pairs, ci)
    return render(table, summary, format, metric, min_runs, ci, tolerance, n_boot, seed, prediction, contrasts)
