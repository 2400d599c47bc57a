"""Sphere regimes: final loss against the (effective) LR, each run coloured by its regime (gray:
unsettled, a run whose late trajectory still trends)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..analysis.transfer import metric_column
from ..errors import UserError
from .kinds import Request, register
from .runs import group_label, in_group, initial_loss, panel_groups
from .style import DIVERGED_END, Style, check_out, frame_y, mark, no_runs, robust_range, saved, strip_y, \
    style_or_default

REGIME_COLORS = {"converge": "tab:blue", "chaotic": "tab:orange", "diverge": "tab:red", "unsettled": "tab:gray"}


def _regime_points(ax, sel: pd.DataFrame, yhi: float) -> None:
    """Each run's final loss coloured by regime (✕ in the strip above for a run without one),
    the seed mean, and the chance loss (dotted)."""
    for regime, color in REGIME_COLORS.items():
        pts = sel[sel["regime"] == regime]
        ok = pts[np.isfinite(pts["_y"])]
        if not ok.empty:
            ax.scatter(ok["_x"], np.minimum(ok["_y"], yhi), color=color, s=20, zorder=4, label=regime)
        gone = pts[~np.isfinite(pts["_y"])]
        if not gone.empty:   # in the strip beyond the data (axes-fraction y), not on the spine
            ax.scatter(gone["_x"], [strip_y(0, 1, False)] * len(gone), color=color, **mark("diverged"),
                       transform=ax.get_xaxis_transform(), **{**DIVERGED_END, "clip_on": True})
    mean = sel[np.isfinite(sel["_y"])].groupby("_x")["_y"].mean()
    if len(mean):
        ax.plot(mean.index, np.minimum(mean.to_numpy(), yhi), "-", color="gray", lw=1.2, zorder=3, label="seed mean")
    c = sel["chance_loss"][np.isfinite(sel["chance_loss"])]
    if len(c):
        ax.axhline(float(c.median()), color="black", ls=":", lw=1, **mark("chance"))


def _boundary_lines(ax, b: pd.DataFrame) -> None:
    """The regime boundaries (dashed, at the seeds' mean log2) with their min–max span."""
    for bname, color in (("to_chaotic", REGIME_COLORS["chaotic"]), ("to_diverge", REGIME_COLORS["diverge"])):
        if b.empty or not b[f"{bname}_n"].iloc[0]:
            continue
        row = b.iloc[0]
        ax.axvline(2.0 ** row[f"{bname}_log2"], color=color, ls="--", lw=1.2, **mark(bname))
        if row[f"{bname}_log2_max"] > row[f"{bname}_log2_min"]:
            ax.axvspan(2.0 ** row[f"{bname}_log2_min"], 2.0 ** row[f"{bname}_log2_max"], color=color,
                       alpha=0.12, lw=0, **mark(f"{bname}_spread"))


def _regime_table(runs: pd.DataFrame, regimes: pd.DataFrame, x: str, metric: str) -> pd.DataFrame:
    """The runs with their regime, ``_x`` (> 0) and final metric ``_y``."""
    from ..analysis import dynamics
    col = metric_column(metric, runs)
    full = dynamics.with_dynamics_columns(runs)
    full = full.assign(_x=dynamics.x_values(full, x)).merge(regimes[["run_id", "regime"]], on="run_id")
    full = full[full["_x"] > 0]
    if full.empty:
        raise UserError(f"no run with both a regime and a positive {x}")
    full["_y"] = pd.to_numeric(full[col], errors="coerce").astype(float)
    return full


def _regime_key() -> list:
    handles = [Line2D([], [], color=c, marker="o", ls="none", label=r) for r, c in REGIME_COLORS.items()]
    return handles + [Line2D([], [], color="gray", label="seed mean"),
                      Line2D([], [], color="black", ls=":", label="chance loss"),
                      Line2D([], [], color="gray", ls="--", label="boundary (seed mean; band: min–max)")]


def regime_plot(runs: pd.DataFrame, regimes: pd.DataFrame, x: str = "elr", metric: str = "train_loss",
                boundaries: pd.DataFrame | None = None, out=None, style: Style | None = None) -> Figure:
    """Final loss against ``x`` (log2 axis; ``elr`` by default) per run, coloured by its regime
    (a scatter per label ``converge`` / ``chaotic`` / ``diverge`` / ``unsettled``, ``REGIME_COLORS``),
    the seed mean (line ``seed mean``), the chance loss (dotted, gid ``chance``) and the regime
    boundaries of ``dynamics.regime_boundaries`` (dashed, gid ``to_chaotic`` / ``to_diverge``,
    a span ``*_spread`` over the seeds' min–max). Runs with no final loss (diverged) are ✕ in a
    strip above the data. One panel per series (a row per width/depth where those vary)."""
    from ..analysis import dynamics
    out = check_out(out)
    full = _regime_table(runs, regimes, x, metric)
    if boundaries is None:
        boundaries = dynamics.regime_boundaries(runs, regimes, x)
    series, groups, keys = panel_groups(full)
    chance = full["chance_loss"][np.isfinite(full["chance_loss"])]
    ylo, yhi = robust_range(pd.concat([full["_y"], chance]), initial_loss(runs))
    if len(chance):
        yhi = max(yhi, float(chance.max()) * 1.05)
    fig = Figure(figsize=(1.6 + 4.2 * len(series), 0.6 + 3.4 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), len(series), sharey=True, squeeze=False)
    for gi, gval in enumerate(groups):
        for si, name in enumerate(series):
            ax = axes[gi][si]
            sel = in_group(full[full["series"] == name], keys, gval)
            _regime_points(ax, sel, yhi)
            _boundary_lines(ax, in_group(boundaries[boundaries["series"] == name], keys, gval))
            ax.set_xscale("log", base=2)
            frame_y(ax, ylo, yhi, False, False)
            ax.set_title(f"{style_or_default(style).name(name)}{group_label(keys, gval)}")
            ax.grid(alpha=0.3)
            if sel.empty:
                no_runs(ax)
            if gi == len(groups) - 1:
                ax.set_xlabel("effective LR (lr / ‖w‖²)" if x == "elr" else x.replace("_", " "))
            if si == 0:
                ax.set_ylabel(f"final {metric.replace('_', ' ')}")
    fig.legend(handles=_regime_key(), loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"regimes: final {metric.replace('_', ' ')} vs {x}")
    return saved(fig, out)


@register("regimes", "regimes", help="final loss vs ELR coloured by regime")
def _regime_figures(r: Request) -> list[Figure]:
    from ..analysis import dynamics
    table = dynamics.regimes(r.runs, r.curves, r.diagnostics(), r.regime)
    return [regime_plot(r.runs, table, x=dynamics.default_x(r.runs), metric=r.metric, style=r.style)]
