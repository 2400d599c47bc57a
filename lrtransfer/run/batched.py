"""Cells trained together: one forward and backward for a bundle of same-shaped runs.

Cells that differ only in ``BUNDLE_FREE`` keys have their weights stacked along a leading
cell axis and run as one vmapped program; everything else stays per cell, as
``train.execute`` does it alone, and the losses agree with training alone to float rounding.
Why and when it pays (``batch_cells = "auto"``): docs/batching.md.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
import warnings

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from ..optim import Diverged
from ..optim.stacked import StackedNormalized, StackedPlain, normalize_stackable, stackable
from .train import RunResult, Training, cross_entropy, resolve_device

# Keys in which the cells of one bundle may differ; every other key is the bundle's shape.
BUNDLE_FREE = ("lr", "seed", "weight_decay", "elr", "series", "run_id", "code_fingerprint")
MAX_BUNDLE = 12          # cells per bundle: bigger bundles gain little and balance workers worse
PROBE_STEPS = 10         # timed steps per way in the auto probe (after 2 warm steps)
PROBE_CELLS = 8          # bundle size the probe times
PAYS_BELOW = 0.85        # batched per-cell step time / alone, below which batching is used
# A lone step this long is arithmetic, not per-step overhead: what batching amortises (Python,
# dispatch, small kernels) is 1-3 ms a step on this project's CPUs, so it cannot save the
# 15% PAYS_BELOW asks for, and the bundled probe, 8 cells of such steps, is not run at all.
# Measured on 2 CPU cores: width-512 ResMLP steps of 17-23 ms, 0.9-1.24x as long per cell
# batched; width 128, 3-8 ms, 0.6-0.8x.
PROBE_LONGEST_STEP = 0.012


def bundle_key(values: dict) -> str:
    """What cells must share to train together (their shape): the values but ``BUNDLE_FREE``."""
    return json.dumps({k: v for k, v in values.items() if k not in BUNDLE_FREE}, sort_keys=True, default=str)


def bundle_size(waiting: int, limit: int = MAX_BUNDLE) -> int:
    """Cells per bundle for ``waiting`` same-shaped cells: as even as the limit allows."""
    if waiting <= 0:
        return 0
    bundles = math.ceil(waiting / limit)
    return math.ceil(waiting / bundles)


class CellStack:
    """The bundle's weights: one (cells, …) tensor per atom; each cell's atoms point into it."""

    def __init__(self, runs: list[Training]):
        self.runs = runs
        atoms = runs[0].model.atoms()
        names = {id(p): n for n, p in runs[0].model.named_parameters()}
        weights = [a.weight for a in atoms]
        if len(names) != len(weights) or any(id(w) not in names for w in weights):
            raise ValueError("batched: the model has parameters that are not atom weights")
        self.names = [names[id(w)] for w in weights]
        self.params = [torch.stack([r.model.atoms()[j].weight.detach() for r in runs]).requires_grad_()
                       for j in range(len(weights))]
        self._point()

    def _point(self) -> None:
        # each cell's own model reads and writes its slice: its optimizer, diagnostics and
        # evaluation work on the stacked weights unchanged
        for i, run in enumerate(self.runs):
            for atom, p in zip(run.model.atoms(), self.params):
                atom.weight.data = p.data[i]

    def keep(self, index: list[int]) -> None:
        rows = torch.tensor(index, device=self.params[0].device)
        self.runs = [self.runs[i] for i in index]
        self.params = [p.detach().index_select(0, rows).requires_grad_() for p in self.params]
        self._point()


def _losses(model, names):
    """(stacked weights, xs, ys) -> the (cells,) losses, one forward for all cells (a GPT's
    attention runs cell by cell on a CPU: ``_unbatched_attention_allowed``)."""
    def one(weights, x, y):
        return cross_entropy(_Bound(model, dict(zip(names, weights))), x, y)
    return vmap(one, in_dims=(0, 0, 0))


class _Bound:
    """``model`` called with ``weights`` in place of its own (what ``cross_entropy`` needs of it)."""

    def __init__(self, model, weights):
        self.model, self.weights = model, weights

    def __call__(self, x):
        return functional_call(self.model, self.weights, (x,))


def stacked_update(opts: list, params: list[torch.Tensor]):
    """The one update for all cells of a bundle (``StackedPlain`` or ``StackedNormalized``),
    or None where each cell's own optimizer steps its slice."""
    if all(stackable(o) for o in opts):
        return StackedPlain(opts, params)
    if all(normalize_stackable(o) for o in opts):
        return StackedNormalized(opts, params)
    return None


def execute_bundle(cells: list[dict], device: str | torch.device = "cpu", on_step=None) -> list[RunResult]:
    """Train ``cells`` (same ``bundle_key``) together; one ``RunResult`` per cell, in order."""
    device = resolve_device(device) if isinstance(device, str) else device
    if len({bundle_key(v) for v in cells}) != 1:
        raise ValueError("execute_bundle: the cells differ in more than " + ", ".join(BUNDLE_FREE))
    if len(cells) == 1:   # nothing to share: the solo loop, bit for bit
        from .train import execute
        return [execute(cells[0], device, on_step=on_step)]
    started = time.perf_counter()
    runs = [Training(v, device) for v in cells]
    stack = CellStack(runs)
    fused = stacked_update([r.opt for r in runs], stack.params)
    losses_of = _losses(runs[0].model, stack.names)
    steps = runs[0].steps
    for step in range(steps):
        live = stack.runs
        xs, ys = _batches(live)
        with live[0].precision(), _unbatched_attention_allowed():
            losses = losses_of(stack.params, xs, ys)
        values = losses.tolist()   # one host sync per step for the whole bundle
        dropped = [i for i, (run, v) in enumerate(zip(live, values)) if run.loss_diverged(v, step)]
        lrs = [run.opt.current_lr() for run in live]
        for p in stack.params:
            p.grad = None
        losses.sum().backward()   # cells share no weights: each slice gets its own cell's gradient
        if live[0].logs(step):
            for i, run in enumerate(live):
                if run.diagnostics is not None and i not in dropped:
                    run.diagnostics.before_step()
        dropped += _update(live, stack, fused, step, dropped)
        for i, run in enumerate(live):
            if i not in dropped:
                run.stepped(step, values[i], lrs[i])
        if dropped:
            keep = [i for i in range(len(live)) if i not in dropped]
            stack.keep(keep)
            if fused is not None:
                fused.keep(keep, stack.params)
            if not stack.runs:
                break
        if on_step is not None:
            on_step(step + 1, steps)
    return _results(runs, stack, time.perf_counter() - started)


def _update(live: list[Training], stack: CellStack, fused, step: int, dropped: list[int]) -> list[int]:
    """One update of every live cell not yet ``dropped``: the stacked update, else each cell's
    own optimizer on its slice. Returns the cells whose update diverged (they stop)."""
    diverged = []
    if fused is not None:
        finite = fused.step([p.grad for p in stack.params]).tolist()
        for i, ok in enumerate(finite):
            if not ok and i not in dropped:
                live[i].diverge(step)
                diverged.append(i)
        return diverged
    for i, run in enumerate(live):
        if i in dropped:
            continue
        for atom, p in zip(run.model.atoms(), stack.params):
            atom.weight.grad = p.grad[i]
        try:
            with run.update_precision():
                run.opt.step()
        except Diverged:
            run.diverge(step)
            diverged.append(i)
    return diverged


def _results(runs: list[Training], stack: CellStack, wall: float) -> list[RunResult]:
    """Every cell's result: the finished ones evaluated together, the bundle's time shared."""
    finished = [run for run in stack.runs if run.status == "done"]
    evaluations = {}
    if finished:
        stack.keep([stack.runs.index(run) for run in finished])
        evaluations = dict(zip(map(id, finished), _evaluate(stack, runs[0])))
    results = [run.result(evaluations.get(id(run)), bundle_size=len(runs), compiled=False) for run in runs]
    for r in results:   # the bundle's time, shared: what one cell cost
        r.row.update(bundle_wall_seconds=wall, wall_seconds=wall / len(runs))
    return results


@contextlib.contextmanager
def _unbatched_attention_allowed():
    # torch's fused CPU attention kernel has no vmap batching rule, so it runs cell by cell:
    # the numbers are right, only slower (which the auto probe measures); its warning says so
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet "
                                "implemented the batching rule", category=UserWarning)
        yield


@torch.no_grad()
def _evaluate(stack: CellStack, first: Training) -> list[tuple[float, float]]:
    """``train.evaluate`` for every cell of the stack at once: (mean test loss, accuracy) each.
    The cells see the same test batches, so each batch goes through all of them in one call."""
    values, model = first.values, first.model
    model.eval()
    forward = vmap(lambda weights, x: _Bound(model, dict(zip(stack.names, weights)))(x), in_dims=(0, None))
    cells = len(stack.runs)
    loss = torch.zeros(cells, dtype=torch.float64)
    correct = torch.zeros(cells, dtype=torch.int64)
    total = 0
    for x, y in first.ds.eval_batches("test", values["batch_size"], max_examples=values["eval_examples"]):
        with first.precision(), _unbatched_attention_allowed():
            out = forward(stack.params, x)
        out = out.float()
        flat, target = out.reshape(cells, -1, out.shape[-1]), y.reshape(-1)
        per_example = F.cross_entropy(flat.reshape(-1, flat.shape[-1]), target.repeat(cells), reduction="none")
        loss += per_example.reshape(cells, -1).sum(1).double().cpu()
        correct += (flat.argmax(-1) == target).sum(1).cpu()
        total += target.numel()
    total = max(total, 1)
    return [(float(l) / total, int(c) / total) for l, c in zip(loss, correct)]


def _batches(runs: list[Training]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each cell's next batch from its own generator, stacked; cells of one seed draw the
    same batch, so it is drawn once and shared (their generators stay in step)."""
    drawn: dict[int, tuple] = {}
    xs, ys = [], []
    for run in runs:
        seed = run.values["seed"]
        if seed in drawn:
            run.batches.set_state(drawn[seed][2])
            x, y = drawn[seed][:2]
        else:
            x, y = run.sample()
            drawn[seed] = (x, y, run.batches.get_state())
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


def plan_bundles(cells: list[dict], device: str | torch.device = "cpu") -> list[list[int]]:
    """Which of ``cells`` (run values) train together: index lists, one per bundle of two or
    more. Cells of one ``bundle_key`` are bundled when their ``batch_cells`` is on, or auto and
    ``batching_pays``, in chunks of ``bundle_size``; the rest train alone. Decided once, when
    the cells are enqueued, so that every worker trains the same bundles."""
    groups: dict[str, list[int]] = {}
    for k, values in enumerate(cells):
        groups.setdefault(bundle_key(values), []).append(k)
    bundles = []
    for index in groups.values():
        values = cells[index[0]]
        mode = values.get("batch_cells", "auto")
        if len(index) < 2 or mode == "off" or (mode == "auto" and not batching_pays(values, device)):
            continue
        size = bundle_size(len(index))
        bundles += [index[i:i + size] for i in range(0, len(index), size)]
    return bundles


def longest_first(cells: list[dict], bundles: list[list[int]]) -> list[list[int]]:
    """Every cell's index once, as jobs (a bundle, or a cell alone), longest first.

    A job's length is its cells' probed step time (``batching_pays``: bundled or alone) times
    their steps; jobs of shapes the probe did not time come first, in grid order. Workers that
    take jobs in this order finish together: the longest job handed out last would leave the
    other workers idle while it runs (``estimate.makespan`` assumes the same order)."""
    inside = {k for b in bundles for k in b}
    jobs = list(bundles) + [[k] for k in range(len(cells)) if k not in inside]

    def seconds(job: list[int]) -> float:
        values = cells[job[0]]
        alone, together = _STEP_SECONDS.get(bundle_key(values), (math.inf, math.inf))
        per_cell = together if len(job) > 1 and math.isfinite(together) else alone
        return per_cell * len(job) * values["steps"]
    return sorted(sorted(jobs), key=seconds, reverse=True)


_STEP_SECONDS: dict[str, tuple[float, float]] = {}   # shape -> probed (alone, bundled per cell)


def forget_probes() -> None:
    """Drop this process's probed step times: the next ``batching_pays`` of each shape times it
    afresh, as a new process would (benchmarks that run several sweeps in one process)."""
    _STEP_SECONDS.clear()


def batching_pays(values: dict, device: str | torch.device = "cpu") -> bool:
    """Whether training cells shaped like ``values`` together beats one after another here:
    timed once per shape and process on ``PROBE_STEPS`` steps each way (after warm steps);
    a lone step over ``PROBE_LONGEST_STEP`` seconds decides "no" without the bundled half."""
    key = bundle_key(values)
    if key not in _STEP_SECONDS:
        try:
            alone = step_seconds([values], device)
            together = math.inf
            if alone <= PROBE_LONGEST_STEP:
                together = step_seconds([{**values, "seed": s} for s in range(PROBE_CELLS)], device) / PROBE_CELLS
        except Exception:   # a cell that cannot train: it trains alone, where its error is its own
            alone = together = math.inf
        _STEP_SECONDS[key] = (alone, together)
    alone, together = _STEP_SECONDS[key]
    return together < PAYS_BELOW * alone   # inf < inf is False: an untimed bundle does not pay


def step_seconds(cells: list[dict], device) -> float:
    """Seconds per step of ``cells`` trained together (alone for one), warm, the shorter of two.
    The probe's LRs are scaled down so that no probe cell diverges and stops early, and its
    final evaluation is of one example (it is not timed, but it would cost as much as the steps).

    On a CPU the seconds are this process's CPU time, not wall time: the probe runs while the
    sweep's workers start up (and anything else) on the same cores, and CPU time does not count
    the moments the probe waits for a core, which would land on one half of the comparison."""
    from .train import execute
    device = resolve_device(device) if isinstance(device, str) else device
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    probe = [{**v, "steps": 2 + PROBE_STEPS, "diagnostics": False, "log_condition": False, "code_fingerprint": None,
              "eval_examples": 1, "lr": v["lr"] * 1e-3, "elr": v.get("elr", 0.0) * 1e-3} for v in cells]
    times = []
    for _ in range(2):
        marks: dict[int, float] = {}

        def on_step(step, steps):
            marks[step] = clock()
        if len(probe) == 1:
            execute(probe[0], device, on_step=on_step)
        else:
            execute_bundle(probe, device, on_step=on_step)
        if 2 + PROBE_STEPS not in marks:
            return math.inf
        times.append((marks[2 + PROBE_STEPS] - marks[2]) / PROBE_STEPS)
    return min(times)
