"""Coordinate check (μP's "coord check"): is a parametrization + update rule width-stable?

For each series of an experiment, the model is built at every width of its grid (seed and
depth fixed: the smallest of each) and trained a few steps on ONE fixed batch (sampled once
from a generator seeded with the run seed: the same examples at every width) at one LR for all
widths (the series' base-scale LR, see ``base_lr``, or a given one), held constant (the
experiment's schedule and warmup are not applied). At every step ``t`` (0 = the initial model,
``steps`` = after the last update) a forward hook on each weight-carrying atom records three
RMS over the batch:

* ``output_rms``: the atom's output y_t = f(W_t, x_t);
* ``output_update_rms``: y_t − y_0, the change of that output since initialisation (the μP
  paper's coord check). It holds the atom's own step and the change of its input seen through
  the initial weights: (W_t − W_0)·x_t + W_0·(x_t − x_0);
* ``delta_wx_rms``: the first part alone, f(W_t, x_t) − f(W_0, x_t) — ΔW·x, the atom's own
  update seen through the output. μP's defining property is that this is Θ(1) for every
  layer; a weight-space RMS would not be comparable across widths.

Per (series, atom, step, quantity) the slope of log RMS against log width is fitted by least
squares over the widths. A row passes when |slope| <= ``threshold`` — features, their changes
and every atom's ΔW·x must be Θ(1), neither blowing up nor vanishing — except for the output
atom's ``output_rms`` and ``output_update_rms`` (the logits and their change), which only fail
by *growing* (slope > threshold): the logits need to be O(1), and both μP and the modular
parametrization start them at a size that shrinks with width (μP: readout multiplier 1/m
on an init rescaled by sqrt(m), so logits ∝ width^-½ at init; modular: sqrt(d_out/d_in)·orthogonal,
RMS ∝ width^-½). Through W_0·(x_t − x_0) a shrinking readout can also make the logits' change
shrink; that the readout does learn at every width is checked, two-sided, by its
``delta_wx_rms``. The update quantities at
step 0 are 0 by definition and not fitted. A series passes when every row passes.

An RMS that is NaN or infinite at some width (a diverged run), or 0 at some widths but not
all, gives slope NaN, which fails. RMS 0 at every width (an atom that never moves) fits slope 0.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..errors import UserError

QUANTITIES = ("output_rms", "output_update_rms", "delta_wx_rms")
UPDATES = ("output_update_rms", "delta_wx_rms")  # 0 at step 0: not fitted there
FORMATS = ("markdown", "json")


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

    def to_dict(self) -> dict:
        rows = [{"series": r["series"], "atom": r["atom"], "step": int(r["step"]), "quantity": r["quantity"],
                 "slope": float(r["slope"]) if math.isfinite(r["slope"]) else None, "pass": bool(r["pass"])}
                for r in self.slopes.to_dict("records")]
        return {"rows": rows, "verdict": {s: bool(v) for s, v in self.verdict.items()},
                "lr": dict(self.lrs), "widths": {s: list(w) for s, w in self.widths.items()},
                "steps": self.steps, "threshold": self.threshold, "notes": dict(self.notes)}


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


def measure(values: dict, steps: int, device: torch.device) -> tuple[list[dict], str | None]:
    """Train one width ``steps`` steps on one fixed batch; per step and atom, the three RMS.

    Returns the records and a note if training stopped early (non-finite loss or update)."""
    from torch.func import functional_call

    from ..optim import Diverged
    from ..run.train import _DTYPES, _loss, dataset_for, model_for, optimizer_for
    values = dict(values, steps=steps, schedule="constant", warmup=0)
    torch.manual_seed(values["seed"])
    ds = dataset_for(values, device)
    model = model_for(values, ds).to(device=device, dtype=_DTYPES[values["dtype"]])
    opt = optimizer_for(values, model)
    x, y = ds.sample("train", values["batch_size"], torch.Generator().manual_seed(values["seed"]))
    atoms, roles = model.atoms(), model.roles()
    labels = [f"{k}:{r}" for k, r in enumerate(roles)]
    weights0 = [a.weight.detach().clone() for a in atoms]
    seen: dict[int, tuple] = {}  # atom -> (its inputs, its output) in the last forward
    hooking = [True]             # off while ``record`` re-runs atoms with their initial weights

    def hook(module, args, output, k):
        if hooking[0]:
            seen[k] = (tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), output.detach())

    hooks = [atom.register_forward_hook(lambda m, a, o, k=k: hook(m, a, o, k)) for k, atom in enumerate(atoms)]
    initial: dict[int, torch.Tensor] = {}
    records, note = [], None

    @torch.no_grad()
    def record(step):
        hooking[0] = False
        try:
            for k, atom in enumerate(atoms):
                if k not in seen:
                    continue
                args, out = seen[k]
                if step == 0:
                    initial[k] = out.clone()
                # this atom's own step on its current input: f(W_t, x_t) - f(W_0, x_t)
                own = out - functional_call(atom, {"weight": weights0[k]}, args)
                base = {"width": values["width"], "atom": labels[k], "atom_index": k, "role": roles[k],
                        "step": step}
                records.append({**base, "quantity": "output_rms", "rms": _rms(out)})
                records.append({**base, "quantity": "output_update_rms", "rms": _rms(out - initial[k])})
                records.append({**base, "quantity": "delta_wx_rms", "rms": _rms(own)})
        finally:
            hooking[0] = True

    model.train()
    try:
        for step in range(steps + 1):
            seen.clear()
            if step == steps:
                with torch.no_grad():
                    model(x)
                record(step)
                break
            loss = _loss(model, x, y)
            record(step)
            if not math.isfinite(loss.item()):
                note = f"width {values['width']}: non-finite loss at step {step}"
                break
            opt.zero_grad()
            loss.backward()
            try:
                opt.step()
            except Diverged:
                note = f"width {values['width']}: non-finite update at step {step}"
                break
    finally:
        for h in hooks:
            h.remove()
    return records, note


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
    if role == "output" and quantity in ("output_rms", "output_update_rms"):
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


# -- rendering ---------------------------------------------------------------------------------
def _lr_text(lr: float) -> str:
    return f"2^{math.log2(lr):.2f}".replace(".00", "")


def to_json(cc: CoordCheck) -> str:
    return json.dumps(cc.to_dict(), indent=2)


def to_markdown(cc: CoordCheck) -> str:
    """Per series: the verdict, then per quantity the worst slope (the row closest to failing,
    or failing by most), where it is and how many rows fail."""
    lines = [f"Coordinate check: slope of log RMS vs log width over {cc.steps} steps on one fixed batch; "
             f"a row passes at |slope| <= {cc.threshold:g} (the logits and their change: "
             f"slope <= {cc.threshold:g}; ΔW·x of every atom: |slope|).", ""]
    for name, ok in cc.verdict.items():
        s = cc.slopes[cc.slopes["series"] == name]
        widths = ", ".join(str(w) for w in cc.widths[name])
        lines.append(f"### {name}: **{'PASS' if ok else 'FAIL'}** (lr {_lr_text(cc.lrs[name])}, widths {widths})")
        lines.append("")
        lines.append("| quantity | worst slope | atom | step | failing rows |")
        lines.append("|---|---|---|---|---|")
        for q in QUANTITIES:
            g = s[s["quantity"] == q]
            if g.empty:
                continue
            worst = g.loc[_violation(g).idxmax()]
            value = "nan" if not math.isfinite(worst["slope"]) else f"{worst['slope']:+.3f}"
            lines.append(f"| {q} | {value} | {worst['atom']} | {int(worst['step'])} | "
                         f"{int((~g['pass']).sum())}/{len(g)} |")
        for note in cc.notes.get(name, []):
            lines.append("")
            lines.append(f"note: {note}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _violation(slopes: pd.DataFrame) -> pd.Series:
    """How far each row is from failing, on the scale ``passes`` uses (NaN: worst of all)."""
    logits = slopes["quantity"].isin(["output_rms", "output_update_rms"]) & (slopes["role"] == "output")
    score = slopes["slope"].abs().where(~logits, slopes["slope"])
    return score.fillna(math.inf)


def render(cc: CoordCheck, format: str = "markdown") -> str:
    if format == "json":
        return to_json(cc)
    if format == "markdown":
        return to_markdown(cc)
    raise UserError(f"--format {format!r}: allowed: {', '.join(FORMATS)}")


def check_format(format: str) -> None:
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: allowed: {', '.join(FORMATS)}")


def figure(cc: CoordCheck, step: int | None = None):
    """One panel per series (three to a row): RMS vs width (log–log) per atom at ``step``
    (default: the last); solid ``output_rms``, dashed ``output_update_rms``, dotted
    ``delta_wx_rms`` (ΔW·x), one colour per atom."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    step = cc.steps if step is None else step
    names = list(cc.verdict)
    cols = min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.4 * cols, 3.6 * rows), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in grid[len(names):]:
        ax.remove()
    axes = grid[:len(names)]
    styles = {"output_rms": "-", "output_update_rms": "--", "delta_wx_rms": ":"}
    for ax, name in zip(axes, names):
        t = cc.table[(cc.table["series"] == name) & (cc.table["step"] == step)]
        atoms = t.drop_duplicates("atom_index").sort_values("atom_index")
        colours = {a: f"C{i % 10}" for i, a in enumerate(atoms["atom"])}
        for q, ls in styles.items():
            for atom in atoms["atom"]:
                g = t[(t["atom"] == atom) & (t["quantity"] == q)].sort_values("width")
                g = g[np.isfinite(g["rms"]) & (g["rms"] > 0)]
                if len(g):
                    ax.plot(g["width"], g["rms"], ls=ls, marker="o", ms=3, color=colours[atom],
                            label=atom if q == "output_rms" else f"_{atom} {q}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width")
        ax.set_ylabel("RMS")
        ok = cc.verdict[name]
        ax.set_title(f"{name} (lr {_lr_text(cc.lrs[name])}, step {step}): {'pass' if ok else 'FAIL'}",
                     fontsize=9)
        handles = [Line2D([], [], color=c, label=a) for a, c in colours.items()]
        handles += [Line2D([], [], color="black", ls=ls, label=q) for q, ls in styles.items()]
        ax.legend(handles=handles, fontsize=6, loc="best")
    return fig
