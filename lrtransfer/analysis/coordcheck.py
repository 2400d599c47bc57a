"""Coordinate check (μP's "coord check"): is a parametrization + update rule width-stable?

Every width of a series (by default ×1 … ×16 the experiment's smallest, in octaves) is trained
a few steps on one fixed batch at one LR, for several seeds; per atom and step the slope of
log RMS (output, its change since init, ΔW·x) against log width is fitted per seed, and a row
passes when the seeds' confidence interval of that slope lies within ±``margin`` (¼: half the
smallest width exponent, ½, by which the parametrizations compared differ). This stage trains
models (through ``run``); the definitions are in docs/analysis.md §9.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..errors import UserError

QUANTITIES = ("output_rms", "output_update_rms", "delta_wx_rms")
UPDATES = ("output_update_rms", "delta_wx_rms")  # 0 at step 0: not fitted there
LOGITS = ("output_rms", "output_update_rms")      # the output atom's: may shrink with width, never grow
SPAN = 16          # default widths: the smallest, then octaves up to SPAN × the smallest
SEEDS = 8          # 4 leave the noisiest rows (Shakespeare μP readout) undecided: docs/analysis.md §9
MARGIN = 0.25      # half of ½, the smallest exponent separating the parametrizations compared
CONFIDENCE = 0.90     # two one-sided tests at 5% (TOST): the 90% interval within ±margin


@dataclass
class CoordCheck:
    """The measurements (``table``), the fitted slopes (``slopes``) and a verdict per series.

    ``table``: one row per (series, seed, width, atom, step, quantity) with columns series,
    seed, width, atom ("3:hidden"), atom_index, role, step, quantity (output_rms,
    output_update_rms, delta_wx_rms), rms and l1 (the RMS and the mean absolute value of that
    tensor over the batch; l1 of ``output_rms`` is mup's coord-check statistic), lr.
    ``slopes``: one row per (series, atom, step, quantity): slope (mean over seeds of the
    per-seed slopes), se, lo, hi (its confidence interval), n_seeds, pass.
    ``verdict``: series -> bool (every row of the series passes and no width stopped early).
    ``notes``: series -> list of things to know (a width that diverged).
    """
    table: pd.DataFrame
    slopes: pd.DataFrame
    verdict: dict
    lrs: dict
    widths: dict
    steps: int
    seeds: dict       # series -> its seeds
    margin: float
    confidence: float
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


def default_widths(smallest: int, span: int = SPAN) -> list[int]:
    """``smallest`` and its doublings up to ``span`` × ``smallest`` (span a power of two ≥ 2)."""
    return [smallest << k for k in range(int(math.log2(span)) + 1)]


def _check_widths(widths) -> list[int]:
    if widths is None:
        return None
    ok = all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)
    if not ok or len(set(widths)) < 2:
        raise UserError(f"--widths {list(widths)!r}: must be at least two distinct positive integers")
    return sorted(set(widths))


def plan(experiment, lr: float | None = None, series=None, widths=None, span: int = SPAN) -> dict:
    """series -> (lr, [values per width]) : the runs of one seed of a coord check, nothing trained.

    ``widths`` None: ``default_widths`` from the series' smallest width, whatever the
    experiment's grid; else these widths. The base cell (the smallest width, seed and depth)
    stands for the series' fixed keys (μP's base width included). Raises ``UserError`` for an
    unknown series, bad widths or a bad LR."""
    if not (isinstance(span, int) and not isinstance(span, bool) and span >= 2 and span & (span - 1) == 0):
        raise UserError(f"--span {span!r}: must be a power of two >= 2 (the widest width over the smallest)")
    widths = _check_widths(widths)
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
        smallest = min(c["width"] for c in cells)
        seed, depth = min(c["seed"] for c in cells), min(c["depth"] for c in cells)
        chosen = float(lr) if lr is not None else base_lr(cells)
        base = dict(next(c for c in cells if c["width"] == smallest))
        base.update(seed=seed, depth=depth, lr=chosen)
        out[name] = (chosen, [dict(base, width=w) for w in (widths or default_widths(smallest, span))])
    return out


# -- measuring ---------------------------------------------------------------------------------
def _stats(t: torch.Tensor) -> tuple[float, float]:
    """(RMS, mean |·|) of a tensor, in float64."""
    t = t.detach().double()
    return float(t.pow(2).mean().sqrt()), float(t.abs().mean())


class _Probe:
    """Forward hooks on a model's atoms: each atom's last inputs and output, and per step the
    three quantities of every atom that ran."""

    def __init__(self, model, width: int, seed: int):
        self.seed = seed
        self.atoms, self.roles = model.atoms(), model.roles()
        self.labels = [f"{k}:{r}" for k, r in enumerate(self.roles)]
        self.weights0 = [a.weight.detach().clone() for a in self.atoms]
        self.width = width
        self.seen: dict[int, tuple] = {}       # atom -> (its inputs, its output) in the last forward
        self.initial: dict[int, torch.Tensor] = {}
        self.records: list[dict] = []
        self.hooking = True                     # off while ``record`` re-runs atoms with their initial weights
        # a plain module's atom is one parameter of a torch layer (models/wrapped.py): the layer
        # is what runs, so it is hooked and re-run; its biases and gains (role "vector") are
        # part of their layer's output, not rows of their own
        self.modules = [getattr(atom, "owner", atom) for atom in self.atoms]
        self.param_names = [getattr(atom, "local_name", "weight") for atom in self.atoms]
        self.hooks = [self.modules[k].register_forward_hook(lambda m, a, o, k=k: self._hook(a, o, k))
                      for k, role in enumerate(self.roles) if role != "vector"]

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
                own = out - self._initial_forward(k, args)
                base = {"width": self.width, "atom": self.labels[k], "atom_index": k, "role": self.roles[k],
                        "step": step}
                for quantity, t in (("output_rms", out), ("output_update_rms", out - self.initial[k]),
                                    ("delta_wx_rms", own)):
                    rms, l1 = _stats(t)
                    self.records.append({**base, "quantity": quantity, "rms": rms, "l1": l1})
        finally:
            self.hooking = True

    def _initial_forward(self, k: int, args):
        """Atom k's module on ``args`` with its initial weight. ``forward`` itself, not the call:
        ``args`` are what the module's forward received, after any pre-hook (μP's readout
        multiplier on a plain module, models/wrapped.py), which must not apply twice."""
        module, name = self.modules[k], self.param_names[k]
        current = module._parameters[name]
        module._parameters[name] = self.weights0[k]
        try:
            return module.forward(*args)
        finally:
            module._parameters[name] = current

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
            return f"seed {probe.seed}, width {probe.width}: non-finite loss at step {step}"
        opt.zero_grad()
        loss.backward()
        try:
            opt.step()
        except Diverged:
            return f"seed {probe.seed}, width {probe.width}: non-finite update at step {step}"
    return None


def measure(values: dict, steps: int, device: torch.device) -> tuple[list[dict], str | None]:
    """Train one width and seed (``values``) ``steps`` steps on one fixed batch; per step and
    atom, the three quantities' RMS and mean |·|.

    Returns the records and a note if training stopped early (non-finite loss or update)."""
    from ..run.train import DTYPES, dataset_for, model_for, optimizer_for
    values = dict(values, steps=steps, schedule="constant", warmup=0)
    torch.manual_seed(values["seed"])
    ds = dataset_for(values, device)
    model = model_for(values, ds).to(device=device, dtype=DTYPES[values["dtype"]])
    opt = optimizer_for(values, model)
    x, y = ds.sample("train", values["batch_size"], torch.Generator().manual_seed(values["seed"]))
    probe = _Probe(model, values["width"], values["seed"])
    try:
        note = _train_probed(model, opt, x, y, steps, probe)
    finally:
        probe.remove()
    return probe.records, note


# -- the slopes and the pass rule --------------------------------------------------------------
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


def interval(slopes, confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(mean, standard error, lo, hi) of per-seed slopes: the Student-t interval of their mean
    at ``confidence`` (NaN throughout if any slope is NaN or there are fewer than two)."""
    from scipy.stats import t
    s = np.asarray(slopes, dtype=float)
    if len(s) < 2 or not np.all(np.isfinite(s)):
        return (math.nan,) * 4
    mean, se = float(s.mean()), float(s.std(ddof=1) / math.sqrt(len(s)))
    half = float(t.ppf(0.5 + confidence / 2, len(s) - 1)) * se
    return mean, se, mean - half, mean + half


def passes(lo: float, hi: float, quantity: str, role: str, margin: float = MARGIN) -> bool:
    """Whether a slope's confidence interval [lo, hi] shows it width-stable: inside
    [-margin, margin]; for the logits and their change only hi <= margin (they may shrink)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return False
    if role == "output" and quantity in LOGITS:
        return hi <= margin
    return -margin <= lo and hi <= margin


def slopes_of(table: pd.DataFrame, margin: float = MARGIN, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per (series, atom, step, quantity): the per-seed slopes' mean, se, interval
    and pass (updates at step 0 skipped). A seed missing a width (it stopped early) fits NaN."""
    rows = []
    keys = ["series", "atom_index", "atom", "role", "step", "quantity"]
    full = {s: sorted(g["width"].unique()) for s, g in table.groupby("series", sort=False)}
    seeds = {s: sorted(g["seed"].unique()) for s, g in table.groupby("series", sort=False)}
    for key, g in table.groupby(keys, sort=False):
        series, k, atom, role, step, quantity = key
        if quantity in UPDATES and step == 0:
            continue
        per_seed = []
        for seed in seeds[series]:
            gs = g[g["seed"] == seed].set_index("width").reindex(full[series])  # a width that stopped: NaN
            per_seed.append(fit_slope(gs.index, gs["rms"].to_numpy()))
        mean, se, lo, hi = interval(per_seed, confidence)
        rows.append({"series": series, "atom": atom, "step": int(step), "quantity": quantity,
                     "slope": mean, "se": se, "lo": lo, "hi": hi, "n_seeds": len(per_seed),
                     "pass": passes(lo, hi, quantity, role, margin), "atom_index": int(k), "role": role})
    cols = ["series", "atom", "step", "quantity", "slope", "se", "lo", "hi", "n_seeds", "pass", "atom_index", "role"]
    out = pd.DataFrame(rows, columns=cols)
    order = {"series": {s: i for i, s in enumerate(full)}, "quantity": {q: i for i, q in enumerate(QUANTITIES)}}
    return out.sort_values(["series", "quantity", "atom_index", "step"], kind="stable",
                           key=lambda c: c.map(order[c.name]) if c.name in order else c).reset_index(drop=True)


def coordcheck(experiment, steps: int = 5, lr: float | None = None, widths=None, seeds: int = SEEDS,
               span: int = SPAN, margin: float = MARGIN, confidence: float = CONFIDENCE, series=None,
               device: str | torch.device = "cpu", on_width=None) -> CoordCheck:
    """Run the coord check on every series of ``experiment`` (or those named in ``series``).

    ``widths`` None: the series' smallest width and its doublings up to ``span`` × it; a list:
    those. ``seeds`` (≥ 2) seeds from the series' smallest. ``lr`` None: each series at its
    base-scale LR (``base_lr``); a number: that LR for every series. A row passes when the
    ``confidence`` interval of its slope lies within ±``margin`` (``passes``).
    ``on_width(series, seed, width)`` is called before each run.
    """
    from ..run.train import resolve_device
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UserError(f"--steps {steps!r}: must be a positive integer")
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 2:
        raise UserError(f"--seeds {seeds!r}: must be an integer >= 2 (the pass rule needs the seeds' spread)")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
        raise UserError(f"--margin {margin!r}: must be a positive number")
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise UserError(f"--confidence {confidence!r}: must be between 0 and 1 (exclusive)")
    device = resolve_device(device) if isinstance(device, str) else device
    runs = plan(experiment, lr, series, widths, span)
    records, lrs, chosen_widths, seed_lists, notes = [], {}, {}, {}, {}
    threads = torch.get_num_threads()
    try:
        for name, (chosen, cells) in runs.items():
            lrs[name], chosen_widths[name] = chosen, [v["width"] for v in cells]
            seed_lists[name] = [cells[0]["seed"] + i for i in range(seeds)]
            for seed in seed_lists[name]:
                for v in cells:
                    if on_width is not None:
                        on_width(name, seed, v["width"])
                    torch.set_num_threads(v.get("threads", 1))
                    got, note = measure(dict(v, seed=seed), steps, device)
                    records += [{"series": name, "seed": seed, **r, "lr": chosen} for r in got]
                    if note:
                        notes.setdefault(name, []).append(note)
    finally:
        torch.set_num_threads(threads)
    table = pd.DataFrame(records, columns=["series", "seed", "width", "atom", "atom_index", "role", "step",
                                           "quantity", "rms", "l1", "lr"])
    slopes = slopes_of(table, margin, confidence)
    verdict = {name: bool(slopes.loc[slopes["series"] == name, "pass"].all()) and name not in notes
               for name in runs}
    return CoordCheck(table=table, slopes=slopes, verdict=verdict, lrs=lrs, widths=chosen_widths, steps=steps,
                      seeds=seed_lists, margin=float(margin), confidence=float(confidence), notes=notes)


def violation(slopes: pd.DataFrame) -> pd.Series:
    """How far each row of ``slopes`` is from failing, on the scale ``passes`` uses: the
    interval's farthest end from 0 (for the logits, its upper end; NaN: worst of all)."""
    logits = slopes["quantity"].isin(LOGITS) & (slopes["role"] == "output")
    score = np.maximum(slopes["hi"], -slopes["lo"]).where(~logits, slopes["hi"])
    return pd.Series(score, index=slopes.index).fillna(math.inf)
