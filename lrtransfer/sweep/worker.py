"""A worker: claim cells from the queue and run them until none are left."""
from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import time
import traceback
from pathlib import Path

import pandas as pd

from optuna.trial import TrialState

from ..run.provenance import run_id
from ..results.store import FINISHED, ResultStore
from ..run.batched import execute_bundle
from ..run.train import execute, resolve_device
from .queue import GRACE_SECONDS, HEARTBEAT_SECONDS, Heartbeat, Queue


def objective(row: dict, metric: str = "final_train_loss") -> float:
    """What the study minimises: the run's final loss; inf for a diverged run."""
    value = row.get(metric)
    if row.get("status") != "done" or value is None or not math.isfinite(value):
        return math.inf
    return float(value)


def log_event(root: Path, **event) -> None:
    """Append one line to events.jsonl (a single O_APPEND write: workers never interleave)."""
    event = {"time": time.time(), "host": platform.node(), "pid": os.getpid(), **event}
    line = (json.dumps(event, default=str) + "\n").encode()
    fd = os.open(Path(root) / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def failed_row(values: dict, error: str) -> dict:
    return {**values, "run_id": run_id(values), "status": "failed", "error": error,
            "diverged_at_step": math.nan, "final_train_loss": math.nan, "final_test_loss": math.nan,
            "final_test_acc": math.nan, "wall_seconds": math.nan}


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks for reuse (fixed mmap and trim thresholds); return
    whether it took. Speed only, no number changes.

    Each training step frees its gradients and allocates new ones. glibc's adaptive mmap
    threshold serves large blocks from fresh mappings and trims the heap, so a reallocated
    weight-sized block comes back as new pages that fault on first touch: 130–170 faults, about
    0.5 ms of system time, per step of the quickstart's width-512 MLP (a 17 ms step). Blocks up
    to 32 MiB (glibc's largest threshold) now stay in the heap, and freed memory is kept for
    the worker's later cells. It holds for the whole calling process: with ``--jobs 1`` (or
    ``run_sweep(jobs=1)`` in a notebook) that is the sweep's own.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def drained(queue: Queue) -> bool:
    """No cell waits and none runs: the sweep is over (until someone enqueues more)."""
    return not queue.trials(states=(TrialState.WAITING, TrialState.RUNNING))


def work(queue: Queue, store: ResultStore, device: str = "auto", max_runs: int | None = None,
         grace: float = GRACE_SECONDS, heartbeat: float = HEARTBEAT_SECONDS, parent_pid: int | None = None,
         on_start=None, on_step=None, on_finish=None, merge: bool = False) -> int:
    """Run cells until the queue has none waiting; return how many this worker ran.

    A claimed cell of a bundle (cells grouped to train together when they were enqueued,
    ``batched.plan_bundles``) takes the bundle's other waiting cells with it; a bundle counts
    whole towards ``max_runs``.
    ``parent_pid``: stop between cells once that process is gone (workers of a killed sweep).
    ``merge``: when this worker finds the queue drained, write the merged tables
    (runs.parquet, curves.parquet), so a study run by workers alone ends with them.
    On KeyboardInterrupt the cells in hand go back to the queue (waiting) before it propagates.
    """
    resolve_device(device)  # a bad --device fails here, before a cell is claimed and recorded failed
    keep_freed_memory()
    ran = 0
    store.root.mkdir(parents=True, exist_ok=True)
    while max_runs is None or ran < max_runs:
        if parent_pid is not None and os.getppid() != parent_pid:
            break
        queue.reap(grace)
        trial = queue.claim()
        if trial is None:
            break
        trials = [t for t in [trial] + queue.claim_bundle(trial) if not _known(queue, store, t)]
        if not trials:
            continue
        ran += _run(queue, store, trials, device, heartbeat, on_start, on_step, on_finish)
    if merge and drained(queue):
        store.consolidate()
    return ran


def _known(queue: Queue, store: ResultStore, trial) -> bool:
    """A cell enqueued twice whose result is recorded: report it without running it again."""
    known = None if trial.user_attrs.get("rerun") else store.row(trial.user_attrs["run_id"])
    if known is not None and known.get("status") in FINISHED:
        queue.finish(trial, objective(known), run_status=known["status"])
        return True
    return False


def _run(queue: Queue, store: ResultStore, trials: list, device, heartbeat, on_start, on_step, on_finish) -> int:
    """Train the claimed ``trials`` (together when there are several) and report each."""
    cells = [json.loads(t.user_attrs["config"]) for t in trials]
    reported: set[int] = set()
    for trial, values in zip(trials, cells):
        if on_start:
            on_start(trial, values)
        log_event(store.root, event="start", run_id=trial.user_attrs["run_id"], trial=trial.number,
                  bundle=len(trials))
    try:
        with Heartbeat(queue, [t.number for t in trials], heartbeat):
            results = None
            if len(trials) > 1:
                try:
                    results = execute_bundle(cells, device, on_step=on_step)
                except Exception as e:  # each cell runs alone instead, so an error is its own
                    log_event(store.root, event="bundle-failed", trials=[t.number for t in trials],
                              error=f"{type(e).__name__}: {e}")
            for i, (trial, values) in enumerate(zip(trials, cells)):
                if results is not None:
                    _report(queue, store, trial, values, results[i], None, on_finish)
                else:
                    try:
                        result, error = execute(values, device, on_step=on_step), None
                    except KeyboardInterrupt:
                        raise
                    except Exception as e:  # the run raised: record it, retry within the budget
                        result, error = None, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
                    _report(queue, store, trial, values, result, error, on_finish)
                reported.add(trial.number)
    except KeyboardInterrupt:
        for trial in trials:
            if trial.number not in reported:
                queue.release(trial, "interrupted")
                log_event(store.root, event="interrupted", run_id=trial.user_attrs["run_id"], trial=trial.number)
        raise
    return len(trials)


def _report(queue: Queue, store: ResultStore, trial, values: dict, result, error: str | None, on_finish) -> None:
    rid = trial.user_attrs["run_id"]
    if error is not None:
        store.write(failed_row(values, error), pd.DataFrame(columns=["run_id", "step", "train_loss", "test_loss", "lr"]))
        queue.fail(trial, error)
        log_event(store.root, event="fail", run_id=rid, trial=trial.number, error=error.splitlines()[0])
        if on_finish:
            on_finish(trial, {"status": "failed", "error": error.splitlines()[0], "run_id": rid})
        return
    store.write(result.row, result.curves, result.diagnostics)
    queue.finish(trial, objective(result.row), run_status=result.row["status"],
                 wall_seconds=result.row["wall_seconds"])
    log_event(store.root, event="finish", run_id=rid, trial=trial.number, status=result.row["status"])
    if on_finish:
        on_finish(trial, result.row)
