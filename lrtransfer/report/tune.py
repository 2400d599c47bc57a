"""Tune's results as text: ``tune`` and ``tune_lrwd`` (``lrtransfer.sweep.tune``) rendered as
markdown (a line per series, its table and its compute), JSON records or CSV."""
from __future__ import annotations

import math

from ..sweep.tune import LrwdTuneResult, TuneResult, compute_table, lrwd_tune_table, tune_table
from . import render


def _log2_text(x) -> str:
    """A tuned value as 2^k, k always with two decimals (a search lands between grid points)."""
    return "—" if render.missing(x) or not x > 0 else f"2^{math.log2(x):.2f}"


def _law_text(row: dict) -> str:
    """The LR the grid's optimum's law predicts at a scale, 2^k with its prediction interval in log2."""
    if render.missing(row["law_lr"]):
        return "—"
    return (f"{_log2_text(row['law_lr'])} "
            f"{render.interval(math.log2(row['law_lr_lo']), math.log2(row['law_lr_hi']), lambda v: f'{v:.2f}')}")


TUNE_COLUMNS = [render.Column("scale", "scale", str, True), render.Column("status", "status"),
                render.Column("loss", "{metric}", render.num, True),
                render.Column("grid_best", "grid best (seed mean)", render.num, True),
                render.Column("regret", "regret", render.num, True),
                render.Column("_law", "the grid's law: LR [log2 90% PI]", str, True)]


def render_tune(results: list[TuneResult], format: str = "markdown", metric: str = "train_loss") -> str:
    """``tune``'s results as text: markdown (per series a line, its table, its compute), or the
    table as JSON records (``{"scales": [...], "compute": [...]}``) or CSV (the per-scale table)."""
    table, compute = tune_table(results), compute_table(results)
    if format == "json":
        return render.to_json({"metric": metric, "scales": render.records(render.rounded(table)),
                               "compute": render.records(render.rounded(compute))})
    if format == "csv":
        return render.to_csv(table)
    columns = render.headed(TUNE_COLUMNS, metric=metric)
    blocks = []
    for r, cost in zip(results, compute.to_dict("records")):
        grid = (f"; the grid's optimum at the base scale is {_log2_text(r.grid_base_lr)}, "
                f"{r.octaves_from_grid:.2f} octaves away" if r.grid_base_lr else "")
        head = f"**{r.series}**: tuned LR {_log2_text(r.lr)} at {r.axis}={r.base_scale} in {r.trials} runs{grid}"
        rows = [{**row, "_law": _law_text(row)} for row in table[table["series"] == r.series].to_dict("records")]
        flops = (f"compute (training FLOPs, counted by torch): {render.flops(r.tune_flops)} to tune small and "
                 f"transfer ({cost['runs']} runs) vs {render.flops(r.target_tuning_flops)} to tune at every "
                 f"larger scale ({cost['flops_ratio']:.1f}x)"
                 + (f"; the full grid: {render.flops(r.grid_flops)} in {r.grid_runs} runs" if r.grid_runs else "")
                 + f". Wall time: {render.seconds(r.tune_seconds)} vs ~{render.seconds(r.target_tuning_seconds)}.")
        blocks.append("\n\n".join([head, render.markdown_table(rows, columns), flops]))
    return "\n\n".join(blocks) + "\n"


def render_lrwd(results: list[LrwdTuneResult], format: str = "markdown", metric: str = "train_loss") -> str:
    """``tune_lrwd``'s results as text: markdown (per series a line and its compute), or the
    table (``lrwd_tune_table``) as JSON records or CSV."""
    table = lrwd_tune_table(results)
    if format == "json":
        return render.to_json(render.records(render.rounded(table)))
    if format == "csv":
        return render.to_csv(table)
    blocks = []
    for r in results:
        where = f" at {r.axis}={r.base_scale}" if r.axis else ""
        grid = (f"; the grid's best cell has lr·wd {_log2_text(r.grid_best_product)} "
                f"({r.octaves_from_grid:.2f} octaves away), {metric} {render.num(r.grid_best_loss)}"
                + (f" ({render.signed(r.loss_above_grid, 4)} worse here)" if r.loss_above_grid is not None else "")
                if r.grid_best_product else "")
        blocks.append(f"**{r.series}**: best lr·wd {_log2_text(r.product)} (wd {r.weight_decay:.3g} at fixed lr "
                      f"{r.lr:g}){where}, {metric} {render.num(r.loss)}, in {r.trials} runs over lr·wd "
                      f"[{r.product_range[0]:.3g}, {r.product_range[1]:.3g}]{grid}\n\n"
                      f"compute: {r.trials} runs vs {r.grid_cells} cells of the lr x weight_decay grid: "
                      f"{100 * r.saved:.0f}% saved ({100 * r.saved_steps:.0f}% of the steps)")
    return "\n\n".join(blocks) + "\n"
