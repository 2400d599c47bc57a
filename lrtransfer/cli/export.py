"""``export``: a results directory into TensorBoard, MLflow or Weights & Biases."""
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
    "lrtransfer export results/quickstart --to mlflow --uri http://localhost:5000 --experiment qs",
    "lrtransfer export results/quickstart --to wandb  # offline runs in results/quickstart/wandb",
    "wandb sync results/quickstart/wandb/offline-run-*  # uploads them (after `wandb login`)",
    "lrtransfer export results/quickstart --to wandb --online --entity my-team --project qs"))
@user_errors
def export(results_dir: ResultsDir,
           to: str = typer.Option(..., "--to", metavar="TARGET",
                                  help=choice_help(EXPORT_TARGETS, "where to: TensorBoard event files, an MLflow "
                                                   "tracking store or W&B runs (extras: lrtransfer[tensorboard], "
                                                   "lrtransfer[mlflow], lrtransfer[wandb])")),
           uri: Optional[str] = typer.Option(None, "--uri", help="tensorboard: the log directory (default "
                                             "RESULTS_DIR/tensorboard, replaced whole); mlflow: any tracking URI "
                                             "(default sqlite:///RESULTS_DIR/mlflow.db)"),
           experiment: Optional[str] = typer.Option(None, "--experiment", help="mlflow: the experiment to log into "
                                                    "(default: the results' experiment name)"),
           project: Optional[str] = typer.Option(None, "--project", help="wandb: the W&B project (default: the "
                                                 "results' experiment name)"),
           entity: Optional[str] = typer.Option(None, "--entity", help="wandb: the W&B user or team (default: "
                                                "yours)"),
           online: bool = typer.Option(False, "--online", help="wandb: log to the W&B server (needs `wandb "
                                       "login`); default offline, runs under RESULTS_DIR/wandb for `wandb sync`")):
    """Every run of a results directory into TensorBoard, MLflow or W&B: its config as
    hyperparameters, its training curve as steps, its final metrics, status and run id
    (re-exporting to MLflow or W&B adds only new runs)."""
    from ..results.export import export as run_export
    done = run_export(Path(results_dir), to, uri=uri, experiment=experiment, project=project, entity=entity,
                      online=online)
    say(f"{done.target}: {done.written} runs written to {done.where}"
        + (f" ({done.skipped} already there)" if done.skipped else ""))
