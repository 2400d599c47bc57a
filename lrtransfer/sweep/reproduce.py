"""Re-run a sample of a results directory's cells here and check its numbers and verdicts hold.

A run is bit-identical only on the machine, thread count and torch build that recorded it
(docs/results.md). ``reproduce(DIR)`` picks a few of DIR's cells (the optima of every series
at every scale first), trains each as the sweep trained it (alone, or in the bundle it was
recorded in) in memory, never writing into DIR, and compares: per cell, the difference from
the recorded final metric beside that cell's seed spread; then the transfer analysis of DIR's
runs with the reproduced values put in, against the analysis of the recorded ones.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.transfer import analyse, group_columns, metric_spec, scale_flags
from ..errors import UserError
from ..results.store import FINISHED, ResultStore
from ..run.provenance import MACHINE_KEYS, MODEL_SCALE_AXES, SCALE_AXES, code_fingerprint, machine_here, other_machine
from .config import TOP_LEVEL, Experiment, experiment_from_dict

DEFAULT_CELLS = 8
SPREADS = 2.0   # a reproduced cell holds when |difference| <= SPREADS x its seed spread
# what training a cell records; the reproduced values of these replace the recorded ones
OUTCOME = ("status", "final_train_loss", "final_test_loss", "final_test_acc", "diverged_at_step", "steps_done")
FINGERPRINTS = ("code_fingerprint", "data_fingerprint")


@dataclass
class Reproduction:
    """What ``reproduce`` found.

    ``cells``: one row per reproduced cell (run_id, series, scale keys, lr, seed, recorded,
    reproduced, diff, rel_diff, spread, diff_spreads, identical, holds, how). ``optima``: per
    (series, group, axis, scale) the recorded and reproduced grid optimum and flags.
    ``verdicts``: per (series, group, axis) the recorded and reproduced verdict and flags.
    """
    results_dir: str
    metric: str
    cells: pd.DataFrame
    optima: pd.DataFrame
    verdicts: pd.DataFrame
    machine: dict
    seconds: float
    warnings: list = field(default_factory=list)

    @property
    def cells_hold(self) -> bool:
        return bool(self.cells["holds"].all())

    @property
    def analysis_holds(self) -> bool:
        return all(bool(t["holds"].all()) for t in (self.optima, self.verdicts) if len(t))

    @property
    def ok(self) -> bool:
        return self.cells_hold and self.analysis_holds

    def summary(self) -> str:
        c = self.cells
        identical = int(c["identical"].sum())
        beyond = int((~c["holds"]).sum())
        moved_opt = int((~self.optima["holds"]).sum()) if len(self.optima) else 0
        moved_verdict = int((~self.verdicts["holds"]).sum()) if len(self.verdicts) else 0
        head = "REPRODUCED" if self.ok else "NOT REPRODUCED"
        return (f"{head}: {len(c)} cells of {self.results_dir} re-run here in {self.seconds:.0f} s: {identical} "
                f"bit-identical, {beyond} beyond {SPREADS:g}x their seed spread; {moved_opt} of {len(self.optima)} "
                f"optima and {moved_verdict} of {len(self.verdicts)} verdicts changed")


def recorded_results(results_dir) -> tuple[Experiment, dict, pd.DataFrame]:
    """(the experiment as the sweep recorded it, experiment.json, the runs table) of a results directory."""
    root = Path(results_dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such results directory")
    store = ResultStore(root)
    recorded = store.experiment()
    if not recorded:
        raise UserError(f"{root}: no experiment.json here, so the cells cannot be rebuilt; reproduce takes a "
                        f"directory a sweep wrote")
    runs = store.load_runs()
    if runs.empty or "run_id" not in runs:
        raise UserError(f"{root}: no runs recorded here (expected {root}/runs/*.parquet or runs.parquet)")
    raw = {k: v for k, v in recorded.items() if k in TOP_LEVEL}
    exp = experiment_from_dict(raw, name=str(recorded.get("name") or root.name))
    return exp, recorded, runs


def _same(value):
    """A config value as a key comparable across a parquet round trip (ints read back as
    floats, None as NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    return str(value)


def match_cells(exp: Experiment, runs: pd.DataFrame) -> tuple[list[tuple[dict, dict]], list[str], list[dict]]:
    """(each finished recorded row with the cell of ``exp`` it records, the keys that tell cells
    apart, every cell of ``exp`` in grid order). Cells are as the sweep would run them now
    (current code fingerprint), matched on those keys, not on run ids, so rows recorded with
    other training code still find their cell."""
    cells = [c.values for c in exp.cells()]
    keys = sorted(k for k in cells[0] if k not in FINGERPRINTS and len({_same(c.get(k)) for c in cells}) > 1)
    keys = ["series", *[k for k in keys if k != "series"]]
    by_key = {tuple(_same(c.get(k)) for k in keys): c for c in cells}
    pairs = []
    for row in runs[runs["status"].isin(FINISHED)].drop_duplicates("run_id").to_dict("records"):
        cell = by_key.get(tuple(_same(row.get(k)) for k in keys))
        if cell is not None:
            pairs.append((row, cell))
    return pairs, keys, cells


def _metric_value(row: dict, column: str) -> float:
    v = row.get(column)
    return float(v) if v is not None and row.get("status") == "done" else math.nan


def sample_cells(pairs: list[tuple[dict, dict]], keys: list[str], n: int, seed: int = 0,
                 metric: str = "train_loss") -> list[int]:
    """Indices into ``pairs`` of ``n`` cells to re-run, deterministic in ``seed``.

    First one seed at the optimum LR of every (series, scale) group, then one at each LR next
    to it (the cells a verdict hangs on), then the rest; within each tier the groups take
    turns, so the sample spreads across series and scales."""
    rng = np.random.default_rng(seed)
    spec = metric_spec(metric)
    point_keys = [k for k in keys if k != "seed"]
    group_keys = [k for k in point_keys if k != "lr"]
    groups: dict[tuple, dict[float, list[int]]] = {}
    for i, (row, _) in enumerate(pairs):
        g = tuple(_same(row.get(k)) for k in group_keys)
        groups.setdefault(g, {}).setdefault(float(row["lr"]), []).append(i)
    tiers: list[list[list[int]]] = [[], [], []]   # tier -> one candidate list per group
    for lrs in groups.values():
        order = sorted(lrs)
        means = [np.nanmean([spec.sign * _metric_value(pairs[i][0], spec.column) for i in lrs[lr]] or [math.nan])
                 if any(math.isfinite(_metric_value(pairs[i][0], spec.column)) for i in lrs[lr]) else math.inf
                 for lr in order]
        best = int(np.argmin(means)) if any(math.isfinite(m) for m in means) else None
        near = {best} if best is not None else set()
        tiers[0].append([int(rng.choice(lrs[order[best]]))] if best is not None else [])
        nbrs = [j for j in (best - 1, best + 1) if best is not None and 0 <= j < len(order)]
        near |= set(nbrs)
        tiers[1].append([int(rng.choice(lrs[order[j]])) for j in nbrs])
        rest = [i for j, lr in enumerate(order) for i in lrs[lr] if j not in near]
        rest += [i for j in near for i in lrs[order[j]]]
        tiers[2].append([int(i) for i in rng.permutation(rest)] if rest else [])
    picked: list[int] = []
    for tier in tiers:
        turn = [list(c) for c in (tier[k] for k in rng.permutation(len(tier)))]
        while any(turn) and len(picked) < n:
            for c in turn:
                while c and c[0] in picked:
                    c.pop(0)
                if c and len(picked) < n:
                    picked.append(c.pop(0))
    return sorted(picked)


def _recorded_bundle(cell: dict, cells: list[dict], size: int) -> list[dict] | None:
    """The bundle of ``size`` cells the sweep trained ``cell`` in (``batched.plan_bundles``:
    same shape, grid order, even chunks), or None when the grid no longer forms it."""
    from ..run.batched import bundle_key, bundle_size
    key = bundle_key(cell)
    group = [c for c in cells if bundle_key(c) == key]
    chunk = bundle_size(len(group))
    for i in range(0, len(group), chunk):
        members = group[i:i + chunk]
        if any(m is cell for m in members):
            return members if len(members) == size else None
    return None


def _device_for(row: dict, device: str | None) -> str:
    if device is not None:
        return device
    if str(row.get("device") or "cpu").startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise UserError(f"run {row['run_id']} was recorded on {row['device']}; this machine has no CUDA: "
                            f"pass --device cpu to reproduce it on the CPU (expect float differences)")
        return "cuda"
    return "cpu"


def _train(selected: list[tuple[dict, dict]], all_cells: list[dict], device: str | None,
           on_cell=None) -> list[tuple[dict, str]]:
    """(reproduced row, how it trained) per selected (recorded row, cell)."""
    from ..run.batched import execute_bundle
    from ..run.train import execute
    out: list = [None] * len(selected)
    done_bundles: dict[tuple, list] = {}
    for i, (row, cell) in enumerate(selected):
        size = int(row["bundle_size"]) if _finite(row.get("bundle_size")) else 1
        dev = _device_for(row, device)
        bundle = _recorded_bundle(cell, all_cells, size) if size > 1 else None
        if bundle is not None:
            ids = tuple(id(c) for c in bundle)
            if ids not in done_bundles:
                done_bundles[ids] = [r.row for r in execute_bundle(bundle, dev)]
            out[i] = (done_bundles[ids][[id(c) for c in bundle].index(id(cell))], f"bundle of {size}")
        else:
            how = "alone" if size <= 1 else f"alone (recorded in a bundle of {size} the grid no longer forms)"
            out[i] = (execute(cell, dev).row, how)
        if on_cell is not None:
            on_cell(i + 1, len(selected))
    return out


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _equal(a, b) -> bool:
    if _finite(a) and _finite(b):
        return float(a) == float(b)
    return _same(a) == _same(b)


def _seed_spread(runs: pd.DataFrame, row: dict, point_keys: list[str], column: str) -> float:
    """Std over the seeds of ``row``'s point (series, scale, LR, …) in the recorded runs."""
    mask = runs["status"] == "done"
    for k in point_keys:
        if k in runs:
            want = _same(row.get(k))
            mask &= runs[k].map(_same) == want
    values = pd.to_numeric(runs.loc[mask, column], errors="coerce").dropna()
    return float(values.std(ddof=1)) if len(values) >= 2 else math.nan


def _cell_report(row: dict, new: dict, how: str, spread: float, column: str, keys: list[str]) -> dict:
    recorded, reproduced = _metric_value(row, column), _metric_value(new, column)
    identical = all(_equal(row.get(k), new.get(k)) for k in OUTCOME)
    diff = reproduced - recorded
    ratio = abs(diff) / spread if spread > 0 else (0.0 if diff == 0 else math.inf)
    if identical:
        holds = True
    elif row["status"] != new["status"]:
        holds = False
    elif row["status"] == "diverged":
        holds = True   # diverged both times; the step it stopped at is not a verdict's input
    else:
        holds = math.isfinite(ratio) and ratio <= SPREADS
    # the model's size always, the other scale-like keys (batch_size, steps, ...) where they vary
    scale = {k: row.get(k) for k in SCALE_AXES if k in MODEL_SCALE_AXES or k in keys}
    extra = {k: row.get(k) for k in keys if k not in ("series", "lr", "seed", *SCALE_AXES)}
    return {"run_id": row["run_id"], "series": row["series"], **scale, **extra, "lr": float(row["lr"]),
            "seed": row.get("seed"), "recorded_status": row["status"], "status": new["status"],
            "recorded": recorded, "reproduced": reproduced, "diff": diff,
            "rel_diff": diff / abs(recorded) if recorded else math.nan, "spread": spread,
            "diff_spreads": ratio, "identical": identical, "holds": bool(holds), "how": how,
            "recorded_machine": _machine_text(row), "same_run_id": new["run_id"] == row["run_id"]}


def _machine_text(row: dict) -> str:
    elsewhere = other_machine(row)
    if elsewhere is None:
        return "unrecorded"
    return "another" if elsewhere else "this"


def _substituted(runs: pd.DataFrame, replaced: dict[str, dict]) -> pd.DataFrame:
    out = runs.copy()
    out["status"] = out["status"].astype(object)
    for rid, new in replaced.items():
        at = out.index[out["run_id"] == rid]
        for col in OUTCOME:
            if col in out:
                out.loc[at, col] = new.get(col)
    return out


def _compare_analysis(runs: pd.DataFrame, reproduced: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(optima, verdicts): the recorded and reproduced grid optimum and flags per scale, verdict
    and flags per series, and whether each holds."""
    before_t, before_v = analyse(runs, metric)
    after_t, after_v = analyse(reproduced, metric)
    labels = ["series", *group_columns(before_t), "axis"]
    scale_keys = [*labels, "scale"]

    def optima(t: pd.DataFrame) -> pd.DataFrame:
        return t.assign(flags=[scale_flags(r) for r in t.to_dict("records")])[[*scale_keys, "opt_lr", "flags"]]

    o = optima(before_t).merge(optima(after_t), on=scale_keys, how="outer", suffixes=("_recorded", ""))
    o["holds"] = [_equal(a, b) and fa == fb for a, b, fa, fb in
                  zip(o["opt_lr_recorded"], o["opt_lr"], o["flags_recorded"], o["flags"])]
    o = o.rename(columns={"opt_lr_recorded": "recorded_opt_lr", "flags_recorded": "recorded_flags"})
    v = before_v[[*labels, "verdict", "flags"]].merge(after_v[[*labels, "verdict", "flags"]], on=labels,
                                                       how="outer", suffixes=("_recorded", ""))
    v["holds"] = (v["verdict_recorded"] == v["verdict"]) & (v["flags_recorded"] == v["flags"])
    v = v.rename(columns={"verdict_recorded": "recorded_verdict", "flags_recorded": "recorded_flags"})
    return (o[[*scale_keys, "recorded_opt_lr", "opt_lr", "recorded_flags", "flags", "holds"]],
            v[[*labels, "recorded_verdict", "verdict", "recorded_flags", "flags", "holds"]])


def reproduce(results_dir, cells: int = DEFAULT_CELLS, seed: int = 0, metric: str = "train_loss",
              device: str | None = None, on_cell=None) -> Reproduction:
    """Re-run ``cells`` of ``results_dir``'s finished cells here (``sample_cells``; ``seed``
    picks them) and compare (module docstring). ``device``: default the recorded one's kind.
    ``on_cell(done, total)`` is called as cells finish. Writes nothing."""
    if isinstance(cells, bool) or not isinstance(cells, (int, np.integer)) or cells < 1:
        raise UserError(f"--cells {cells!r}: must be a whole number >= 1")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UserError(f"--seed {seed!r}: must be a whole number")
    metric_spec(metric)
    exp, _, runs = recorded_results(results_dir)
    spec = metric_spec(metric, runs)
    start = time.perf_counter()
    pairs, keys, grid = match_cells(exp, runs)
    if not pairs:
        raise UserError(f"{results_dir}: none of the recorded runs is a finished cell of the experiment "
                        f"experiment.json describes; nothing to reproduce")
    picked = [pairs[i] for i in sample_cells(pairs, keys, int(cells), int(seed), metric)]
    warnings = _warnings(runs, [row for row, _ in picked], exp, len(pairs), int(cells))
    trained = _train(picked, grid, device, on_cell)
    point_keys = [k for k in keys if k != "seed"]
    # keys a series fixes (its optimizer, normalize) say nothing the series name does not
    shown = [k for k in keys if any(len({_same(c.get(k)) for c in grid if c["series"] == s}) > 1
                                    for s in {c["series"] for c in grid})]
    rows = [_cell_report(row, new, how, _seed_spread(runs, row, point_keys, spec.column), spec.column, shown)
            for (row, _), (new, how) in zip(picked, trained)]
    table = pd.DataFrame(rows)
    try:
        optima, verdicts = _compare_analysis(runs, _substituted(runs, {r["run_id"]: new for (r, _), (new, _h) in
                                                                       zip(picked, trained)}), metric)
    except UserError as e:
        optima, verdicts = pd.DataFrame(columns=["holds"]), pd.DataFrame(columns=["holds"])
        warnings.append(f"no transfer analysis of the recorded runs ({e}): verdicts and optima not compared")
    here = machine_here(picked[0][0] if device is None else {"device": device})
    return Reproduction(results_dir=str(results_dir), metric=metric, cells=table, optima=optima, verdicts=verdicts,
                        machine=here, seconds=time.perf_counter() - start, warnings=warnings)


def _warnings(runs: pd.DataFrame, rows: list[dict], exp: Experiment, matched: int, asked: int) -> list[str]:
    out = []
    if asked > matched:
        out.append(f"--cells {asked}: the directory has {matched} finished cells; re-running all of them")
    now = code_fingerprint()
    codes = sorted({str(r.get("code_fingerprint")) for r in rows} - {now})
    if codes:
        out.append(f"the runs were recorded with training code {', '.join(codes)}, this checkout runs {now}: "
                   f"differences may come from the code, not the machine")
    data_now = exp.fingerprints["data_fingerprint"]
    datas = sorted({str(r.get("data_fingerprint")) for r in rows} - {data_now})
    if datas:
        out.append(f"the runs were recorded on data {', '.join(datas)}, this machine reads {data_now}: "
                   f"differences may come from the data")
    where = [other_machine(r) for r in rows]
    if any(w is None for w in where):
        out.append("some runs were recorded before rows named their machine (" + ", ".join(MACHINE_KEYS) + ")")
    if any(w is True for w in where):
        out.append("some runs were recorded on another machine: expect last-bit differences, and through "
                   "training's sensitivity sometimes a few percent")
    return out
