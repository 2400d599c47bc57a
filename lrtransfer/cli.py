"""The command line: a thin shell over the Python API (``lrtransfer --help``)."""
from __future__ import annotations

import functools
import json
import math
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Does a learning rate tuned on a small network stay optimal on a wider or deeper one?")
err = Console(stderr=True)
out = Console()


def user_errors(fn):
    """Bad input: one message naming the key/path/value, exit code 2, nothing written."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
    return wrapper


class Metric(str, Enum):
    train_loss = "train_loss"
    test_loss = "test_loss"


class Format(str, Enum):
    markdown = "markdown"
    json = "json"
    csv = "csv"


class Axis(str, Enum):
    width = "width"
    depth = "depth"


def _storage(url: Optional[str]) -> Optional[str]:
    from .sweep.queue import STORAGE_ENV
    return url or os.environ.get(STORAGE_ENV) or None


@app.command()
@user_errors
def sweep(experiment: Path = typer.Argument(..., help="experiment TOML file"),
          set_: List[str] = typer.Option([], "--set", help="override a key: lr=0.01, width=[32,64], series.adam.lr={log2=[-10,-4],step=1}"),
          dry_run: bool = typer.Option(False, "--dry-run", help="print grid size, finished cells and a time estimate; run nothing"),
          jobs: int = typer.Option(1, "--jobs", "-j", help="local worker processes"),
          device: str = typer.Option("auto", help="auto | cpu | cuda"),
          results: Optional[Path] = typer.Option(None, help="results directory (default results/<experiment name>)"),
          storage: Optional[str] = typer.Option(None, help="optuna storage URL (default: a journal file in the results directory)"),
          retries: int = typer.Option(2, help="re-runs of a run that raises, per sweep"),
          grace: float = typer.Option(60.0, help="seconds without a heartbeat before a running cell counts as lost"),
          quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Run every unfinished cell of an experiment's grid (finished runs are skipped, failed ones rerun)."""
    from .sweep import load_experiment, plan, run_sweep
    from .sweep.sweep import results_dir_for
    exp = load_experiment(experiment, set_)
    if dry_run:
        p = plan(exp, results, device)
        out.print(f"[bold]{exp.name}[/] -> {results_dir_for(exp, results)}")
        out.print(p.summary(), highlight=False)
        return
    runs = run_sweep(exp, results, storage=_storage(storage), jobs=jobs, device=device, retries=retries,
                     grace=grace, progress=not quiet, console=err)
    counts = runs["status"].value_counts().to_dict() if not runs.empty else {}
    out.print(f"{results_dir_for(exp, results)}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))


@app.command()
@user_errors
def worker(study: str = typer.Option(..., help="study name (the experiment's name)"),
           storage: Optional[str] = typer.Option(None, help="optuna storage URL (or env LRTRANSFER_STORAGE); default: the journal in --results"),
           results: Optional[Path] = typer.Option(None, help="results directory (default: the one the sweep recorded in the study)"),
           device: str = typer.Option("auto"),
           grace: float = typer.Option(60.0, help="seconds without a heartbeat before a running cell counts as lost"),
           max_runs: Optional[int] = typer.Option(None, help="stop after this many runs"),
           parent_pid: Optional[int] = typer.Option(None, hidden=True),
           quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Claim and run cells of a study until none are left. Start as many as you like, anywhere."""
    from .store import ResultStore
    from .sweep import Queue, open_storage, work
    url = _storage(storage)
    if url is None and results is None:
        raise UserError("worker: give --storage URL (or LRTRANSFER_STORAGE) or --results DIR holding the journal")
    queue = Queue(open_storage(url, results), study, create=False)
    root = results or queue.study.user_attrs.get("results_dir")
    if root is None:
        raise UserError(f"--study {study}: the study records no results directory; pass --results")
    store = ResultStore(root)

    def on_finish(trial, row):
        if not quiet:
            err.print(f"[{os.getpid()}] {row['run_id']} {row['status']}", highlight=False)

    n = work(queue, store, device, max_runs=max_runs, grace=grace, parent_pid=parent_pid, on_finish=on_finish)
    if not quiet:
        err.print(f"worker {os.getpid()}: ran {n} cells")


@app.command()
@user_errors
def status(results_dir: Optional[Path] = typer.Argument(None, help="results directory"),
           storage: Optional[str] = typer.Option(None, help="optuna storage URL"),
           study: Optional[str] = typer.Option(None, help="study name (with --storage)"),
           format: str = typer.Option("table", help="table | json")):
    """Cells waiting / running / done / diverged / failed per series and scale, with an ETA."""
    from .status import sweep_status
    st = sweep_status(results_dir, _storage(storage), study)
    if format == "json":
        out.print_json(json.dumps(st, default=str))
        return
    if format != "table":
        raise UserError(f"--format {format!r}: allowed: table, json")
    table = Table(title=f"{st['study']} ({st['storage']})")
    cols = ["series", "scale", "waiting", "running", "done", "diverged", "failed"]
    for c in cols:
        table.add_column(c, justify="right" if c not in ("series", "scale") else "left")
    for row in st["rows"]:
        table.add_row(*(str(row[c]) for c in cols))
    out.print(table)
    out.print(f"total: {st['totals']}; eta {st['eta']}", highlight=False)


@app.command()
@user_errors
def plot(results_dir: Path = typer.Argument(..., help="results directory of a sweep"),
         metric: Metric = typer.Option(Metric.train_loss),
         axis: Optional[Axis] = typer.Option(None, help="scale axis (default: the one that varies)"),
         out_: Optional[Path] = typer.Option(None, "--out", help="figure path (.png/.svg/.pdf); default RESULTS_DIR/lr_curves.png"),
         ):
    """Loss vs LR per scale and series, and optimal LR / regret vs scale."""
    from . import plots
    from .store import load_results
    runs, _ = load_results(results_dir)
    target = plots.check_out(out_ or results_dir / "lr_curves.png")
    second = target.with_name(target.stem.replace("lr_curves", "transfer") if "lr_curves" in target.stem
                              else target.stem + "_transfer").with_suffix(target.suffix)
    a = axis.value if axis else None
    plots.lr_curves(runs, metric=metric.value, axis=a, out=target)
    plots.transfer_plot(runs, metric=metric.value, axis=a, out=second)
    out.print(f"wrote {target} and {second}")


@app.command()
@user_errors
def report(results_dir: Path = typer.Argument(..., help="results directory of a sweep"),
           metric: Metric = typer.Option(Metric.train_loss),
           axis: Optional[Axis] = typer.Option(None),
           format: Format = typer.Option(Format.markdown),
           min_runs: int = typer.Option(3, help="fewer finished LRs at a scale than this is flagged")):
    """Optimal LR per scale, drift (octaves) and regret per series, as Markdown, JSON or CSV."""
    from . import analysis
    from .store import load_results
    runs, _ = load_results(results_dir)
    text = analysis.report(runs, metric=metric.value, axis=axis.value if axis else None, format=format.value,
                           min_runs=min_runs)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command()
@user_errors
def tune(experiment: Path = typer.Argument(..., help="experiment TOML file (its grid gives the scales and LR window)"),
         set_: List[str] = typer.Option([], "--set", help="override a key, as in sweep"),
         series: List[str] = typer.Option([], "--series", help="series to tune (default: all)"),
         trials: int = typer.Option(8, help="search runs at the base scale"),
         sampler: str = typer.Option("tpe", help="tpe | gp | random"),
         param: List[str] = typer.Option([], "--param", help="also search name=low:high[:log], e.g. weight_decay=1e-5:1e-1:log"),
         axis: Optional[Axis] = typer.Option(None),
         metric: Metric = typer.Option(Metric.train_loss),
         results: Optional[Path] = typer.Option(None),
         storage: Optional[str] = typer.Option(None),
         device: str = typer.Option("auto"),
         seed: int = typer.Option(0, help="sampler seed"),
         format: Format = typer.Option(Format.markdown)):
    """Search the LR at the smallest scale, run it at the larger ones, report regret and compute."""
    from .sweep import load_experiment
    from .tune import SearchParam, tune as run_tune, tune_table
    exp = load_experiment(experiment, set_)
    results_list = run_tune(exp, series or None, trials=trials, sampler=sampler,
                            params=[SearchParam.parse(p) for p in param], axis=axis.value if axis else None,
                            metric=metric.value, results_dir=results, storage=_storage(storage), device=device,
                            seed=seed, on_run=lambda s, sc, row: err.print(f"{s} {sc}: {row['status']} "
                                                                           f"{row.get('final_train_loss')}", highlight=False))
    table = tune_table(results_list)
    if format == Format.json:
        out.print_json(table.to_json(orient="records"))
        return
    if format == Format.csv:
        sys.stdout.write(table.to_csv(index=False))
        return
    for r in results_list:
        grid = (f"; grid optimum at the base scale 2^{math.log2(r.grid_base_lr):.1f}, "
                f"{r.octaves_from_grid:.2f} octaves away" if r.grid_base_lr else "")
        out.print(f"[bold]{r.series}[/]: tuned LR 2^{math.log2(r.lr):.2f} at {r.axis}={r.base_scale} "
                  f"in {r.trials} runs{grid}", soft_wrap=True)
        out.print(table[table["series"] == r.series].to_markdown(index=False) if _has_tabulate()
                  else table[table["series"] == r.series].to_string(index=False), highlight=False, soft_wrap=True)
        ratio = r.target_tuning_seconds / r.tune_seconds if r.tune_seconds else math.nan
        out.print(f"compute: {r.tune_seconds:.1f} s to tune small and transfer "
                  f"({r.trials + len(r.rows) - 1} runs) vs ~{r.target_tuning_seconds:.1f} s to tune "
                  f"at every target scale ({ratio:.1f}x)" + (f"; the full grid took {r.grid_runs} runs" if r.grid_runs else ""),
                  highlight=False, soft_wrap=True)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


def main():
    app()


if __name__ == "__main__":
    main()
