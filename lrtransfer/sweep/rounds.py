"""``lrtransfer sweep EXP --until decided``: sweep the grid, then refine in rounds until every
transfer verdict is decided or the budget is spent.

Each round analyses the directory's runs (``analysis.transfer.analyse``), asks ``refine.plan_round``
what to add, records the cells in ``refinement.json`` (atomically, before any of them runs),
enqueues them on the sweep's queue and runs them with the sweep's own workers. A killed
refinement restarted with the same command first finishes the cells it had recorded (finished
ones are never run again: the queue skips them), then plans on. The experiment file is never
changed: refinement cells are grid cells with another ``lr`` or ``seed``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pandas as pd
from optuna.trial import TrialState
from rich.console import Console

from ..analysis.transfer import analyse
from ..errors import UserError
from ..results.store import ResultStore
from ..run.train import resolve_device
from .config import Experiment, RunConfig
from .estimate import duration_text, planned_jobs
from .queue import GRACE_SECONDS, Queue, open_storage
from .refine import Budget, Cell, Record, estimate_seeds, load_record, plan_round, save_record
from .sweep import (SweepInterrupted, _progress_bar, _run_until_drained, _say, _Tally, default_jobs,
                    results_dir_for, run_sweep)


@dataclass
class RefinementResult:
    """What ``run_refinement`` leaves: the final verdicts, the record and why it stopped
    (``decided``, ``budget``, ``nothing-to-add``)."""
    verdicts: pd.DataFrame
    record: Record
    stopped: str
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def decided(self) -> bool:
        return self.stopped == "decided"


def cell_values(experiment: Experiment, cell: Cell, templates: list[RunConfig] | None = None) -> dict:
    """The run values of refinement ``cell``: a grid cell of its series, group and scale with the
    cell's lr and seed (so everything else, fingerprints included, is the grid's)."""
    for c in templates if templates is not None else experiment.cells():
        v = c.values
        if (v["series"] == cell.series and _eq(v.get(cell.axis), cell.scale)
                and all(_eq(v.get(k), x) for k, x in cell.keys)):
            if v.get("elr"):
                raise UserError(f"--until decided: series {cell.series} sets elr (the LR follows from it); "
                                f"refinement adds lr values and cannot refine an elr sweep")
            return {**v, "lr": 2.0 ** cell.log2_lr, "seed": int(cell.seed)}
    raise UserError(f"--until decided: the experiment has no cell of series {cell.series} at {cell.axis}="
                    f"{cell.scale}{''.join(f', {k}={x}' for k, x in cell.keys)} to refine from (its grid changed?)")


def _eq(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def _analyse(runs: pd.DataFrame, options: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    return analyse(runs, options["metric"], None, options["min_runs"], options["ci"], options["tolerance"],
                   options["n_boot"], options["seed"])


def _affordable(budget: Budget, record: Record, elapsed: float, runs: pd.DataFrame, jobs: int) -> int | None:
    """Cells the budget still pays for (None: unlimited by count), 0 when it is spent.
    ``elapsed``: seconds spent on the round being planned, not yet in the record's rounds."""
    if budget.runs is not None:
        return max(budget.runs - record.runs_used(), 0)
    left = budget.seconds - record.seconds_used() - elapsed
    if left <= 0:
        return 0
    # a round is cut to what the time left buys at the median measured run cost
    cost = pd.to_numeric(runs.get("wall_seconds", pd.Series(dtype=float)), errors="coerce").dropna()
    per_run = float(cost.median()) if len(cost) else math.nan
    if not (per_run > 0):
        return None
    return max(1, int(left * max(jobs, 1) // per_run))


def _round_lines(number: int, cells: list[Cell], cut: int) -> list[str]:
    """What a round adds and why, a line per (group, scale, reason)."""
    lines = [f"refinement round {number}: +{len(cells)} runs" + (f" (cut from {cut} to the budget)" if cut else "")]
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.series, c.keys, c.axis, c.scale, c.kind, c.reason), []).append(c)
    for (series, keys, axis, scale, kind, reason), members in groups.items():
        name = series + "".join(f", {k}={v}" for k, v in keys)
        lrs = sorted({c.log2_lr for c in members})
        seeds = sorted({c.seed for c in members})
        lines.append(f"  {name} {axis}={scale}: {len(members)} {kind} (LR 2^{', 2^'.join(f'{x:g}' for x in lrs)}; "
                     f"seeds {', '.join(map(str, seeds))}) — {reason}")
    return lines


def _run_cells(queue: Queue, store: ResultStore, cells: list[RunConfig], jobs: int, device: str, storage,
               grace: float, retries: int, console: Console, progress: bool, title: str) -> None:
    """Enqueue ``cells`` (those not finished and not already queued) and run the queue dry with
    the sweep's workers, showing the sweep's progress bar."""
    queue.reap(grace)
    queue.enqueue(cells, store.finished_ids(), retries=retries,
                  bundles=lambda todo: planned_jobs(todo, resolve_device(device)))
    tally = _Tally(ids={c.run_id for c in cells}, store=store, rerun=False)
    try:
        with _progress_bar(console, progress) as bar:
            tally.show_on(bar, total=len(tally.ids))
            tally.show(title)
            _run_until_drained(queue, store, max(jobs, 1), device, storage, grace, [], tally)
            tally.show(f"{title}: done")
    except KeyboardInterrupt:
        queue.reap(grace)
        waiting = len({t.user_attrs.get("run_id") for t in queue.trials(states=(TrialState.WAITING,))} & tally.ids)
        raise SweepInterrupted(f"interrupted during {title}: {len(tally.ids & store.finished_ids())} of "
                               f"{len(tally.ids)} cells finished, {waiting} waiting; the refinement record is "
                               f"saved, run the same command to resume") from None


def run_refinement(experiment: Experiment, budget: Budget, results_dir=None, storage: str | None = None,
                   jobs: int | None = None, device: str = "auto", retries: int = 2, grace: float = GRACE_SECONDS,
                   progress: bool = True, console: Console | None = None, metric: str = "train_loss",
                   tolerance: float = 1.0, ci: float = 0.9, min_runs: int = 3, n_boot: int = 1000,
                   seed: int = 0, sweep_grid: bool = True) -> RefinementResult:
    """Sweep ``experiment``'s grid (``run_sweep``; ``sweep_grid=False`` skips it), then add
    refinement rounds (``refine.plan_round``) until every transfer verdict is decided or
    ``budget`` (``refine.parse_budget``: runs or wall seconds, counted over restarts) is spent.

    The analysis options (``metric``, ``tolerance``, ``ci``, ...) are ``lrtransfer report``'s.
    Each round's cells are recorded in ``results_dir/refinement.json`` before they run; calling
    this again with the same arguments resumes. Ctrl-C raises ``SweepInterrupted``.
    """
    if budget.runs is None and budget.seconds is None:
        raise UserError("--budget: give a run count (e.g. 200) or a wall time (e.g. 30m)")
    jobs = default_jobs(experiment) if jobs is None else jobs
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: --until decided runs its rounds here, so it needs >= 1 worker")
    console = console or Console(stderr=True)
    root = results_dir_for(experiment, results_dir)
    if sweep_grid:
        run_sweep(experiment, root, storage=storage, jobs=jobs, device=device, retries=retries, grace=grace,
                  progress=progress, console=console)
    store = ResultStore(root)
    queue = Queue(open_storage(storage, root), experiment.name)
    templates = experiment.cells()
    options = dict(metric=metric, min_runs=min_runs, ci=ci, tolerance=tolerance, n_boot=n_boot, seed=seed)
    record = load_record(root, experiment.name) or Record(experiment.name)

    def run_round(entry: dict, t0: float) -> None:
        """Run a recorded round; its ``seconds`` grow by the time since ``t0`` (planning included)."""
        cells = [RunConfig(cell_values(experiment, Cell.from_dict(c), templates)) for c in entry["cells"]]
        for c, d in zip(cells, entry["cells"]):
            d["run_id"] = c.run_id   # the current code's id (a changed code fingerprint renames the cells)
        _run_cells(queue, store, cells, jobs, device, storage, grace, retries, console, progress,
                   f"refinement round {entry['round']}")
        entry["seconds"] = float(entry.get("seconds") or 0.0) + time.monotonic() - t0
        entry["status"] = "done"
        save_record(record, root)

    # a refinement killed mid-round: finish what it recorded before planning anything new
    for entry in record.rounds:
        if entry.get("status") != "done" or not {c.get("run_id") for c in entry["cells"]} <= store.finished_ids():
            if progress:
                _say(console, f"resuming refinement round {entry['round']} ({len(entry['cells'])} cells recorded)")
            run_round(entry, time.monotonic())

    while True:
        t0 = time.monotonic()
        runs = store.load_runs()
        transfer, verdicts = _analyse(runs, options)
        undecided = verdicts[verdicts["verdict"] == "inconclusive"]
        if undecided.empty:
            stopped = "decided"
            break
        affordable = _affordable(budget, record, time.monotonic() - t0, runs, jobs)
        if affordable == 0:
            stopped = "budget"
            break
        known = record.run_ids() | set(runs["run_id"])
        planned = []
        for c in plan_round(runs, transfer, verdicts, tolerance):
            values = cell_values(experiment, c, templates)
            rid = RunConfig(values).run_id
            if rid not in known:
                known.add(rid)
                planned.append((c, rid))
        if not planned:
            stopped = "nothing-to-add"
            break
        cut = len(planned) if affordable is not None and len(planned) > affordable else 0
        planned = planned[:affordable] if affordable is not None else planned
        number = len(record.rounds) + 1
        entry = {"round": number, "status": "running", "seconds": 0.0,
                 "undecided": [_finite(e) for e in estimate_seeds(verdicts, transfer, tolerance)],
                 "cells": [{**c.to_dict(), "run_id": rid} for c, rid in planned]}
        record.rounds.append(entry)
        save_record(record, root)   # durable before anything runs: a restart runs exactly these
        if progress:
            for line in _round_lines(number, [c for c, _ in planned], cut):
                _say(console, line, soft_wrap=True)
        run_round(entry, t0)

    runs = store.consolidate()   # runs.parquet and curves.parquet hold the refinement's runs too
    if progress:
        spent = (f"{record.runs_used()} runs" if budget.runs is not None
                 else duration_text(record.seconds_used()))
        why = {"decided": "every verdict is decided", "budget": f"budget {budget} spent",
               "nothing-to-add": "nothing left to add (every planned cell is run)"}[stopped]
        rounds = len(record.rounds)
        _say(console, f"refinement: {why}; {rounds} round{'' if rounds == 1 else 's'}, {spent} of refinement")
    return RefinementResult(verdicts=verdicts, record=record, stopped=stopped, runs=runs)


def _finite(entry: dict) -> dict:
    """An ``estimate_seeds`` entry as strict JSON: a seed count that is infinite or undefined is null."""
    need = entry["seeds_needed"]
    return {**entry, "seeds_needed": int(need) if math.isfinite(need) else None,
            "drift_ci": [x if math.isfinite(x) else None for x in entry["drift_ci"]]}


def refinement_estimate(experiment: Experiment, results_dir=None, metric: str = "train_loss",
                        tolerance: float = 1.0, ci: float = 0.9, min_runs: int = 3, n_boot: int = 1000,
                        seed: int = 0) -> list[dict]:
    """``sweep --until decided --dry-run``: from the directory's runs, per undecided group the
    seeds a decided verdict needs (``refine.estimate_seeds``). Writes nothing."""
    root = results_dir_for(experiment, results_dir)
    store = ResultStore(root)
    runs = store.load_runs() if root.exists() else pd.DataFrame()
    if runs.empty:
        raise UserError(f"--until decided --dry-run: {root} holds no runs yet to estimate from; sweep the grid first")
    options = dict(metric=metric, min_runs=min_runs, ci=ci, tolerance=tolerance, n_boot=n_boot, seed=seed)
    transfer, verdicts = _analyse(runs, options)
    return estimate_seeds(verdicts, transfer, tolerance)

