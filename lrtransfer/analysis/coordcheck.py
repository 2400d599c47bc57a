"""Coordinate check (μP's "coord check"): is a parametrization + update rule width-stable?

Every width of a series is trained a few steps on one fixed batch at one LR; per atom and step
the slope of log RMS (output, its change since init, ΔW·x) against log width is fitted and
checked against a threshold. This stage trains models (through ``run``); the definitions are
in docs/analysis.md §9.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call

from ..errors import UserError

QUANTITIES = ("output_rms", "output_update_rms", "delta_wx_rms")
UPDATES = ("output_update_rms", "delta_wx_rms")  # 0 at step 0: not fitted there
LOGITS = ("output_rms", "output_update_rms")      # the output atom's: may shrink with width, never grow


@dataclass
class CoordCheck:
    """The measurements (``table``), the fitted slopes (``slopes``) and a verdict per series.

    ``table``: one row per (series, width, atom, step, quantity) with columns series, width,
    atom ("3:hidden"), atom_index, role, step, quantity (output_rms, output_update_rms,
    delta_wx_rms), rms, lr.
    ``slopes``: one row per (series, atom, step, quantity) with slope and pass.
    ``verdict``: series -> bool (every row of the series passes).
    ``notes``: series -> list of things to know (a width that diverged).
    """
    table: pd.DataFrame
    slopes: pd.DataFrame
    verdict: dict
    lrs: dict
    widths: dict
    steps: int
    threshold: float
    notes: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(self.verdict.values())


# -- choosing what to run ----------------------------------------------------------------------
def base_lr(cells: list[dict]) -> float:
    """The middle of a series' LR grid at its smallest width (for an even number of LRs, the
    lower of the two middle ones: a value the sweep itself runs)."""
    smallest = min(c["width"] for c in cells)
    lrs = sorted({c["lr"] for c in cells if c["width"] == smallest})
    return float(lrs[(len(lrs) - 1) // 2])


def plan(experiment, lr: float | None = None, series=None) -> dict:
    """series -> (lr, [values per width]) : the runs a coord check makes, nothing trained.

    Raises ``UserError`` for an unknown series or a series with fewer than two widths."""
    by_series: dict[str, list[dict]] = {}
    for cell in experiment.cells():
        by_series.setdefault(cell.series, []).append(cell.values)
    if series:
        unknown = [s for s in series if s not in by_series]
        if unknown:
            raise UserError(f"--series {', '.join(unknown)}: no such series; the experiment has "
                            f"{', '.join(by_series)}")
        by_series = {s: by_series[s] for s in series}
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr {lr!r}: must be a positive number")
    out = {}
    for name, cells in by_series.items():
        widths = sorted({c["width"] for c in cells})
        if len(widths) < 2:
            raise UserError(f"coordcheck fits RMS against width, so it needs at least two widths; series "
                            f"{name!r} has width grid {widths} (e.g. --set width=[64,256,1024])")
        seed, depth = min(c["seed"] for c in cells), min(c["depth"] for c in cells)
        chosen = float(lr) if lr is not None else base_lr(cells)
        runs = []
        for w in widths:
            # any cell at this width stands for the series' fixed keys; seed, depth, LR are ours
            v = dict(next(c for c in cells if c["width"] == w))
            v.update(seed=seed, depth=depth, lr=chosen)
            runs.append(v)
        out[name] = (chosen, runs)
    return out


# -- measuring ---------------------------------------------------------------------------------
def _rms(t: torch.Tensor) -> float:
    return float(t.detach().double().pow(2).mean().sqrt())


class _Probe:
    """Forward hooks on a model's atoms: each atom's last inputs and output, and per step the
    three RMS of every atom that ran."""

    def __init__(self, model, width: int):
        self.atoms, self.roles = model.atoms(), model.roles()
        self.labels = [f"{k}:{r}" for k, r in enumerate(self.roles)]
        self.weights0 = [a.weight.detach().clone() for a in self.atoms]
        self.width = width
        self.seen: dict[int, tuple] = {}       # atom -> (its inputs, its output) in the last forward
        self.initial: dict[int, torch.Tensor] = {}
        self.records: list[dict] = []
        self.hooking = True                     # off while ``record`` re-runs atoms with their initial weights
        self.hooks = [atom.register_forward_hook(lambda m, a, o, k=k: self._hook(a, o, k))
                      for k, atom in enumerate(self.atoms)]

    def _hook(self, args, output, k):
        if self.hooking:
            self.seen[k] = (tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), output.detach())

    @torch.no_grad()
    def record(self, step: int) -> None:
        self.hooking = False
        try:
            for k, atom in enumerate(self.atoms):
                if k not in self.seen:
                    continue
                args, out = self.seen[k]
                if step == 0:
                    self.initial[k] = out.clone()
                # this atom's own step on its current input: f(W_t, x_t) - f(W_0, x_t)
                own = out - functional_call(atom, {"weight": self.weights0[k]}, args)
                base = {"width": self.width, "atom": self.labels[k], "atom_index": k, "role": self.roles[k],
                        "step": step}
                self.records.append({**base, "quantity": "output_rms", "rms": _rms(out)})
                self.records.append({**base, "quantity": "output_update_rms", "rms": _rms(out - self.initial[k])})
                self.records.append({**base, "quantity": "delta_wx_rms", "rms": _rms(own)})
        finally:
            self.hooking = True

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def _train_probed(model, opt, x, y, steps: int, probe: _Probe) -> str | None:
    """``steps`` updates on the batch (x, y), recording before each and after the last; a note
    when training stops early (non-finite loss or update)."""
    from ..optim import Diverged
    from ..run.train import cross_entropy
    model.train()
    for step in range(steps + 1):
        probe.seen.clear()
        if step == steps:
            with torch.no_grad():
                model(x)
            probe.record(step)
            return None
        loss = cross_entropy(model, x, y)
        probe.record(step)
        if not math.isfinite(loss.item()):
            return f"width {probe.width}: non-finite loss at step {step}"
        opt.zero_grad()
        loss.backward()
        try:
            opt.step()
        except Diverged:
            return f"width {probe.width}: non-finite update at step {step}"
    return None


def measure(values: dict, steps: int, device: torch.device) -> tuple[list[dict], str | None]:
    """Train one width ``steps`` steps on one fixed batch; per step and atom, the three RMS.

    Returns the records and a note if training stopped early (non-finite loss or update)."""
    from ..run.train import DTYPES, dataset_for, model_for, optimizer_for
    values = dict(values, steps=steps, schedule="constant", warmup=0)
    torch.manual_seed(values["seed"])
    ds = dataset_for(values, device)
    model = model_for(values, ds).to(device=device, dtype=DTYPES[values["dtype"]])
    opt = optimizer_for(values, model)
    x, y = ds.sample("train", values["batch_size"], torch.Generator().manual_seed(values["seed"]))
    probe = _Probe(model, values["width"])
    try:
        note = _train_probed(model, opt, x, y, steps, probe)
    finally:
        probe.remove()
    return probe.records, note


def fit_slope(widths, rms) -> float:
    """Least-squares slope of log RMS against log width; 0 if every RMS is 0, NaN if any RMS
    is non-finite or some (not all) are 0."""
    w, r = np.asarray(widths, dtype=float), np.asarray(rms, dtype=float)
    if len(w) < 2 or not np.all(np.isfinite(r)) or np.any(r < 0):
        return math.nan
    if np.all(r == 0):
        return 0.0
    if np.any(r == 0):
        return math.nan
    return float(np.polyfit(np.log(w), np.log(r), 1)[0])


def passes(slope: float, quantity: str, role: str, threshold: float) -> bool:
    if not math.isfinite(slope):
        return False
    if role == "output" and quantity in LOGITS:
        return slope <= threshold  # the logits and their change: O(1), may shrink, never grow
    return abs(slope) <= threshold


def slopes_of(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """One row per (series, atom, step, quantity): slope and pass (update at step 0 skipped)."""
    rows = []
    keys = ["series", "atom_index", "atom", "role", "step", "quantity"]
    full = {s: sorted(g["width"].unique()) for s, g in table.groupby("series", sort=False)}
    for key, g in table.groupby(keys, sort=False):
        series, k, atom, role, step, quantity = key
        if quantity in UPDATES and step == 0:
            continue
        g = g.set_index("width").reindex(full[series])  # a width that stopped early: NaN
        slope = fit_slope(g.index, g["rms"].to_numpy())
        rows.append({"series": series, "atom": atom, "step": int(step), "quantity": quantity,
                     "slope": slope, "pass": passes(slope, quantity, role, threshold),
                     "atom_index": int(k), "role": role})
    cols = ["series", "atom", "step", "quantity", "slope", "pass", "atom_index", "role"]
    out = pd.DataFrame(rows, columns=cols)
    order = {"series": {s: i for i, s in enumerate(full)}, "quantity": {q: i for i, q in enumerate(QUANTITIES)}}
    return out.sort_values(["series", "quantity", "atom_index", "step"], kind="stable",
                           key=lambda c: c.map(order[c.name]) if c.name in order else c).reset_index(drop=True)


def coordcheck(experiment, steps: int = 5, lr: float | None = None, threshold: float = 0.1,
               series=None, device: str | torch.device = "cpu", on_width=None) -> CoordCheck:
    """Run the coord check on every series of ``experiment`` (or those named in ``series``).

    ``lr`` None: each series at its base-scale LR (``base_lr``: the middle of its LR grid at
    the smallest width); a number: that LR for every series. ``on_width(series, width)`` is
    called before each width is trained.
    """
    from ..run.train import resolve_device
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UserError(f"--steps {steps!r}: must be a positive integer")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise UserError(f"--threshold {threshold!r}: must be a non-negative number")
    device = resolve_device(device) if isinstance(device, str) else device
    runs = plan(experiment, lr, series)
    records, lrs, widths, notes = [], {}, {}, {}
    threads = torch.get_num_threads()
    try:
        for name, (chosen, cells) in runs.items():
            lrs[name], widths[name] = chosen, [v["width"] for v in cells]
            for v in cells:
                if on_width is not None:
                    on_width(name, v["width"])
                torch.set_num_threads(v.get("threads", 1))
                got, note = measure(v, steps, device)
                records += [{"series": name, **r, "lr": chosen} for r in got]
                if note:
                    notes.setdefault(name, []).append(note)
    finally:
        torch.set_num_threads(threads)
    table = pd.DataFrame(records, columns=["series", "width", "atom", "atom_index", "role", "step", "quantity",
                                           "rms", "lr"])
    slopes = slopes_of(table, threshold)
    verdict = {name: bool(slopes.loc[slopes["series"] == name, "pass"].all()) and name not in notes
               for name in runs}
    return CoordCheck(table=table, slopes=slopes, verdict=verdict, lrs=lrs, widths=widths, steps=steps,
                      threshold=float(threshold), notes=notes)


def violation(slopes: pd.DataFrame) -> pd.Series:
    """How far each row of ``slopes`` is from failing, on the scale ``passes`` uses (NaN: worst of all)."""
    logits = slopes["quantity"].isin(LOGITS) & (slopes["role"] == "output")
    score = slopes["slope"].abs().where(~logits, slopes["slope"])
    return score.fillna(math.inf)
