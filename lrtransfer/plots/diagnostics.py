"""Per-atom diagnostics (update size, effective LR, conditioning...) against step."""
from __future__ import annotations

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis.transfer import resolve_axes
from ..errors import UserError
from ..errors import check_choice
from .kinds import Request, register
from .runs import at_lr, at_scale, best_lr_runs, lr_text, swept_rate
from .style import Style, check_out, no_runs, saved, style_or_default

# per-atom diagnostics that can be drawn against step, with the axis label each gets
QUANTITIES = {"relative_update": "update norm / weight norm", "elr": "effective LR (lr / ‖w‖²)",
              "condition": "condition number σ_max / σ_min", "weight_norm": "weight norm",
              "update_norm": "update norm", "angle": "angle per step (rad)"}
# what to turn on when a quantity has no finite values
QUANTITY_HINTS = {"condition": "set `log_condition = true` in [train] and sweep again",
                  "elr": "it exists only for scale-invariant weights: train with `constraint = \"sphere\"` "
                         "or a post-norm model"}


def _atom_means(runs: pd.DataFrame, diagnostics: pd.DataFrame, quantity: str, ax_name: str, scale, lr):
    """Seed means of ``quantity`` per (series, lr, atom, step) for the runs drawn; and the scale."""
    if diagnostics is None or diagnostics.empty:
        raise UserError("no diagnostics recorded for these runs (committed reference results keep them only for "
                        "the sphere and conditioning experiments); sweep with diagnostics = true to record them")
    sel, scale = at_scale(runs, ax_name, scale)
    sel = at_lr(sel, lr) if lr is not None else best_lr_runs(sel, "train_loss", ["series"])
    d = pd.DataFrame()
    if quantity in diagnostics:
        d = diagnostics.merge(sel[["run_id", "series", "lr"]], on="run_id")
        d = d[np.isfinite(pd.to_numeric(d[quantity], errors="coerce").astype(float))]
    if d.empty:
        hint = QUANTITY_HINTS.get(quantity, "the runs recorded none")
        raise UserError(f"--quantity {quantity}: no finite values at {ax_name}={scale}; {hint}")
    d = d.assign(**{quantity: d[quantity].astype(float)})
    return d.groupby(["series", "lr", "atom", "name", "step"], sort=True)[quantity].mean().reset_index(), scale


def diagnostics_plot(runs: pd.DataFrame, diagnostics: pd.DataFrame, quantity: str = "relative_update",
                     axis: str | None = None, scale=None, lr=None, out=None, style: Style | None = None) -> Figure:
    """Per-atom ``quantity`` (``QUANTITIES``) against step: one panel per series, one seed-mean
    line per atom labelled with the atom's name (atom −1, all scale-invariant weights together,
    black and dashed), for the runs at one scale (default the largest) and one LR (``lr``, or
    per series its best: lowest seed-mean final train loss). Log y-axis when every value is
    positive."""
    out = check_out(out)
    check_choice("--quantity", quantity, QUANTITIES)
    runs, rate = swept_rate(runs)
    ax_name = resolve_axes(runs, axis)[0]
    mean, scale = _atom_means(runs, diagnostics, quantity, ax_name, scale, lr)
    series = list(dict.fromkeys(runs["series"]))
    atoms = sorted(a for a in mean["atom"].unique() if a >= 0)
    palette = mpl.colormaps["tab20" if len(atoms) > 10 else "tab10"]
    colors = {a: palette(i % palette.N) for i, a in enumerate(atoms)}
    fig = Figure(figsize=(2.6 + 3.9 * len(series), 3.8), layout="constrained")
    axes = fig.subplots(1, len(series), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, series):
        s = mean[mean["series"] == name]
        for (atom, atom_name), line in s.groupby(["atom", "name"], sort=True):
            kw = {"color": "black", "ls": "--", "lw": 1.8} if atom == -1 else {"color": colors[atom], "lw": 1.2}
            ax.plot(line["step"], line[quantity], label=str(atom_name), **kw)
        lrs = s["lr"].unique()
        ax.set_title(style_or_default(style).name(name) + (f" ({rate}={lr_text(lrs[0])})" if len(lrs) == 1 else ""))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if s.empty:
            no_runs(ax)
    if (mean[quantity] > 0).all():
        for ax in axes:
            ax.set_yscale("log")
    axes[0].set_ylabel(QUANTITIES[quantity] + " (seed mean)")
    labels = dict.fromkeys(h.get_label() for ax in axes for h in ax.get_lines())
    handles = [next(h for ax in axes for h in ax.get_lines() if h.get_label() == lab) for lab in labels]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False)
    fig.suptitle(f"{quantity.replace('_', ' ')} per atom vs step at {ax_name}={scale}")
    return saved(fig, out)


@register("diagnostics", "diagnostics_{quantity}", help="a per-atom quantity vs step",
          options={"quantity": QUANTITIES})
def _diagnostic_figures(r: Request) -> list[Figure]:
    return [diagnostics_plot(r.runs, r.diagnostics(), quantity=r.quantity, axis=r.axis, scale=r.scale, lr=r.lr,
                             style=r.style)]
