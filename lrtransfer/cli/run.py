"""Running a grid: ``sweep``, ``worker``, ``status`` and ``keys``."""
from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError, check_choice
from ..sweep.refine import UNTIL
from .common import Device, Grace, Quiet, app, choice_help, err, out, say, storage_url, user_errors

STATUS_FORMATS = ("table", "json")
KeysFormat = Enum("KeysFormat", {f: f for f in ("markdown", "json")}, type=str)


@app.command(examples=(
    "lrtransfer sweep experiments/quickstart.toml --dry-run  # grid size, finished cells, time estimate",
    "lrtransfer sweep experiments/quickstart.toml  # run it; resumes where it stopped",
    "lrtransfer sweep experiments/quickstart.toml --set width=[64,256] --set seeds=5",
    "lrtransfer sweep experiments/quickstart.toml --jobs 1 --device cuda",
    "lrtransfer sweep experiments/quickstart.toml --until decided --budget 30m  # refine until every verdict is "
    "decided",
    "lrtransfer sweep experiments/quickstart.toml --until decided --dry-run  # seeds a decided verdict needs"))
@user_errors
def sweep(experiment: Path = typer.Argument(..., help="experiment TOML file"),
          set_: List[str] = typer.Option([], "--set", help="override a key (run keys: `lrtransfer keys`): lr=0.01, "
                                         "width=[32,64], update=dualize, series.adam.lr={log2=[-10,-4],step=1}"),
          dry_run: bool = typer.Option(False, "--dry-run", help="print grid size, finished cells and a time estimate; "
                                       "run nothing"),
          jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="local worker processes (default: one per core, "
                                             "divided by the runs' threads); 1 runs in this process, 0 only enqueues"),
          rerun: bool = typer.Option(False, "--rerun", help="run every cell again, finished ones included"),
          device: Device = "auto",
          results: Optional[Path] = typer.Option(None, help="results directory (default results/<experiment name>)"),
          storage: Optional[str] = typer.Option(None, help="optuna storage URL (default: a journal file in the results "
                                                "directory)"),
          retries: int = typer.Option(2, help="re-runs of a run that raises, per sweep"),
          grace: Grace = 60.0,
          until: Optional[str] = typer.Option(None, "--until", metavar="UNTIL",
                                              help=choice_help(UNTIL, "after the grid, add refinement rounds (seeds "
                                                               "where the drift CI is widest, half-octave LRs near "
                                                               "each optimum, a wider window past an edge) until every "
                                                               "transfer verdict is decided or --budget is spent; "
                                                               "recorded in RESULTS/refinement.json")),
          budget: Optional[str] = typer.Option(None, "--budget", help="with --until: refinement runs (e.g. 200) or "
                                               "wall time (e.g. 90s, 30m, 2h), counted over restarts"),
          quiet: Quiet = False):
    """Run every unfinished cell of an experiment's grid (finished runs are skipped, failed ones rerun).

    Exit codes: 0 all cells finished (done or diverged), 1 some runs failed (each distinct error
    is printed once), 2 bad input, 130 interrupted (claimed cells go back to the queue).
    """
    from ..sweep import load_experiment, plan, results_dir_for, run_sweep
    exp = load_experiment(experiment, set_)
    if until is not None or budget is not None:
        if rerun:
            raise UserError("--rerun: not with --until (a refinement adds cells to finished ones; rerun the grid "
                            "first, then refine)")
        _refine(exp, until, budget, dry_run, results, storage, jobs, device, retries, grace, quiet)
        return
    if dry_run:
        planned = plan(exp, results, device, rerun=rerun, jobs=jobs)
        say(f"{exp.name} -> {results_dir_for(exp, results)}")
        say(planned.summary())
        return
    result = run_sweep(exp, results, storage=storage_url(storage), jobs=jobs, device=device, retries=retries,
                       grace=grace, rerun=rerun, progress=not quiet, console=err)
    _sweep_summary(result, results_dir_for(exp, results))


def _refine(exp, until, budget, dry_run, results, storage, jobs, device, retries, grace, quiet) -> None:
    """``sweep --until decided``: the grid, then refinement rounds (or, with --dry-run, the
    seeds each undecided verdict needs)."""
    from ..analysis.transfer import group_columns
    from ..report.transfer import label
    from ..sweep import refinement_estimate, results_dir_for, run_refinement
    from ..sweep.refine import describe_estimate, parse_budget
    from ..sweep.sweep import SweepResult
    if until is None:
        raise UserError(f"--budget {budget}: only with --until decided (the budget of the refinement rounds)")
    check_choice("--until", until, UNTIL)
    parsed = parse_budget(budget) if budget is not None else None
    if dry_run:
        say(f"{exp.name} -> {results_dir_for(exp, results)}")
        for line in describe_estimate(refinement_estimate(exp, results)):
            say(line)
        return
    if budget is None:
        raise UserError("--until decided: give --budget, a run count (e.g. 200) or a wall time (e.g. 30m), so the "
                        "refinement stops")
    result = run_refinement(exp, parsed, results, storage=storage_url(storage), jobs=jobs,
                            device=device, retries=retries, grace=grace, progress=not quiet, console=err)
    for row in result.verdicts.to_dict("records"):
        say(f"{label(row, group_columns(result.verdicts))} ({row['axis']}): {row['verdict']}, drift CI "
            f"[{row['drift_ci_lo']:+.2f}, {row['drift_ci_hi']:+.2f}]")
    runs = result.runs
    failed = runs[runs["status"] == "failed"] if len(runs) else runs
    _sweep_summary(SweepResult(runs, failed), results_dir_for(exp, results))


def _sweep_summary(result, where: Path) -> None:
    """Cells per status on stdout; each distinct error of the failed runs on stderr, and exit 1."""
    runs = result.runs
    counts = runs["status"].value_counts().to_dict() if not runs.empty else {}
    say(f"{where}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if len(result.failed):
        err.print(f"{len(result.failed)} runs failed:", style="red", highlight=False)
        for e in result.errors():
            say(f"  {e['count']}x {e['error']}  (e.g. {e['example']})", err)
        say(f"details: lrtransfer status {where} --errors", err)
        raise typer.Exit(1)


@app.command(examples=("lrtransfer keys  # the table: key, section, default, allowed, meaning",
                       "lrtransfer keys --format json"))
@user_errors
def keys(format: KeysFormat = typer.Option(KeysFormat.markdown, help="table as markdown, or JSON records")):
    """The run keys an experiment file takes: section, default, allowed values, meaning."""
    from ..run import spec
    if format == KeysFormat.json:
        out.print_json(json.dumps(spec.as_records()))
    else:
        say(spec.markdown_table())


def _wait_for_go() -> None:
    """A worker a sweep started before it enqueued the cells (sweep.run_sweep) waits for its go."""
    try:
        if sys.stdin.readline().strip() != "go":
            raise typer.Exit(0)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command(examples=(
    "lrtransfer worker --study quickstart --results results/quickstart  # beside a sweep --jobs 0",
    "LRTRANSFER_STORAGE=postgresql://user:pass@db/lrt lrtransfer worker --study quickstart --device cuda"))
@user_errors
def worker(study: str = typer.Option(..., help="study name (the experiment's name)"),
           storage: Optional[str] = typer.Option(None, help="optuna storage URL (or env LRTRANSFER_STORAGE); default: "
                                                 "the journal in --results"),
           results: Optional[Path] = typer.Option(None, help="results directory (default: the one the sweep recorded "
                                                  "in the study)"),
           device: Device = "auto",
           grace: Grace = 60.0,
           max_runs: Optional[int] = typer.Option(None, help="stop after this many runs"),
           parent_pid: Optional[int] = typer.Option(None, hidden=True),
           wait_for_go: bool = typer.Option(False, "--wait-for-go", hidden=True),
           quiet: Quiet = False):
    """Claim and run cells of a study until none are left. Start as many as you like, anywhere."""
    from ..run import batched  # noqa: F401  the training stack (torch: seconds), before any wait
    from ..results.store import ResultStore
    from ..sweep import Queue, open_storage, work
    if wait_for_go:
        _wait_for_go()
    url = storage_url(storage)
    if url is None and results is None:
        raise UserError("worker: give --storage URL (or LRTRANSFER_STORAGE) or --results DIR holding the journal")
    queue = Queue(open_storage(url, results, create=False), study, create=False)
    root = results or queue.study.user_attrs.get("results_dir")
    if root is None:
        raise UserError(f"--study {study}: the study records no results directory; pass --results")

    def on_finish(trial, row):
        if not quiet:
            say(f"[{os.getpid()}] {row['run_id']} {row['status']}", err)

    try:
        # workers a sweep started leave the merging to it; free-standing ones merge when the queue drains
        n = work(queue, ResultStore(root), device, max_runs=max_runs, grace=grace, parent_pid=parent_pid,
                 on_finish=on_finish, merge=parent_pid is None)
    except KeyboardInterrupt:
        if not quiet:
            err.print(f"worker {os.getpid()}: interrupted; its cell went back to the queue", highlight=False)
        raise typer.Exit(130)
    if not quiet:
        err.print(f"worker {os.getpid()}: ran {n} cells")


def _print_errors(errors: list[dict], format: str) -> None:
    """Each distinct error of the failed runs, with an example and the first run ids."""
    if format == "json":
        out.print_json(json.dumps(errors, default=str))
        return
    if not errors:
        out.print("no failed runs", highlight=False)
    for e in errors:
        say(f"{e['count']}x {e['error']}")
        say(f"   e.g. {e['example']}; run ids: {', '.join(e['run_ids'][:5])}" + (" …" if len(e["run_ids"]) > 5 else ""))


@app.command(examples=("lrtransfer status results/quickstart",
                       "lrtransfer status results/quickstart --errors  # each distinct error of the failed runs",
                       "lrtransfer status --storage \"$LRTRANSFER_STORAGE\" --study quickstart --format json"))
@user_errors
def status(results_dir: Optional[Path] = typer.Argument(None, help="results directory"),
           storage: Optional[str] = typer.Option(None, help="optuna storage URL"),
           study: Optional[str] = typer.Option(None, help="study name (with --storage)"),
           format: str = typer.Option("table", metavar="FORMAT",
                                      help=choice_help(STATUS_FORMATS, "a table, or everything as JSON")),
           errors: bool = typer.Option(False, "--errors", help="list each distinct error of the failed runs")):
    """Cells waiting / running / done / diverged / failed per series and scale, with an ETA."""
    from ..sweep.status import status_table, sweep_status
    check_choice("--format", format, STATUS_FORMATS)
    st = sweep_status(results_dir, storage_url(storage), study)
    if errors:
        _print_errors(st["errors"], format)
    elif format == "json":
        out.print_json(json.dumps(st, default=str))
    else:
        out.print(status_table(st))
