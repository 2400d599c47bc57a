"""Refining a sweep until its transfer verdicts are decided: what to add, and the record of it.

``plan_round`` is a pure function of a results directory's runs and their transfer and verdict
tables (``analysis.transfer.analyse``): for every undecided group (verdict ``inconclusive``) it
names the cells that most narrow the verdict, each with its reason:

* an optimum on the grid's edge (``edge``): the LR window one octave beyond that edge, at the
  grid's own spacing there, with every seed the scale has;
* fewer than 2 finished seeds at a scale's optimum: seeds there;
* a drift CI straddling ±tolerance: more seeds at the scales that dominate its variance, as many
  as ``seeds_needed`` estimates (at most doubling a scale's seeds per round, since the estimate
  rests on the current CI);
* LRs half an octave from each scale's grid optimum where the grid is coarser there.

New seeds run at the scale's optimum and the two LRs on each side of it (the points the fitted
optimum is read from), not along the whole curve. ``run_refinement`` (``rounds.py``) runs the
rounds; the record of what was added is ``refinement.json`` in the results directory
(``load_record``/``save_record``), written before the cells run so a killed refinement resumes.
Nothing here imports torch: ``lrtransfer report`` reads the record through ``refined_counts``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.common import missing
from ..analysis.transfer import group_columns, seeds_needed
from ..errors import UserError
from ..results.store import write_json

RECORD_NAME = "refinement.json"
UNTIL = ("decided",)
NEAR_OPTIMUM = 2        # new seeds run at the grid optimum and this many LRs on each side
HALF_OCTAVE = 0.5
KIND_ORDER = ("window", "seeds", "lrs")   # what a run budget keeps first: blocking flags, then the CI
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h)\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


# ----------------------------------------------------------------------------- budget

@dataclass(frozen=True)
class Budget:
    """What a refinement may spend: ``runs`` (refinement cells, over every round and restart)
    or ``seconds`` (wall time of its rounds, over restarts); one of the two."""
    runs: int | None = None
    seconds: float | None = None

    def __str__(self) -> str:
        return f"{self.runs} runs" if self.runs is not None else f"{self.seconds:g} s"


def parse_budget(text) -> Budget:
    """``--budget``: a run count (``200``) or a wall time (``90s``, ``30m``, ``2h``), > 0."""
    allowed = "a run count (e.g. 200) or a wall time (e.g. 90s, 30m, 2h), greater than 0"
    raw = str(text).strip()
    if re.fullmatch(r"[+]?\d+", raw):
        runs = int(raw)
        if runs <= 0:
            raise UserError(f"--budget {text!r}: must be greater than 0; allowed: {allowed}")
        return Budget(runs=runs)
    m = _DURATION.match(raw)
    if m is None:
        raise UserError(f"--budget {text!r}: not a run count or a duration; allowed: {allowed}")
    seconds = float(m.group(1)) * _SECONDS[m.group(2).lower()]
    if not seconds > 0:
        raise UserError(f"--budget {text!r}: must be greater than 0; allowed: {allowed}")
    return Budget(seconds=seconds)


# ----------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class Cell:
    """One cell a refinement adds: the group and scale it refines, its LR (log2) and seed."""
    series: str
    keys: tuple                 # the group keys (key, value) besides series and axis
    axis: str
    scale: object
    log2_lr: float
    seed: int
    kind: str                   # window | seeds | lrs (KIND_ORDER)
    reason: str

    def identity(self) -> tuple:
        """The run it names, whichever axis planned it: (series, every key's value, lr, seed)."""
        point = tuple(sorted((k, float(v)) for k, v in (*self.keys, (self.axis, self.scale))))
        return (self.series, point, round(self.log2_lr, 6), int(self.seed))

    def to_dict(self) -> dict:
        return {"series": self.series, "keys": dict(self.keys), "axis": self.axis, "scale": _num(self.scale),
                "log2_lr": self.log2_lr, "seed": int(self.seed), "kind": self.kind, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict) -> "Cell":
        return cls(d["series"], tuple(sorted(d.get("keys", {}).items())), d["axis"], d["scale"], float(d["log2_lr"]),
                   int(d["seed"]), d["kind"], d["reason"])


def _num(v):
    """A scale or key value as plain JSON (numpy ints and whole floats as int)."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v) == int(v):
        return int(v)
    return v.item() if isinstance(v, np.generic) else v


def _same(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def _group_runs(runs: pd.DataFrame, series: str, keys: tuple, axis: str) -> pd.DataFrame:
    mask = runs["series"].astype(str) == str(series)
    for k, v in keys:
        if k in runs:
            mask &= runs[k].map(lambda x, v=v: _same(x, v))
    return runs[mask & runs[axis].notna()]


def _at_scale(group: pd.DataFrame, axis: str, scale) -> pd.DataFrame:
    return group[group[axis].map(lambda x: _same(x, scale))]


def dominant_scales(rows: pd.DataFrame) -> list:
    """The scales whose optimum CI dominates the drift's variance. The drift is the least-squares
    slope of the fitted log2 optimum on log2(scale) times the log2 range, so scale i enters
    with weight w_i = (u_i − ū)/Σ(u − ū)²·(u_max − u_min) (±1 at the two ends of a two-scale
    group, 0 at the middle of three); its share is (w_i·half-width_i)². Kept: shares at least
    half the largest. Without CIs: the smallest and largest scale."""
    rows = rows[rows["opt_log2_lr_fit"].notna()].sort_values("scale", kind="stable")
    if len(rows) < 2:
        return list(rows["scale"])
    u = np.log2(rows["scale"].astype(float).to_numpy())
    w = (u - u.mean()) / ((u - u.mean()) ** 2).sum() * (u[-1] - u[0])
    half = (rows["opt_log2_lr_fit_hi"].astype(float) - rows["opt_log2_lr_fit_lo"].astype(float)).to_numpy() / 2
    share = (w * half) ** 2
    if not np.isfinite(share).any() or np.nanmax(share) <= 0:
        return [rows["scale"].iloc[0], rows["scale"].iloc[-1]]
    keep = np.isfinite(share) & (share >= 0.5 * np.nanmax(share))
    return list(rows["scale"][keep])


def _window(lrs: np.ndarray, opt: float, scale, axis: str) -> tuple[list[float], str]:
    """One octave of LRs beyond the edge the optimum sits on, at the grid's spacing there."""
    lower = opt <= lrs.min()
    gap = float(np.diff(lrs[:2])[0]) if lower and len(lrs) > 1 else (
        float(np.diff(lrs[-2:])[0]) if len(lrs) > 1 else 1.0)
    step = min(gap, 1.0) if gap > 0 else 1.0
    n = max(1, int(round(1.0 / step)))
    edge = lrs.min() if lower else lrs.max()
    new = [edge - step * k if lower else edge + step * k for k in range(1, n + 1)]
    side = "lowest" if lower else "highest"
    where = "below" if lower else "above"
    return new, f"optimum at the {side} LR run (2^{edge:g}) at {axis} {scale}: one octave {where}"


def _near(lrs: np.ndarray, opt: float) -> list[float]:
    i = int(np.argmin(np.abs(lrs - opt)))
    return list(lrs[max(0, i - NEAR_OPTIMUM): i + NEAR_OPTIMUM + 1])


def _half_octave(lrs: np.ndarray, opt: float) -> list[float]:
    """LRs half an octave from the grid optimum, toward each neighbour farther than that."""
    i = int(np.argmin(np.abs(lrs - opt)))
    out = []
    if i > 0 and lrs[i] - lrs[i - 1] > HALF_OCTAVE + 1e-9:
        out.append(lrs[i] - HALF_OCTAVE)
    if i < len(lrs) - 1 and lrs[i + 1] - lrs[i] > HALF_OCTAVE + 1e-9:
        out.append(lrs[i] + HALF_OCTAVE)
    return out


def _seed_count(v: pd.Series, tolerance: float) -> tuple[int, str]:
    """How many seeds to add at each dominant scale of undecided group ``v``, and why."""
    n = int(v["n_seeds"]) if not missing(v["n_seeds"]) else 0
    lo, hi = float(v["drift_ci_lo"]), float(v["drift_ci_hi"])
    need = seeds_needed(lo, hi, n, tolerance)
    if not math.isfinite(need):
        why = "no drift CI yet" if math.isnan(need) else f"drift CI centred on ±{tolerance:g}"
        return max(n, 1), f"{why}: doubling the seeds"
    add = int(min(max(need - n, 1), max(n, 1)))
    return add, (f"drift CI [{lo:+.2f}, {hi:+.2f}] straddles ±{tolerance:g}; ≈{int(need)} seeds decide it "
                 f"(half-width ∝ 1/√n), {n} now")


def _group_cells(v: pd.Series, rows: pd.DataFrame, group: pd.DataFrame, keys: tuple, axis: str,
                 tolerance: float) -> list[Cell]:
    """The cells one undecided group gets this round."""
    series = v["series"]
    blocked = bool(rows["edge"].fillna(False).astype(bool).any())
    dominant = [] if blocked else dominant_scales(rows)
    add_seeds, seed_reason = _seed_count(v, tolerance) if dominant else (0, "")
    out: list[Cell] = []
    for r in rows.to_dict("records"):
        scale = r["scale"]
        here = _at_scale(group, axis, scale)
        if here.empty or missing(r.get("opt_log2_lr")):
            continue
        lrs = np.unique(np.round(np.log2(here["lr"].astype(float).to_numpy()), 6))
        seeds = sorted({int(s) for s in here["seed"]}) if "seed" in here else [0]
        opt = float(r["opt_log2_lr"])
        new_lrs: dict[float, tuple[str, str]] = {}
        if bool(r["edge"]):
            window, why = _window(lrs, opt, scale, axis)
            new_lrs.update({x: ("window", why) for x in window})
        elif not blocked:
            why = f"LRs half an octave from the optimum 2^{opt:g} at {axis} {scale}"
            new_lrs.update({x: ("lrs", why) for x in _half_octave(lrs, opt)})
        n_more, why_seeds = 0, ""
        if int(r["n_seeds"]) < 2:
            n_more, why_seeds = 2 - int(r["n_seeds"]), f"fewer than 2 finished seeds at the optimum at {axis} {scale}"
        if any(_same(scale, d) for d in dominant) and add_seeds > n_more:
            n_more, why_seeds = add_seeds, f"{seed_reason}; {axis} {scale} dominates its variance"
        fresh = list(range(max(seeds) + 1, max(seeds) + 1 + n_more))
        present = {(round(float(x), 6), int(s)) for x, s in zip(np.log2(here["lr"].astype(float)), here["seed"])} \
            if "seed" in here else set()
        # a new LR is listed with all its seeds together and a new seed with all its LRs, so a
        # budget that cuts the list leaves whole curve points and whole seeds behind it
        pairs = [(x, s) for x in sorted(new_lrs) for s in seeds + fresh]
        pairs += [(x, s) for s in seeds + fresh for x in _near(lrs, opt)]
        for x, s in pairs:
            if (round(x, 6), s) in present:
                continue
            present.add((round(x, 6), s))
            if x in new_lrs:
                kind, why = new_lrs[x]
            elif s in fresh:
                kind, why = "seeds", why_seeds
            else:   # a seed an earlier round added, near where the optimum has moved since
                kind, why = "seeds", f"seed {s} completed near the optimum at {axis} {scale}"
            out.append(Cell(series, keys, axis, _num(scale), round(float(x), 6), s, kind, why))
    return out


def _undecided(verdicts: pd.DataFrame, transfer: pd.DataFrame):
    """Each inconclusive verdict row with its group keys ((key, value) pairs) and its transfer rows."""
    keys_of = group_columns(verdicts)
    for v in verdicts[verdicts["verdict"] == "inconclusive"].to_dict("records"):
        keys = tuple(sorted((k, _num(v[k])) for k in keys_of if not missing(v.get(k))))
        mask = (transfer["series"].astype(str) == str(v["series"])) & (transfer["axis"] == v["axis"])
        for k, val in keys:
            if k in transfer:
                mask &= transfer[k].map(lambda x, val=val: _same(x, val))
        yield pd.Series(v), keys, transfer[mask]


def plan_round(runs: pd.DataFrame, transfer: pd.DataFrame, verdicts: pd.DataFrame,
               tolerance: float = 1.0) -> list[Cell]:
    """The cells that most narrow the undecided verdicts of ``verdicts`` (see the module doc),
    most urgent first (``KIND_ORDER``: windows past an edge, then seeds, then finer LRs),
    none already in ``runs``. Pure: reads the tables' public columns only."""
    out: list[Cell] = []
    for v, keys, rows in _undecided(verdicts, transfer):
        out += _group_cells(v, rows, _group_runs(runs, v["series"], keys, v["axis"]), keys, v["axis"], tolerance)
    seen, unique = set(), []
    for c in sorted(out, key=lambda c: KIND_ORDER.index(c.kind)):
        if c.identity() not in seen:
            seen.add(c.identity())
            unique.append(c)
    return unique


def estimate_seeds(verdicts: pd.DataFrame, transfer: pd.DataFrame, tolerance: float = 1.0) -> list[dict]:
    """Per undecided group: its drift CI, seeds now, seeds a decided verdict needs
    (``seeds_needed``), the scales to add them at (``dominant_scales``) and what blocks a
    verdict first (an optimum on the grid's edge)."""
    out = []
    for v, keys, rows in _undecided(verdicts, transfer):
        n = int(v["n_seeds"]) if not missing(v["n_seeds"]) else 0
        need = seeds_needed(float(v["drift_ci_lo"]), float(v["drift_ci_hi"]), n, tolerance)
        edges = [_num(s) for s in rows.loc[rows["edge"].fillna(False).astype(bool), "scale"]]
        out.append({"series": v["series"], **dict(keys),
                    "axis": v["axis"], "drift_ci": [float(v["drift_ci_lo"]), float(v["drift_ci_hi"])],
                    "n_seeds": n, "seeds_needed": need, "scales": [_num(s) for s in dominant_scales(rows)],
                    "edge": edges})
    return out


def describe_estimate(entries: list[dict], tolerance: float = 1.0) -> list[str]:
    """``estimate_seeds`` as lines for ``sweep --until decided --dry-run``."""
    if not entries:
        return ["every verdict is decided: nothing to refine"]
    lines = []
    for e in entries:
        name = e["series"] + "".join(f", {k}={e[k]}" for k in e if k not in
                                     ("series", "axis", "drift_ci", "n_seeds", "seeds_needed", "scales", "edge"))
        lo, hi = e["drift_ci"]
        plural = "" if e["n_seeds"] == 1 else "s"
        head = f"{name} ({e['axis']}): drift CI [{lo:+.2f}, {hi:+.2f}], {e['n_seeds']} seed{plural}"
        need = e["seeds_needed"]
        if e["edge"]:
            lines.append(f"{head}: optimum on the LR grid's edge at {e['axis']} {', '.join(map(str, e['edge']))}; "
                         f"the window is widened first (one octave), then seeds are estimated again")
        elif math.isnan(need):
            lines.append(f"{head}: no drift CI to extrapolate from (fewer than 2 seeds or scales); refinement "
                         f"doubles the seeds")
        elif math.isinf(need):
            lines.append(f"{head}: the CI is centred on ±{tolerance:g}; no number of seeds decides it at this "
                         f"point estimate")
        else:
            lines.append(f"{head}: ≈{int(need)} seeds per scale decide it (+{int(need) - e['n_seeds']} at "
                         f"{e['axis']} {', '.join(map(str, e['scales']))})")
    lines.append("assumption: the drift CI's half-width shrinks as 1/√n (n seeds) around its current centre; "
                 f"n_needed = n·(half-width / distance from the centre to ±{tolerance:g})²")
    return lines


# ----------------------------------------------------------------------------- the record

@dataclass
class Record:
    """``refinement.json``: the rounds of a refinement and the cells each added."""
    experiment: str
    rounds: list = field(default_factory=list)   # {"round", "status", "seconds", "undecided", "cells": [...]}

    def cells(self) -> list[dict]:
        return [c for r in self.rounds for c in r["cells"]]

    def run_ids(self) -> set:
        return {c.get("run_id") for c in self.cells()}

    def runs_used(self) -> int:
        return len(self.cells())

    def seconds_used(self) -> float:
        return float(sum(r.get("seconds") or 0.0 for r in self.rounds))

    def to_dict(self) -> dict:
        return {"experiment": self.experiment, "rounds": self.rounds}


def record_path(results_dir) -> Path:
    return Path(results_dir) / RECORD_NAME


def load_record(results_dir, experiment: str | None = None) -> Record | None:
    """The refinement record of ``results_dir``, or None when it has none."""
    import json
    path = record_path(results_dir)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the refinement record ({type(e).__name__}: {e}); move it aside to "
                        f"start the refinement afresh") from None
    return Record(raw.get("experiment") or experiment or "", list(raw.get("rounds", [])))


def save_record(record: Record, results_dir) -> None:
    write_json(record.to_dict(), record_path(results_dir))   # atomic: a kill leaves the old or the new


def refined_counts(results_dir, runs: pd.DataFrame) -> dict | None:
    """What ``lrtransfer report`` says about refinement: rounds, cells added, and per series the
    refined runs present in ``runs``; None without a record."""
    record = load_record(results_dir)
    if record is None:
        return None
    ids = record.run_ids()
    present = runs[runs["run_id"].isin(ids)] if len(runs) and "run_id" in runs else runs
    sizes = present.groupby("series", sort=False).size().items() if len(present) else []
    per_series = {str(k): int(v) for k, v in sizes}
    return {"rounds": len(record.rounds), "cells": record.runs_used(), "runs": per_series}


def refinement_note(counts: dict) -> str:
    """One markdown line for ``refined_counts``."""
    per = ", ".join(f"{k} {v}" for k, v in counts["runs"].items()) or "none yet"
    return (f"Refinement (`lrtransfer sweep --until decided`, {RECORD_NAME}): {counts['rounds']} round"
            f"{'' if counts['rounds'] == 1 else 's'} added {counts['cells']} cells beyond the grid; refined runs "
            f"per series: {per}.")
