"""``import``: runs trained elsewhere (CSV, parquet, a W&B runs-table export, MLflow) as a results directory."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..results.importer import SKIPPED_FILE, SOURCES
from .common import app, choice_help, say, user_errors

SHOWN_SKIPPED = 20   # skipped rows printed; the rest are in import_skipped.csv


@app.command("import", examples=(
    "lrtransfer import runs.csv --map lr=learning_rate --map width=n_embd --map loss=val_loss --series optimizer "
    "--seed seed --results results/mine",
    "lrtransfer import log.parquet --map lr=lr --map width=d_model --map loss=loss --step step --results results/curves"
    "  # a long table: one row per logged step",
    "lrtransfer import wandb_export.csv --map lr=learning_rate --map width=width --map loss=train/loss "
    "--results results/wb  # State: finished/crashed/failed",
    "lrtransfer import --from mlflow --uri sqlite:///mlflow.db --experiment sweep --map lr=lr --map width=width "
    "--map loss=loss --results results/mlf",
    "lrtransfer report results/mine  # then report, plot and compare as for a sweep"))
@user_errors
def import_(file: Optional[Path] = typer.Argument(None, help="a CSV or parquet table (one row per run, or one per "
                                                  "logged step), or a W&B runs-table CSV export; none with --from "
                                                  "mlflow"),
            map_: List[str] = typer.Option([], "--map", metavar="KEY=COLUMN",
                                           help="the file's column holding a lrtransfer key (repeat): lr (required), "
                                           "a scale key (width, depth, batch_size, steps or any numeric key; one "
                                           "at least), loss (= train_loss), train_loss, test_loss or test_acc (one "
                                           "at least), and optionally series, seed and status"),
            series: Optional[str] = typer.Option(None, "--series", metavar="COLUMN",
                                                 help="the column whose values name the series (the same as --map "
                                                 "series=COLUMN; default: one series, 'imported')"),
            seed: Optional[str] = typer.Option(None, "--seed", metavar="COLUMN",
                                               help="the column holding each run's seed (the same as --map "
                                               "seed=COLUMN; default: a cell's runs are numbered 0, 1, ... in file "
                                               "order)"),
            step: Optional[str] = typer.Option(None, "--step", metavar="COLUMN",
                                               help="a long table's step column: one row per logged step, each run's "
                                               "rows giving its curve (default: a column named step, global_step "
                                               "or iteration, if the file has one)"),
            source: str = typer.Option("auto", "--from", metavar="SOURCE",
                                       help=choice_help(SOURCES, "auto: by the file's suffix, a CSV with W&B's Name "
                                                        "and State columns read as a W&B export")),
            uri: Optional[str] = typer.Option(None, "--uri", help="--from mlflow: the tracking URI"),
            experiment: Optional[str] = typer.Option(None, "--experiment", help="--from mlflow: the experiment"),
            results: Path = typer.Option(..., "--results", help="the results directory to write (must not exist, "
                                         "or be empty)"),
            replace: bool = typer.Option(False, "--replace", help="replace an existing results directory whole "
                                         "(an import never merges into one)")):
    """Import runs trained elsewhere: map a table's columns to lrtransfer keys and write a results
    directory that report, plot and compare read like a sweep's. Rows that cannot be mapped are
    listed here and in RESULTS/import_skipped.csv."""
    from ..results.importer import import_runs, parse_mapping
    mapping = parse_mapping(map_, series=series, seed=seed)
    done = import_runs(results, mapping, path=file, kind=source, step=step, uri=uri, experiment=experiment,
                       replace=replace)
    runs = done.runs
    counts = runs["status"].value_counts()
    states = ", ".join(f"{counts[s]} {s}" for s in ("done", "diverged", "failed") if s in counts)
    shape = "one row per logged step, curves written" if done.long else "one row per run"
    say(f"{done.root}: {len(runs)} runs imported ({states}; {runs['series'].nunique()} series) from "
        f"{runs['source'].iloc[0].removeprefix('imported from ')} ({done.kind}, {shape})")
    if len(done.skipped):
        say(f"{len(done.skipped)} rows skipped (all in {done.root / SKIPPED_FILE}):")
        for row, why in done.skipped.head(SHOWN_SKIPPED).itertuples(index=False):
            say(f"  row {row}: {why}")
        if len(done.skipped) > SHOWN_SKIPPED:
            say(f"  ... and {len(done.skipped) - SHOWN_SKIPPED} more")
