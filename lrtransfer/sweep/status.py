"""Where a sweep stands: cells per state, per series and scale, and an ETA."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from optuna.trial import TrialState
from rich.markup import escape
from rich.table import Table

from ..errors import UserError
from ..results.store import ResultStore
from ..run.provenance import SCALE_AXES
from ..run.spec import BY_NAME
from .estimate import duration_text, makespan, shape_key
from .queue import JOURNAL_NAME, Queue, open_storage, redact
from .sweep import distinct_errors, recorded_elsewhere

STATES = ("waiting", "running", "done", "diverged", "failed")


def recorded_storage(experiment: dict | None, root: Path) -> str | None:
    """The storage URL the sweep into ``root`` used (experiment.json records it without a
    password); None for the journal in ``root``."""
    recorded = (experiment or {}).get("storage")
    if not recorded or recorded == "journal":
        return None
    if "***" in recorded:
        raise UserError(f"{root}: the sweep used --storage {recorded}; pass that URL with its password as "
                        f"--storage (or set LRTRANSFER_STORAGE)")
    return recorded


def _scale(values: dict) -> tuple:
    return tuple(values.get(axis) for axis in SCALE_AXES)


def eta(left: list[dict], runs, workers: int) -> str:
    """Time to finish ``left`` (run values) on ``workers`` workers, as ``--dry-run`` estimates it
    but from what this sweep measured: each cell costs the mean wall time of the finished runs
    of its shape (of all finished runs, for a shape not seen yet), and the cells go longest
    first to the least loaded worker."""
    if runs is None or runs.empty or "wall_seconds" not in runs:
        return "unknown (no finished run yet)"
    finished = runs[runs["status"].isin(["done", "diverged"]) & runs["wall_seconds"].map(
        lambda s: isinstance(s, float) and math.isfinite(s))]
    if finished.empty:
        return "unknown (no finished run yet)"
    by_shape: dict = {}
    for row in finished.to_dict("records"):
        by_shape.setdefault(shape_key(_run_values(row)), []).append(row["wall_seconds"])
    overall = float(finished["wall_seconds"].mean())
    durations = [sum(v) / len(v) if (v := by_shape.get(shape_key(_run_values(c)))) else overall for c in left]
    return duration_text(makespan(durations, workers))


def _run_values(row: dict) -> dict:
    """The config part of a run row (a row also holds its metrics and provenance)."""
    return {k: v for k, v in row.items() if k in BY_NAME or k.startswith("data.") or k in ("series",)}


def sweep_status(results_dir: str | Path | None = None, storage: str | None = None,
                 study: str | None = None) -> dict:
    """Counts per (series, scale): waiting and running from the study, finished from the tables.

    A cell is counted once, in its latest state: a recorded result (done / diverged) wins; a
    cell that failed and is waiting for its retry counts as waiting.
    """
    name, trials, source, root = _study_trials(results_dir, storage, study)
    runs = ResultStore(root).load_runs() if root is not None else None
    cells = _latest_states(trials, runs)
    rows = _count_rows(cells)
    totals = {s: sum(r[s] for r in rows) for s in STATES}
    left = [c["values"] for c in cells.values() if c["state"] in ("waiting", "running")]
    errors = []
    if runs is not None and not runs.empty:
        errors = distinct_errors(runs[runs["run_id"].isin([rid for rid, c in cells.items() if c["state"] == "failed"])])
    finished = {rid for rid, c in cells.items() if c["state"] in ("done", "diverged")}
    other, unknown = recorded_elsewhere(runs, finished)
    return {"study": name, "storage": source, "rows": rows, "totals": totals,
            "eta": eta(left, runs, workers=max(totals["running"], 1)) if left else "nothing left",
            "errors": errors, "time": time.time(),
            "machines": {"other": other, "unrecorded": unknown, "results_dir": str(root) if root else ""}}


def machines_note(st: dict) -> str:
    """A line on the finished cells recorded on another (or an unrecorded) machine; "" if none."""
    m = st.get("machines") or {}
    parts = [f"{n} {what}" for n, what in ((m.get("other", 0), "on another machine"),
                                           (m.get("unrecorded", 0), "on an unrecorded machine")) if n]
    if not parts:
        return ""
    return (f"finished {' and '.join(parts)}: bit-identical only there; check them here with "
            f"`lrtransfer reproduce {m.get('results_dir') or 'RESULTS_DIR'}`")


def _study_trials(results_dir, storage: str | None, study: str | None) -> tuple[str, list, str, Path | None]:
    """The study's name, its trials, where they were read (said in the title) and the results
    directory (the one the study records when only ``storage`` is given)."""
    if results_dir is None and storage is None:
        raise UserError("status: give a results directory or --storage URL --study NAME")
    root = Path(results_dir) if results_dir is not None else None
    if root is not None and not root.is_dir():
        raise UserError(f"{root}: no such results directory")
    experiment = ResultStore(root).experiment() if root is not None else None
    name = study or (experiment or {}).get("study") or (root.name if root is not None else None)
    if name is None:
        raise UserError("status: --study NAME is needed with --storage")
    if storage is None and root is not None:
        storage = recorded_storage(experiment, root)
    if storage is None and root is not None and not (root / JOURNAL_NAME).exists() \
            and not ResultStore(root).load_runs().empty:
        # committed or copied results keep the tables but not the queue: nothing is waiting or
        # running, and the recorded runs say the rest
        return name, [], "no queue here: the recorded runs", root
    queue = Queue(open_storage(storage, root, create=False), name, create=False)
    if root is None:
        recorded = queue.study.user_attrs.get("results_dir")
        root = Path(recorded) if recorded and Path(recorded).is_dir() else None
    return name, queue.trials(), redact(storage), root


def _latest_states(trials: list, runs) -> dict[str, dict]:
    """run_id -> {"series", "scale", "state", "values"}: each cell in its latest state."""
    cells: dict[str, dict] = {}
    for t in trials:
        rid = t.user_attrs.get("run_id")
        if rid is None:
            continue
        values = json.loads(t.user_attrs["config"])
        state = {TrialState.WAITING: "waiting", TrialState.RUNNING: "running"}.get(t.state)
        if t.state == TrialState.COMPLETE:
            state = t.user_attrs.get("run_status", "done")
        elif t.state == TrialState.FAIL:
            state = "failed"
        prev = cells.get(rid)
        # a later trial of the same cell (a retry) supersedes an earlier failure
        if prev is None or prev["state"] == "failed" or state in ("done", "diverged"):
            cells[rid] = {"series": values["series"], "scale": _scale(values), "state": state, "values": values}
    if runs is not None and not runs.empty:
        for row in runs.to_dict("records"):
            if row["status"] in ("done", "diverged") or row["run_id"] not in cells:
                cells[row["run_id"]] = {"series": row["series"], "scale": _scale(row), "state": row["status"],
                                        "values": row}
    return cells


def _count_rows(cells: dict[str, dict]) -> list[dict]:
    """A row of counts per state for each (series, scale), scales labelled by the scale-like keys
    that vary (width, depth, batch_size, steps, ...; width when none does), in numeric order."""
    table: dict[tuple, dict] = {}
    for c in cells.values():
        key = (c["series"], c["scale"])
        table.setdefault(key, {s: 0 for s in STATES})
        if c["state"] in STATES:
            table[key][c["state"]] += 1
    varying = [i for i in range(len(SCALE_AXES)) if len({sc[i] for _, sc in table}) > 1] or [0]

    def label(sc):
        return " ".join(f"{SCALE_AXES[i]}={sc[i]}" for i in varying)

    return [{"series": s, "scale": label(sc), **counts}
            for (s, sc), counts in sorted(table.items(), key=lambda kv: (kv[0][0], tuple(x or 0 for x in kv[0][1])))]


def status_table(st: dict) -> Table:
    """``sweep_status``'s counts as a rich table: a row per series and scale, the totals as its
    last row, the ETA in the caption."""
    note = machines_note(st)
    table = Table(title=escape(f"{st['study']} ({st['storage']})"),
                  caption=escape(f"eta: {st['eta']}" + (f"\n{note}" if note else "")), caption_justify="left")
    table.add_column("series")
    table.add_column("scale")
    for state in STATES:
        table.add_column(state, justify="right")
    for row in st["rows"]:
        table.add_row(escape(str(row["series"])), escape(str(row["scale"])), *(str(row[s]) for s in STATES),
                      end_section=row is st["rows"][-1])
    table.add_row("total", "", *(str(st["totals"][s]) for s in STATES), style="bold")
    return table
