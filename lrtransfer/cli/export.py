"""``export``: a results directory into TensorBoard or MLflow."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..results.export import EXPORT_TARGETS
from .common import ResultsDir, app, choice_help, say, user_errors


@app.command(examples=(
    "lrtransfer export results/quickstart --to tensorboard  # event files in results/quickstart/tensorboard",
    "tensorboard --logdir results/quickstart/tensorboard",
    "lrtransfer export results/quickstart --to mlflow  # into sqlite:///results/quickstart/mlflow.db",
    "lrtransfer export results/quickstart --to mlflow --uri http://localhost:5000 --experiment qs"))
@user_errors
def export(results_dir: ResultsDir,
           to: str = typer.Option(..., "--to", metavar="TARGET",
                                  help=choice_help(EXPORT_TARGETS, "where to: TensorBoard event files or an MLflow "
                                                   "tracking store (extras: lrtransfer[tensorboard], lrtransfer[mlflow])")),
           uri: Optional[str] = typer.Option(None, "--uri", help="tensorboard: the log directory (default "
                                             "RESULTS_DIR/tensorboard, replaced whole); mlflow: any tracking URI "
                                             "(default sqlite:///RESULTS_DIR/mlflow.db)"),
           experiment: Optional[str] = typer.Option(None, "--experiment", help="mlflow: the experiment to log into "
                                                    "(default: the results' experiment name)")):
    """Every run of a results directory into TensorBoard or MLflow: its config as hyperparameters,
    its training curve as steps, its final metrics, status and run id (re-exporting to MLflow adds
    only new runs)."""
    from ..results.export import export as run_export
    done = run_export(Path(results_dir), to, uri=uri, experiment=experiment)
    say(f"{done.target}: {done.written} runs written to {done.where}"
        + (f" ({done.skipped} already there)" if done.skipped else ""))
