"""How long a sweep will take here: each distinct run shape timed on short warm runs, the runs
scaled to their length and handed out longest first to the workers. The model and its measured
constants are explained in docs/time_estimates.md.
"""
from __future__ import annotations

import heapq
import math
import tempfile
import time
from dataclasses import dataclass

from ..errors import UserError
from ..results.store import ResultStore
from ..run.batched import execute_bundle, longest_first, plan_bundles
from ..run.train import execute

# Keys that change a run's numbers but not the work of a step: cells differing only in these
# share one measurement. `steps` is scaled, not measured.
COST_FREE = ("lr", "elr", "seed", "weight_decay", "momentum", "beta1", "beta2", "eps", "warmup", "schedule",
             "diverge_factor", "final_k", "series", "muon_momentum", "muon_adam_ratio", "steps",
             "data_fingerprint", "code_fingerprint")
PARALLEL_SLOWDOWN = 1.12     # per-run slowdown when every core runs a worker (docs/time_estimates.md)
WORKER_START_SECONDS = 2.5   # a worker process: python, torch and lrtransfer imported
QUEUE_SECONDS = 0.02         # a claim and a tell on the journal queue


@dataclass
class RunCost:
    fixed: float        # seconds per run besides the steps
    per_step: float     # seconds per training step
    record: float       # seconds to write the run's files

    def seconds(self, values: dict) -> float:
        evaluations = (values["steps"] - 1) // values["eval_every"] if values.get("eval_every") else 0
        return self.fixed * (1 + evaluations) + self.per_step * values["steps"] + self.record


def shape_key(values: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in values.items() if k not in COST_FREE))


def _timed(values: dict, steps: int, device, cells: int = 1) -> tuple[float, object]:
    """Seconds to train ``cells`` cells shaped like ``values`` (a bundle when more than one,
    seeds 0, 1, … so each draws its own batches) for ``steps`` steps; and one cell's result."""
    t0 = time.perf_counter()
    short = {**values, "steps": steps, "code_fingerprint": None}
    try:
        if cells == 1:
            result = execute(short, device)
        else:
            result = execute_bundle([{**short, "seed": s} for s in range(cells)], device)[0]
    except UserError:
        raise
    except Exception as e:  # a model that cannot be built or run: say which cell, not a traceback
        raise UserError(f"--dry-run: a run of series {values.get('series')!r} (width {values.get('width')}, depth "
                        f"{values.get('depth')}) cannot be timed: {type(e).__name__}: {e}") from None
    return time.perf_counter() - t0, result


def measure(values: dict, device, short: int | None = None, cells: int = 1) -> RunCost:
    """The cost of a run shaped like ``values`` (of a bundle of ``cells`` such runs trained
    together), from warm short runs (docs/time_estimates.md).

    n₁ is one logging interval (so the diagnostics and the curve are paid as in the real run)
    and n₂ four, both capped by the run's own length; the shorter of two timings of each
    counts (noise only ever adds time).
    """
    log_every = values["log_every"]
    n1 = short or min(values["steps"], log_every)
    n2 = max(n1 + 1, min(values["steps"], 4 * n1))
    _timed(values, 2, device, cells)   # warm: data loaded and cached, allocator and kernels warm
    t1 = min(_timed(values, n1, device, cells)[0] for _ in range(2))
    timings = [_timed(values, n2, device, cells) for _ in range(2)]
    t2, result = min(timings, key=lambda t: t[0])
    per_step = max(t2 - t1, 0.0) / (n2 - n1)
    fixed = max(t1 - per_step * n1, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(tmp)
        t0 = time.perf_counter()
        store.write(result.row, result.curves, result.diagnostics)
        record = (time.perf_counter() - t0 + QUEUE_SECONDS) * cells
    return RunCost(fixed=fixed, per_step=per_step, record=record)


def makespan(durations: list[float], workers: int) -> float:
    """The longest worker's load when durations are handed out longest first to the least
    loaded worker."""
    if not durations:
        return 0.0
    loads = [0.0] * max(1, workers)
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + d)
    return max(loads)


def wall_seconds(durations: list[float], jobs: int, threads: int, cores: int) -> float:
    """Estimated wall time of runs of ``durations`` (seconds each, alone on a core) on ``jobs``
    workers of ``threads`` threads each on ``cores`` cores."""
    if jobs <= 1:
        return makespan(durations, 1)
    demand = jobs * threads
    slowdown = max(1.0, demand / cores) * (PARALLEL_SLOWDOWN if demand >= cores else 1.0)
    return makespan([d * slowdown for d in durations], jobs) + WORKER_START_SECONDS


def duration_text(seconds: float) -> str:
    """A wall time as a sweep's estimates show it: 42 s, 12.5 min, 3.2 h (``unknown`` if not finite)."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def planned_jobs(cells: list[dict], device) -> list[list[int]]:
    """The jobs a sweep hands out for ``cells`` (run values), in the order workers claim them:
    every cell's index once, as a bundle (``batched.plan_bundles``) or alone, longest first
    (``batched.longest_first``). ``sweep.prepare`` enqueues these and ``estimate`` times these."""
    return longest_first(cells, plan_bundles(cells, device))


def estimate(cells: list[dict], device, jobs: int, cores: int) -> tuple[float, float, int]:
    """(wall seconds with ``jobs`` workers, compute seconds, shapes measured) for ``cells`` (run values).

    The cells are grouped into the bundles the sweep would train together
    (``batched.plan_bundles``, the same decision); a bundle is one job for one worker. Each shape is measured on its cell with the smallest LR: a cell
    that diverges would stop early and make its shape look cheap."""
    jobs_of = planned_jobs(cells, device)
    smallest: dict = {}
    for values in cells:
        key = shape_key(values)
        if key not in smallest or _lr_order(values) < _lr_order(smallest[key]):
            smallest[key] = values
    # a shape is measured once, at its largest bundle; a bundle a cell or two smaller costs
    # its share of that (one bundle's work grows with its cells)
    largest: dict = {}
    for members in jobs_of:
        key = shape_key(cells[members[0]])
        largest[key] = max(largest.get(key, 0), len(members))
    costs = {key: measure(smallest[key], device, cells=size) for key, size in largest.items()}
    durations = []
    for members in jobs_of:
        first = cells[members[0]]
        key = shape_key(first)
        durations.append(costs[key].seconds(first) * len(members) / largest[key])
    threads = max((v.get("threads", 1) for v in cells), default=1)
    return wall_seconds(durations, jobs, threads, cores), sum(durations), len(costs)


def _lr_order(values: dict) -> tuple:
    return (values.get("elr") or 0.0, values["lr"])
