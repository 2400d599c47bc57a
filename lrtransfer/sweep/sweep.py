"""Run an experiment's grid: enqueue the cells, run workers, show progress, merge the tables."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from ..errors import UserError
from ..store import ResultStore, write_json
from optuna.trial import TrialState

from .config import Experiment, RunConfig
from .queue import GRACE_SECONDS, STORAGE_ENV, Queue, open_storage, redact
from .run import dataset_for, model_for, resolve_device
from .worker import work

DEFAULT_RESULTS = Path("results")


def results_dir_for(experiment: Experiment, results_dir: str | Path | None = None) -> Path:
    return Path(results_dir) if results_dir is not None else DEFAULT_RESULTS / experiment.name


@dataclass
class Plan:
    total: int
    finished: int
    todo: int
    estimate_seconds: float
    series: dict

    def summary(self) -> str:
        return (f"{self.total} cells ({', '.join(f'{k}: {v}' for k, v in self.series.items())}); "
                f"{self.finished} already finished, {self.todo} to run; "
                f"estimated {_fmt_seconds(self.estimate_seconds)} of compute on this machine")


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "unknown"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def time_per_step(values: dict, device: str = "auto", steps: int = 3) -> float:
    """Seconds per training step of the model ``values`` describes, timed over a few steps."""
    import torch
    import torch.nn.functional as F
    from ..optim import make_optimizer
    dev = resolve_device(device)
    ds = dataset_for(values, dev)
    model = model_for(values, ds).to(dev)
    opt = make_optimizer(model, values["optimizer"], values["lr"], normalize=values["normalize"])
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        x, y = ds.sample("train", values["batch_size"], gen)
        out = model(x)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def plan(experiment: Experiment, results_dir=None, device: str = "auto", estimate: bool = True) -> Plan:
    """What a sweep would do: grid size, cells already finished, and a compute estimate."""
    cells = experiment.cells()
    store = ResultStore(results_dir_for(experiment, results_dir))
    finished = store.finished_ids() if store.root.exists() else set()
    todo = [c for c in cells if c.run_id not in finished]
    series: dict[str, int] = {}
    for c in cells:
        series[c.series] = series.get(c.series, 0) + 1
    seconds = 0.0
    if estimate and todo:
        per_shape: dict = {}
        for c in todo:  # time each distinct model shape once; a run costs steps x that
            v = c.values
            key = (v["arch"], v["width"], v["depth"], v["batch_size"], v["optimizer"], v["normalize"],
                   tuple(sorted((k, str(x)) for k, x in v.items() if k.startswith("data."))))
            if key not in per_shape:
                per_shape[key] = time_per_step(v, device)
            seconds += per_shape[key] * v["steps"] * 1.1  # ~10% for evaluation and logging
    return Plan(total=len(cells), finished=len(cells) - len(todo), todo=len(todo),
                estimate_seconds=seconds, series=series)


def prepare(experiment: Experiment, results_dir=None, storage: str | None = None, retries: int = 2,
            grace: float = GRACE_SECONDS, device: str = "auto") -> tuple[Queue, ResultStore, int]:
    """Check inputs, record the experiment, open the study and enqueue every unfinished cell."""
    root = results_dir_for(experiment, results_dir)
    cells = experiment.cells()
    dataset_for(cells[0].values, resolve_device(device))  # a missing dataset fails before any run
    store = ResultStore(root)
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
    queue.reap(grace)
    n = queue.enqueue(cells, store.finished_ids(), retries=retries)
    return queue, store, n


def run_sweep(experiment: Experiment, results_dir=None, storage: str | None = None, jobs: int = 1,
              device: str = "auto", retries: int = 2, grace: float = GRACE_SECONDS,
              progress: bool = True, console: Console | None = None) -> pd.DataFrame:
    """Run every unfinished cell of ``experiment``; return the merged runs table.

    Finished runs (done or diverged) are skipped, failed ones run again. ``jobs`` > 1 starts
    that many local worker processes on the same study, 0 only enqueues the cells for workers
    started elsewhere; ``storage`` is an optuna storage URL
    (default: a journal file in the results directory).
    """
    if jobs < 0:
        raise UserError(f"--jobs: must be >= 0 (0: only enqueue the cells for workers), got {jobs}")
    console = console or Console(stderr=True)
    queue, store, enqueued = prepare(experiment, results_dir, storage, retries, grace, device)
    cells = experiment.cells()
    ids = {c.run_id for c in cells}
    already = len(ids & store.finished_ids())
    if progress:
        console.print(f"[bold]{experiment.name}[/]: {len(cells)} cells, {already} already finished, "
                      f"{enqueued} queued; study {experiment.name!r} in {redact(storage)}")
    if jobs == 0:  # workers elsewhere (`lrtransfer worker --study NAME`) will run them
        if progress:
            console.print(f"enqueued only; start workers with: lrtransfer worker --study {experiment.name}"
                          + ("" if storage else f" --results {store.root}"))
        return store.load_runs()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task("starting", total=len(cells), completed=already)

        def on_start(trial, values):
            bar.update(task, description=RunConfig(values).describe())

        def on_finish(trial, row):
            bar.update(task, completed=len(ids & store.finished_ids()))

        while True:
            if jobs == 1:
                work(queue, store, device, grace=grace, on_start=on_start, on_finish=on_finish)
            else:
                _run_local_workers(queue, store, jobs, device, storage, grace, ids, bar, task)
            # Cells still running belong to other workers (another machine, or the orphaned
            # workers of a killed sweep): wait for them, or for them to be declared lost.
            queue.reap(grace)
            running = queue.trials(states=(TrialState.RUNNING,))
            if not running and not queue.trials(states=(TrialState.WAITING,)):
                break
            if running:
                bar.update(task, completed=len(ids & store.finished_ids()),
                           description=f"waiting for {len(running)} cells running elsewhere")
                time.sleep(1.0)
        bar.update(task, completed=len(ids & store.finished_ids()), description="done")
    runs = store.consolidate()
    return runs


def worker_command(study: str, results_dir: Path, device: str, grace: float) -> list[str]:
    return [sys.executable, "-m", "lrtransfer", "worker", "--study", study, "--results", str(results_dir),
            "--device", device, "--grace", str(grace), "--parent-pid", str(os.getpid()), "--quiet"]


def _run_local_workers(queue, store, jobs, device, storage, grace, ids, bar, task) -> None:
    env = dict(os.environ)
    if storage:
        env[STORAGE_ENV] = storage  # not on the command line, where `ps` would show a password
    cmd = worker_command(queue.name, store.root, device, grace)
    procs = [subprocess.Popen(cmd, env=env) for _ in range(jobs)]
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            running = len(queue.trials(states=(TrialState.RUNNING,)))
            bar.update(task, completed=len(ids & store.finished_ids()),
                       description=f"{jobs} workers, {running} running")
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    bad = [p.returncode for p in procs if p.returncode != 0]
    if bad:
        raise UserError(f"{len(bad)} of {jobs} workers exited with an error (codes {bad}); see their output above")
