"""``tune``: search the LR (or lr·wd) at the smallest scale and transfer it."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..sweep.search import ALONG, SAMPLERS
from ..errors import UserError, check_choice
from .common import Axis, Device, Format, Metric, Overrides, app, axis_name, choice_help, err, say, storage_url, \
    user_errors



def _tune_progress(series: str, scale, row: dict) -> None:
    """One line per tuning run on stderr: where, what it tried, how it ended."""
    where = f"{series}" + (f" at scale {scale}" if scale is not None else "")
    tried = f"lr {row['lr']:.3g}" + (f", wd {row['weight_decay']:.3g}" if row.get("weight_decay") else "")
    loss = row.get("final_train_loss")
    ended = f"{row['status']}" + (f", train loss {loss:.4f}" if isinstance(loss, float) and math.isfinite(loss) else "")
    say(f"{where}: {tried}: {ended}", err)


def _check_search(along: str, sampler: str, metric: str, lr: Optional[float], param: list[str]) -> None:
    """UserError for a search the options contradict, before anything runs."""
    from ..analysis.transfer import metric_spec
    check_choice("--along", along, ALONG)
    check_choice("--sampler", sampler, SAMPLERS)
    metric_spec(metric)
    if along == "lr" and lr is not None:
        raise UserError("--lr: only with --along lrwd (--along lr searches the LR)")
    if along == "lrwd" and param:
        raise UserError(f"--param {param[0]}: only with --along lr (--along lrwd searches lr·wd alone)")


@app.command(examples=("lrtransfer tune experiments/quickstart.toml --trials 8",
                       "lrtransfer tune experiments/quickstart.toml --series adam --param weight_decay=1e-5:1e-1:log",
                       "lrtransfer tune experiments/lrwd_resmlp_mnist1d.toml --along lrwd --format json"))
@user_errors
def tune(experiment: Path = typer.Argument(..., help="experiment TOML file (its grid gives the scales and LR window)"),
         set_: Overrides = [],
         series: List[str] = typer.Option([], "--series", help="series to tune (default: all)"),
         trials: int = typer.Option(8, help="search runs at the base scale"),
         sampler: str = typer.Option("tpe", metavar="SAMPLER", help=choice_help(SAMPLERS, "the optuna sampler")),
         param: List[str] = typer.Option([], "--param", help="also search name=low:high[:log], e.g. "
                                         "weight_decay=1e-5:1e-1:log"),
         axis: Optional[Axis] = typer.Option(None, metavar="KEY", help="scale-like key to transfer along, one the "
                                             "experiment varies (default: the first that varies)"),
         metric: Metric = "train_loss",
         results: Optional[Path] = typer.Option(None, help="results directory (default results/<experiment name>; "
                                                "its grid, if any, is the reference for the regret)"),
         storage: Optional[str] = typer.Option(None, help="optuna storage URL (default: the journal in the results "
                                               "directory)"),
         device: Device = "auto",
         seed: int = typer.Option(0, help="sampler seed"),
         format: Format = typer.Option(Format.markdown, help="json/csv: the per-scale table (json: and the compute)"),
         along: str = typer.Option("lr", "--along", metavar="ALONG",
                                   help=choice_help(ALONG, "lr: search the LR at the smallest scale and transfer it; "
                                                     "lrwd: hold lr fixed and search only lr·weight_decay (needs a "
                                                     "weight_decay grid)")),
         lr: Optional[float] = typer.Option(None, "--lr", help="with --along lrwd: the fixed LR (default: the series' "
                                            "lr, or the middle of its LR grid)")):
    """Search the LR at the smallest scale, run it at the larger ones, report regret and compute
    (or, with --along lrwd, search lr·wd at a fixed LR against the full lr x weight_decay grid)."""
    from ..report.tune import render_lrwd, render_tune
    from ..sweep import load_experiment
    from ..sweep.tune import SearchParam, tune as run_tune, tune_lrwd
    _check_search(along, sampler, metric, lr, param)
    exp = load_experiment(experiment, set_)
    search = dict(trials=trials, sampler=sampler, axis=axis_name(axis), metric=metric, results_dir=results,
                  storage=storage_url(storage), device=device, seed=seed, on_run=_tune_progress)
    if along == "lrwd":
        text = render_lrwd(tune_lrwd(exp, series or None, lr=lr, **search), format.value, metric)
    else:
        found = run_tune(exp, series or None, params=[SearchParam.parse(p) for p in param], **search)
        text = render_tune(found, format.value, metric)
    sys.stdout.write(text)
