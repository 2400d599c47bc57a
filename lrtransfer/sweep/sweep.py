"""Run an experiment's grid: enqueue the cells, run workers, show progress, merge the tables.

A results directory holds one experiment (``experiment.json`` records it): sweeping another
one into it is refused before anything is written, while a grown grid of the same experiment
(more widths, LRs or seeds) extends it. Runs recorded with other training code or data are
moved to ``stale/`` and their cells run again. Workers default to one per core, each run on
its own ``threads`` torch threads, so cells fill the machine side by side.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from optuna.trial import TrialState
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from ..errors import UserError
from ..results.store import ResultStore, write_json
from ..run.provenance import other_machine
from ..models import is_builder
from ..run.train import dataset_for, model_for, resolve_device
from .config import Experiment, RunConfig
from .estimate import duration_text, planned_jobs
from .estimate import estimate as estimate_wall
from .queue import GRACE_SECONDS, STORAGE_ENV, Queue, open_storage, redact
from .worker import work

DEFAULT_RESULTS = Path("results")


def results_dir_for(experiment: Experiment, results_dir: str | Path | None = None) -> Path:
    return Path(results_dir) if results_dir is not None else DEFAULT_RESULTS / experiment.name


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_jobs(experiment: Experiment) -> int:
    """One worker per core, fewer when runs ask for several threads each."""
    threads = max(c.values.get("threads", 1) for c in experiment.cells())
    return max(1, available_cores() // threads)


def check_same_experiment(experiment: Experiment, root: Path) -> None:
    """Refuse to sweep ``experiment`` into a directory that records another experiment."""
    recorded = ResultStore(root).experiment() if root.is_dir() else None
    if not recorded:
        return
    mine = experiment.identity()
    theirs = {"name": recorded.get("name"), "dataset": (recorded.get("data") or {}).get("dataset"),
              "arch": (recorded.get("model") or {}).get("arch")}
    if theirs != mine:
        def show(d):
            return f"{d['name']!r} ({d['dataset']}, {d['arch']})"
        raise UserError(f"{root}: holds experiment {show(theirs)}, not {show(mine)}; results of two experiments "
                        f"would mix. Use another --results directory (or name = \"...\" in the TOML)")


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep: claimed cells went back to the queue; ``summary`` says where it stands."""

    def __init__(self, summary: str):
        super().__init__(summary)
        self.summary = summary


@dataclass
class SweepResult:
    """What ``run_sweep`` leaves: the merged runs table and the runs of this grid that failed."""
    runs: pd.DataFrame
    failed: pd.DataFrame = field(default_factory=pd.DataFrame)
    jobs: int = 1
    cores: int = field(default_factory=available_cores)

    def errors(self) -> list[dict]:
        return distinct_errors(self.failed)


def distinct_errors(failed: pd.DataFrame) -> list[dict]:
    """Each distinct error of the failed runs once, by its first line (``Type: message``):
    ``{"error", "count", "example" (a cell that hit it), "run_ids", "detail" (a traceback)}``."""
    out: dict[str, dict] = {}
    for row in failed.to_dict("records") if len(failed) else []:
        text = str(row.get("error") or "unknown error").strip() or "unknown error"
        head = text.splitlines()[0]
        e = out.setdefault(head, {"error": head, "count": 0, "run_ids": [], "detail": text,
                                  "example": RunConfig(row).describe() if "lr" in row else row.get("run_id", "")})
        e["count"] += 1
        e["run_ids"].append(row.get("run_id"))
    return list(out.values())

@dataclass
class Plan:
    total: int
    finished: int
    todo: int
    estimate_seconds: float          # wall time with ``jobs`` workers (NaN: not estimated)
    series: dict
    jobs: int = 1
    compute_seconds: float = math.nan
    shapes: int = 0
    other_machine: int = 0           # finished cells recorded on another machine (provenance.machine)
    unknown_machine: int = 0         # finished cells recorded before rows named their machine
    results_dir: str = ""

    def summary(self) -> str:
        text = (f"{self.total} cells ({', '.join(f'{k}: {v}' for k, v in self.series.items())}); "
                f"{self.finished} already finished, {self.todo} to run")
        elsewhere = [f"{n} {what}" for n, what in ((self.other_machine, "on another machine"),
                                                   (self.unknown_machine, "on an unrecorded machine")) if n]
        if elsewhere:
            # current by run id, but bit-identical only on the machine that ran them (docs/results.md)
            text += (f"; of the finished, {' and '.join(elsewhere)}: their numbers may differ here, check with "
                     f"`lrtransfer reproduce {self.results_dir}`")
        if self.todo and math.isfinite(self.estimate_seconds):
            text += (f"; estimated {duration_text(self.estimate_seconds)} here with --jobs {self.jobs} "
                     f"({duration_text(self.compute_seconds)} of compute; {self.shapes} run shape"
                     f"{'s' if self.shapes != 1 else ''} timed)")
        return text


def plan(experiment: Experiment, results_dir=None, device: str = "auto", estimate: bool = True,
         rerun: bool = False, jobs: int | None = None) -> Plan:
    """What a sweep would do: grid size, cells already finished (current ones: same config,
    data and code), and the wall time it would take here with ``jobs`` workers (default as
    ``run_sweep``), from measured run costs (estimate.py). Writes nothing."""
    root = results_dir_for(experiment, results_dir)
    check_same_experiment(experiment, root)
    cells = experiment.cells()
    store = ResultStore(root)
    finished = store.finished_ids() if store.root.exists() and not rerun else set()
    todo = [c for c in cells if c.run_id not in finished]
    other, unknown = recorded_elsewhere(store.load_runs() if finished else None, {c.run_id for c in cells} & finished)
    series: dict[str, int] = {}
    for c in cells:
        series[c.series] = series.get(c.series, 0) + 1
    jobs = default_jobs(experiment) if jobs is None else jobs
    wall, compute, shapes = math.nan, math.nan, 0
    if estimate and todo:
        wall, compute, shapes = estimate_wall([c.values for c in todo], resolve_device(device), max(jobs, 1),
                                              available_cores())
    return Plan(total=len(cells), finished=len(cells) - len(todo), todo=len(todo), estimate_seconds=wall,
                series=series, jobs=jobs, compute_seconds=compute, shapes=shapes, other_machine=other,
                unknown_machine=unknown, results_dir=str(root))


def recorded_elsewhere(runs: pd.DataFrame | None, ids: set) -> tuple[int, int]:
    """(recorded on another machine, recorded without naming one) among the rows of ``runs``
    whose run id is in ``ids`` (``provenance.other_machine``)."""
    if runs is None or runs.empty or not ids:
        return 0, 0
    other = unknown = 0
    for row in runs[runs["run_id"].isin(ids)].drop_duplicates("run_id").to_dict("records"):
        elsewhere = other_machine(row)
        other += elsewhere is True
        unknown += elsewhere is None
    return other, unknown


def prepare(experiment: Experiment, results_dir=None, storage: str | None = None, retries: int = 2,
            grace: float = GRACE_SECONDS, device: str = "auto", rerun: bool = False,
            on_notice=None) -> tuple[Queue, ResultStore, int]:
    """Check inputs, record the experiment, open the study and enqueue every unfinished cell
    (every cell with ``rerun``). Nothing is written before every check has passed."""
    root = results_dir_for(experiment, results_dir)
    check_same_experiment(experiment, root)
    cells = experiment.cells()  # locates and fingerprints the data: a missing dataset fails here
    dataset_for(cells[0].values, resolve_device(device))  # an unreadable one here, before any run
    check_models(cells, resolve_device(device))            # a user's model that cannot be built here
    store = ResultStore(root, **({"on_notice": on_notice} if on_notice else {}))
    store.check_writable()
    queue = Queue(open_storage(storage, root), experiment.name)
    recorded = queue.study.user_attrs.get("results_dir")
    if storage is not None and recorded is not None and Path(recorded) != root.resolve():
        # one study feeding two directories would let a worker write one sweep's runs into the other
        raise UserError(f"study {experiment.name!r} in {redact(storage)} already belongs to results directory "
                        f"{recorded}, not {root.resolve()}: give this experiment another name "
                        f"(name = \"...\" in the TOML) or use another --storage")
    write_json({**experiment.to_dict(), "storage": redact(storage), "study": experiment.name,
                "cells": len(cells)}, root / "experiment.json")
    queue.study.set_user_attr("results_dir", str(root.resolve()))
    stale = store.retire_stale(experiment.fingerprints)
    if stale and on_notice:
        on_notice(f"moved {stale} runs made with other training code or data to {root / 'stale'}; their cells run again")
    queue.reap(grace)
    n = queue.enqueue(cells, store.finished_ids(), retries=retries, rerun=rerun,
                      bundles=lambda todo: planned_jobs(todo, resolve_device(device)))
    return queue, store, n


def check_models(cells: list, device) -> None:
    """A user's builder (``arch = "file.py:function"``) built for the first cell of each series,
    its roles found and its output checked against the task, before anything is written: a
    ConfigError or UserError (exit 2) naming the builder, the key and the cell. The global random
    stream is left as it was."""
    if not cells or not is_builder(cells[0].values["arch"]):
        return
    seen = set()
    for cell in cells:
        v = cell.values
        if v["series"] in seen:
            continue
        seen.add(v["series"])
        with torch.random.fork_rng(devices=[]):
            model_for(v, dataset_for(v, device))


def run_sweep(experiment: Experiment, results_dir=None, storage: str | None = None, jobs: int | None = None,
              device: str = "auto", retries: int = 2, grace: float = GRACE_SECONDS, rerun: bool = False,
              progress: bool = True, console: Console | None = None) -> SweepResult:
    """Run every unfinished cell of ``experiment``; return the merged runs and the failures.

    Finished runs (done or diverged) are skipped unless ``rerun``; failed ones run again.
    ``jobs`` (default: one per core, see ``default_jobs``) > 1 starts that many local worker
    processes on the same study, 1 runs the cells in this process, 0 only enqueues them for
    workers started elsewhere; ``storage`` is an optuna storage URL (default: a journal file in
    the results directory). Ctrl-C gives the cells in hand back to the queue and raises
    ``SweepInterrupted``.
    """
    jobs = default_jobs(experiment) if jobs is None else jobs
    if jobs < 0:
        raise UserError(f"--jobs: must be >= 0 (0: only enqueue the cells for workers), got {jobs}")
    console = console or Console(stderr=True)
    # Local workers start before the cells are enqueued: importing torch and the training code
    # takes each a few seconds, which overlap the checks and the batching probe here; they
    # wait for a "go" on stdin (none if prepare fails: they exit without touching anything).
    root = results_dir_for(experiment, results_dir)
    procs = _start_local_workers(experiment.name, root, jobs, device, storage, grace) if jobs > 1 else []
    try:
        queue, store, enqueued = prepare(experiment, results_dir, storage, retries, grace, device, rerun,
                                         lambda message: _say(console, f"warning: {message}", soft_wrap=True))
    except BaseException:
        _release(procs, go=False)
        raise
    cells = experiment.cells()
    tally = _Tally(ids={c.run_id for c in cells}, store=store, rerun=rerun)
    if progress:
        _say(console, f"{experiment.name}: {len(cells)} cells, {tally.finished()} already finished, {enqueued} "
                      f"queued, {jobs} worker{'s' if jobs != 1 else ''}; study {experiment.name!r} in {redact(storage)}")
    if jobs == 0:  # workers elsewhere (`lrtransfer worker --study NAME`) will run them
        if progress:
            _say(console, f"enqueued only; start workers with: lrtransfer worker --study {experiment.name}"
                          + ("" if storage else f" --results {store.root}"))
        return SweepResult(store.load_runs(), jobs=0)
    try:
        with _progress_bar(console, progress) as bar:
            tally.show_on(bar, total=len(cells))
            _run_until_drained(queue, store, jobs, device, storage, grace, procs, tally)
            tally.show("done")
    except KeyboardInterrupt:
        _release(procs, go=False)
        queue.reap(grace)  # cells of this host's workers that are gone go back to waiting at once
        waiting = len({t.user_attrs.get("run_id") for t in queue.trials(states=(TrialState.WAITING,))} & tally.ids)
        raise SweepInterrupted(f"interrupted: {len(tally.ids & store.finished_ids())} of {len(cells)} cells "
                               f"finished, {waiting} waiting in the queue; run the same command to resume") from None
    runs = store.consolidate()
    failed = runs[runs["run_id"].isin(tally.ids) & (runs["status"] == "failed")] if len(runs) else runs
    return SweepResult(runs, failed, jobs=jobs)


def _say(console: Console, text: str, soft_wrap: bool | None = None) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=soft_wrap)


def _progress_bar(console: Console, show: bool) -> Progress:
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    return Progress(*columns, console=console, disable=not show, transient=False)


@dataclass
class _Tally:
    """The cells of this sweep finished so far, and the progress bar that shows them."""
    ids: set
    store: ResultStore
    rerun: bool
    ran: set = field(default_factory=set)
    bar: Progress | None = None
    task: int | None = None

    def finished(self) -> int:
        """Finished cells of this grid; with ``rerun``, only those run since this sweep began."""
        return len(self.ids & self.store.finished_ids()) if not self.rerun else len(self.ran)

    def show_on(self, bar: Progress, total: int) -> None:
        self.bar, self.task = bar, bar.add_task("starting", total=total, completed=self.finished())

    def show(self, description: str) -> None:
        self.bar.update(self.task, completed=self.finished(), description=description)

    def on_start(self, trial, values: dict) -> None:
        self.bar.update(self.task, description=escape(RunConfig(values).describe()))

    def on_finish(self, trial, row: dict) -> None:
        self.ran.add(row["run_id"])
        self.bar.update(self.task, completed=self.finished())


def _run_until_drained(queue: Queue, store: ResultStore, jobs: int, device: str, storage, grace: float,
                       procs: list[subprocess.Popen], tally: _Tally) -> None:
    """Run the queue's cells in this process (``jobs`` 1) or on ``jobs`` local workers (``procs``,
    started already, or new ones) until no cell waits or runs."""
    while True:
        if jobs == 1:
            work(queue, store, device, grace=grace, on_start=tally.on_start, on_finish=tally.on_finish)
        else:
            procs = procs or _start_local_workers(queue.name, store.root, jobs, device, storage, grace)
            _release(procs, go=True)
            _run_local_workers(procs, queue, jobs, tally)
            procs = []
        # Cells still running belong to other workers (another machine, or the orphaned
        # workers of a killed sweep): wait for them, or for them to be declared lost.
        queue.reap(grace)
        running = queue.trials(states=(TrialState.RUNNING,))
        if not running and not queue.trials(states=(TrialState.WAITING,)):
            return
        if running:
            tally.show(f"waiting for {len(running)} cells running elsewhere")
            time.sleep(1.0)


def worker_command(study: str, results_dir: Path, device: str, grace: float) -> list[str]:
    return [sys.executable, "-m", "lrtransfer", "worker", "--study", study, "--results", str(results_dir),
            "--device", device, "--grace", str(grace), "--parent-pid", str(os.getpid()), "--quiet"]


def _start_local_workers(study: str, root: Path, jobs: int, device: str, storage, grace) -> list[subprocess.Popen]:
    """``jobs`` worker processes, importing while they wait for ``_release``."""
    env = dict(os.environ)
    if storage:
        env[STORAGE_ENV] = storage  # not on the command line, where `ps` would show a password
    cmd = worker_command(study, root, device, grace) + ["--wait-for-go"]
    return [subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, text=True) for _ in range(jobs)]


def _release(procs: list[subprocess.Popen], go: bool) -> None:
    """Let waiting workers start claiming cells (``go``), or tell them to exit and wait for them."""
    for p in procs:
        if p.stdin.closed:   # released before: a Ctrl-C after the "go" waits for it below
            continue
        try:
            p.stdin.write("go\n" if go else "")
            p.stdin.close()
        except (BrokenPipeError, OSError):   # a worker that already died: _run_local_workers reports it
            pass
    if not go:
        for p in procs:
            p.wait()


def _run_local_workers(procs, queue: Queue, jobs: int, tally: _Tally) -> None:
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            tally.show(f"{jobs} workers, {len(queue.trials(states=(TrialState.RUNNING,)))} running")
    except BaseException:
        # Ctrl-C reaches the workers too (same process group); a signal sent to this process
        # alone is passed on. Each worker gives its cell back to the queue and exits.
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.time() + 15
        for p in procs:
            try:
                p.wait(timeout=max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        raise
    bad = [p.returncode for p in procs if p.returncode != 0]
    if bad:
        raise UserError(f"{len(bad)} of {jobs} workers exited with an error (codes {bad}); see their output above")
