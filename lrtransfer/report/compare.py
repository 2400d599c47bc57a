"""``lrtransfer compare``: the tables of ``analysis.compare.comparison`` as markdown, JSON or CSV."""
from __future__ import annotations

import pandas as pd

from ..analysis import contrast
from ..analysis.transfer import metric_spec
from .transfer import contrast_table
from .render import Column, check_format, headed, interval, markdown_table, num, pct, plus, records, to_csv, to_json


def _optimum(r: dict) -> str:
    return f"{plus(r['opt_log2_lr_fit'])} {interval(r['opt_log2_lr_fit_lo'], r['opt_log2_lr_fit_hi'], plus)}"


VERDICT_TABLE = [Column("results", "results"), Column("series", "series"), Column("_axis", "axis"),
                 Column("_verdict", "verdict"), Column("_drift", "drift, octaves ({pct} CI)"),
                 Column("_slope", "slope ({pct} CI)")]
SCALE_TABLE = [Column("series", "series"), Column("_scale", "scale"), Column("results", "results"),
               Column("_optimum", "optimal log2 LR (CI)"), Column("shift", "shift", plus, True),
               Column("best_loss", "best {noun}", num, True), Column("n_seeds", "seeds", lambda n: str(int(n)), True)]


def markdown(scales: pd.DataFrame, verdicts: pd.DataFrame, ci: float = 0.9, metric: str = "train_loss",
             contrasts: pd.DataFrame | None = None) -> str:
    """The tables as markdown (``render.markdown_table``): one line per contrast with the first
    directory, verdicts, the contrasts' table, then the optimum per scale."""
    p = pct(ci)
    head = []
    if contrasts is not None and len(contrasts):
        head = [f"- {contrast.headline(r)}" for r in contrasts.to_dict("records")] + [""]
    noun = metric.replace("_", " ") if metric_spec(metric).maximize else "loss"
    rows = [{**r, "_axis": f"{r['axis']} {r['base_scale']:g}→{r['max_scale']:g}",
             "_verdict": f"**{r['verdict']}**" + (f" ({r['flags']})" if r.get("flags") else ""),
             "_drift": f"{plus(r['drift'])} {interval(r['drift_ci_lo'], r['drift_ci_hi'], plus)}",
             "_slope": f"{plus(r['slope'])} {interval(r['slope_ci_lo'], r['slope_ci_hi'], plus)}"}
            for r in verdicts.to_dict("records")]
    first = scales["results"].iloc[0] if len(scales) else ""
    ordered = scales.sort_values(["series", "axis", "scale"], kind="stable")
    per_scale = [{**r, "_scale": f"{r['axis']}={r['scale']:g}", "_optimum": _optimum(r)}
                 for r in ordered.to_dict("records")]
    between = []
    if contrasts is not None and len(contrasts):
        between = ["## Contrasts with the first directory", "",
                   f"Each series against the same series in `{contrasts['series_a'].iloc[0].split(':')[0]}`: "
                   f"|drift| there − |drift| here over the scales both cover (positive: the optimum moves less "
                   f"here), with its {p} CI (docs/analysis.md §4).", "", contrast_table(contrasts, p), ""]
    return "\n".join([*head, "## Verdicts", "", markdown_table(rows, headed(VERDICT_TABLE, pct=p)), "",
                      *between, "## Optimum per scale", "",
                      f"Fitted optimal LR (log2, {p} CI) and best seed-mean {noun}; shift = this optimum minus "
                      f"`{first}`'s at the same series and scale, in octaves.", "",
                      markdown_table(per_scale, headed(SCALE_TABLE, noun=noun))]) + "\n"


def render_comparison(scales: pd.DataFrame, verdicts: pd.DataFrame, format: str = "markdown", ci: float = 0.9,
                      metric: str = "train_loss", contrasts: pd.DataFrame | None = None) -> str:
    """markdown (``markdown``), JSON ``{"verdicts": [...], "scales": [...], "contrasts": [...]}``
    (strict, CI pairs as lists) or CSV (the per-scale table)."""
    check_format(format)
    if format == "json":
        return to_json({"metric": metric, "verdicts": records(verdicts), "scales": records(scales),
                        **({"contrasts": records(contrasts)} if contrasts is not None else {})})
    if format == "csv":
        return to_csv(scales, digits=None)
    return markdown(scales, verdicts, ci, metric, contrasts)
