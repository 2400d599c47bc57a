"""Checking committed results on this machine: ``reproduce``."""
from __future__ import annotations

import math
from typing import Optional

import typer

from ..report.render import Column, check_format, markdown_table, num, pow2, records, to_csv, to_json
from .common import Format, Metric, Quiet, ResultsDir, app, err, say, user_errors


def _yes(x) -> str:
    return "yes" if x else "NO"


def _dash(x) -> str:
    return str(x) if x else "-"


def _ratio(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}" if math.isfinite(x) else "inf"


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:+.3g}%"


def markdown(rep) -> str:
    """The reproduction as markdown: machine, warnings, cells, optima, verdicts, the summary line."""
    from ..sweep.reproduce import SPREADS
    c = rep.cells
    scale = [k for k in ("width", "depth") if k in c and c[k].nunique() > 1] or ["width"]
    extra = [k for k in c.columns if k not in {"run_id", "series", "width", "depth", "lr", "seed", "recorded_status",
                                               "status", "recorded", "reproduced", "diff", "rel_diff", "spread",
                                               "diff_spreads", "identical", "holds", "how", "recorded_machine",
                                               "same_run_id"}]
    cols = [Column("run_id", "run id"), Column("series", "series"), *[Column(k, k, str, True) for k in scale + extra],
            Column("lr", "lr", pow2, True), Column("seed", "seed", str, True),
            Column("recorded", f"recorded {rep.metric}", num, True), Column("reproduced", "here", num, True),
            Column("diff", "diff", lambda x: num(x, 3), True), Column("rel_diff", "rel", _pct, True),
            Column("spread", "seed spread", lambda x: num(x, 3), True),
            Column("diff_spreads", "diff/spread", _ratio, True), Column("identical", "bit-identical", _yes),
            Column("holds", "holds", _yes), Column("how", "trained"), Column("recorded_machine", "recorded on")]
    rows = [{**r, "status": r["status"]} for r in c.to_dict("records")]
    for r in rows:
        if r["status"] != "done" or r["recorded_status"] != "done":
            r["how"] = f"{r['how']}; {r['recorded_status']} -> {r['status']}"
    here = ", ".join(f"{k}: {v or '-'}" for k, v in rep.machine.items())
    parts = [f"# Reproducing {rep.results_dir}", "", f"Here: {here}.", ""]
    parts += [f"warning: {w}" for w in rep.warnings] + ([""] if rep.warnings else [])
    parts += [markdown_table(rows, cols), "",
              f"A cell holds when it is bit-identical, diverged both times, or differs by at most {SPREADS:g}x "
              f"the std of its recorded seeds (seed spread).", ""]
    if len(rep.optima):
        o_cols = [Column(k, k) for k in rep.optima.columns if k not in ("recorded_opt_lr", "opt_lr", "recorded_flags",
                                                                         "flags", "holds")]
        o_cols += [Column("recorded_opt_lr", "recorded optimum", pow2, True), Column("opt_lr", "here", pow2, True),
                   Column("recorded_flags", "recorded flags", _dash), Column("flags", "flags here", _dash),
                   Column("holds", "holds", _yes)]
        v_cols = [Column(k, k) for k in rep.verdicts.columns if k not in ("recorded_verdict", "verdict",
                                                                           "recorded_flags", "flags", "holds")]
        v_cols += [Column("recorded_verdict", "recorded verdict"), Column("verdict", "here"),
                   Column("recorded_flags", "recorded flags", _dash), Column("flags", "flags here", _dash),
                   Column("holds", "holds", _yes)]
        parts += ["Optima (the transfer analysis with the reproduced values in place of the recorded ones):", "",
                  markdown_table(rep.optima.to_dict("records"), o_cols), "",
                  markdown_table(rep.verdicts.to_dict("records"), v_cols), ""]
    parts.append(rep.summary())
    return "\n".join(parts)


def as_json(rep) -> str:
    from ..sweep.reproduce import SPREADS
    return to_json({"results_dir": rep.results_dir, "metric": rep.metric, "ok": rep.ok, "summary": rep.summary(),
                    "rule": f"|diff| <= {SPREADS:g} x seed spread, or bit-identical, or diverged both times",
                    "machine": rep.machine, "warnings": rep.warnings, "seconds": rep.seconds,
                    "cells": records(rep.cells), "optima": records(rep.optima), "verdicts": records(rep.verdicts)})


@app.command(examples=(
    "lrtransfer reproduce results/quickstart  # 8 cells: the optima first",
    "lrtransfer reproduce results/quickstart --cells 20 --seed 1 --format json"))
@user_errors
def reproduce(results_dir: ResultsDir,
              cells: int = typer.Option(8, "--cells", help="how many of the directory's finished cells to re-run: "
                                        "each series' optimum at each scale first, then the LRs beside it, then others"),
              seed: int = typer.Option(0, "--seed", help="which cells the sample takes (same seed, same cells)"),
              metric: Metric = "train_loss",
              device: Optional[str] = typer.Option(None, "--device", metavar="DEVICE",
                                                   help="cpu | cuda | cuda:N (default: the kind each cell was "
                                                        "recorded on)"),
              format: Format = typer.Option(Format.markdown, help="markdown, json, or the cells as csv"),
              quiet: Quiet = False):
    """Re-run a sample of a results directory's cells here, in memory (the directory is not
    written), and check its numbers and verdicts hold on this machine.

    Per cell: the recorded and reproduced final metric, their difference beside the cell's seed
    spread (std over its recorded seeds), and whether it is bit-identical (docs/results.md: same
    machine, threads and torch build). Then the transfer analysis with the reproduced values in
    place of the recorded ones: does each optimum and verdict still hold?

    Exit codes: 0 every cell holds (bit-identical, or within 2x its seed spread) and no optimum,
    flag or verdict changed; 1 otherwise; 2 bad input.
    """
    from ..sweep.reproduce import reproduce as run
    fmt = format.value if hasattr(format, "value") else str(format)
    check_format(fmt)

    def on_cell(done, total):
        if not quiet:
            say(f"reproduce: {done}/{total} cells", err)

    rep = run(results_dir, cells=cells, seed=seed, metric=metric, device=device, on_cell=on_cell)
    if fmt == "json":
        say(as_json(rep).rstrip("\n"))
    elif fmt == "csv":
        say(to_csv(rep.cells).rstrip("\n"))
    else:
        say(markdown(rep))
    if fmt != "markdown":
        say(rep.summary(), err)
    if not rep.ok:
        raise typer.Exit(1)

