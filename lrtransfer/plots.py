"""Figures: loss vs LR per scale and series, and the transfer view (optimum and regret vs scale).

Figures are plain ``matplotlib.figure.Figure`` objects rendered with the Agg/SVG/PDF canvases:
no pyplot state, no GUI, nothing to close. Numbers come from ``analysis`` (one implementation).

Every curve is a ``Line2D`` labelled ``"<axis>=<scale>"`` (``lr_curves``) or with the series
label (``transfer_plot``); markers and helpers carry labels starting with ``_`` (``_minimum``,
``_diverged``, ``_clipped``, ``_fit``...) so that curves can be counted per panel.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullLocator

from .analysis import CELL_STATS, analyse, cells, group_columns, metric_column, resolve_axes
from .errors import UserError
from .store import atomic_write

FORMATS = (".png", ".svg", ".pdf")
DIVERGED = {"marker": "x", "ms": 8, "mew": 2, "ls": "none", "clip_on": False, "zorder": 6}
CLIPPED = {"marker": "^", "ms": 6, "ls": "none", "mfc": "white", "clip_on": False, "zorder": 6}
MINIMUM = {"marker": "*", "ms": 13, "ls": "none", "mec": "black", "mew": 0.6, "zorder": 5}


def check_out(out) -> Path | None:
    """``out`` as a Path after checking its format and directory (None stays None)."""
    if out is None:
        return None
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise UserError(f"--out {out}: unsupported format {out.suffix or '(none)'}; allowed: {', '.join(FORMATS)}")
    if not out.parent.exists():
        raise UserError(f"--out {out}: directory {out.parent} does not exist")
    return out


def save(fig: Figure, out: Path | None) -> None:
    """Write ``fig`` to ``out`` (.png/.svg/.pdf) atomically; nothing for None."""
    if out is not None:  # atomically: an interrupted save never leaves a truncated figure
        atomic_write(out, lambda tmp: fig.savefig(tmp, format=out.suffix.lower()[1:], dpi=130, bbox_inches="tight"))


def _initial_loss(runs: pd.DataFrame) -> float | None:
    if "first_train_loss" not in runs:
        return None
    start = pd.to_numeric(runs["first_train_loss"], errors="coerce").astype(float)
    start = start[np.isfinite(start)]
    return float(start.median()) if len(start) else None


def _robust_range(values, initial: float | None = None) -> tuple[float, float]:
    """Y limits from a little below the smallest value to a robust upper bound: the smallest
    of the largest value, 1.1 x the loss at initialisation (``first_train_loss`` median, when
    recorded) and Q3 + 3 IQR of the values, so that one huge loss (a run near divergence)
    cannot flatten every curve. Callers draw points above it at the top edge."""
    vals = pd.Series(values, dtype=float)
    vals = vals[np.isfinite(vals)]
    if vals.empty:
        return 0.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    caps = [1.1 * initial] if initial is not None else []
    q1, q3 = np.quantile(vals, [0.25, 0.75])
    if q3 > q1:
        caps.append(float(q3 + 3 * (q3 - q1)))
    caps = [x for x in caps if x > lo]
    if caps:
        hi = min(hi, *caps)
    if hi <= lo:  # one value: centre it
        half = max(abs(lo), 1e-3) * 0.1
        return lo - half, lo + half
    span = hi - lo
    return lo - 0.06 * span, lo + 1.08 * span


def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _group_label(keys: list[str], values: tuple) -> str:
    return "".join(f", {k}={v}" for k, v in zip(keys, values) if not _missing(v))


def _select(c: pd.DataFrame, keys: list[str], values: tuple) -> pd.DataFrame:
    for k, v in zip(keys, values):
        c = c[c[k].isna()] if _missing(v) else c[c[k] == v]
    return c


def lr_curves(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, out=None) -> Figure:
    """Loss vs LR (log2 x-axis): one panel per series (order of first appearance; one row of
    panels per value of any other varying key, e.g. depth), one curve per scale coloured by a
    sequential colormap, shared y.

    ★ marks each curve's minimum; ✕ at the top edge an LR whose seeds all diverged; △ at the
    top edge a loss above the robust upper limit. With several seeds the line is the seed mean
    and the band their min-max. When both width and depth vary and ``axis`` is None, the
    curves are drawn across width, one row per depth. ``out``: .png, .svg or .pdf.
    """
    out = check_out(out)
    metric_column(metric)
    ax_name = resolve_axes(runs, axis)[0]
    c = cells(runs, metric, ax_name)
    extra = [k for k in c.columns if k not in ("series", ax_name, "lr", *CELL_STATS)]
    series = list(dict.fromkeys(c["series"]))
    groups = list(dict.fromkeys(c[extra].itertuples(index=False, name=None))) if extra else [()]
    scales = sorted(c[ax_name].dropna().unique())
    cmap = mpl.colormaps["viridis"]
    colors = {s: cmap(0.9 * i / max(len(scales) - 1, 1)) for i, s in enumerate(scales)}
    fig = Figure(figsize=(1.2 + 3.9 * len(series), 0.6 + 3.3 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), len(series), sharey=True, sharex=False, squeeze=False)
    ylo, yhi = _robust_range(pd.concat([c["lo"], c["hi"], c["loss"]]), _initial_loss(runs))
    for gi, gval in enumerate(groups):
        for si, name in enumerate(series):
            ax = axes[gi][si]
            sel = _select(c[c["series"] == name], extra, gval)
            for scale in scales:
                s = sel[sel[ax_name] == scale].sort_values("lr")
                if s.empty:
                    continue
                col = colors[scale]
                ok = s[s["n_seeds"] > 0]
                y = np.minimum(ok["loss"].to_numpy(float), yhi)
                ax.plot(ok["lr"], y, "-o", ms=3, lw=1.6, color=col, label=f"{ax_name}={scale}")
                if (ok["n_seeds"] > 1).any():
                    ax.fill_between(ok["lr"], np.minimum(ok["lo"], yhi), np.minimum(ok["hi"], yhi), color=col,
                                    alpha=0.18, linewidth=0, label="_band")
                above = ok[ok["loss"] > yhi]
                if not above.empty:
                    ax.plot(above["lr"], [yhi] * len(above), color=col, label="_clipped", **CLIPPED)
                if not ok.empty:
                    best = ok.loc[ok["loss"].idxmin()]
                    ax.plot([best["lr"]], [min(best["loss"], yhi)], color=col, label="_minimum", **MINIMUM)
                div = s[s["diverged"]]
                if not div.empty:
                    ax.plot(div["lr"], [yhi] * len(div), color=col, label="_diverged", **DIVERGED)
            ax.set_xscale("log", base=2)
            ax.set_ylim(ylo, yhi)
            ax.set_title(f"{name}{_group_label(extra, gval)}")
            ax.grid(alpha=0.3)
            if sel.empty:
                ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="gray")
            if gi == len(groups) - 1:
                ax.set_xlabel("learning rate")
            if si == 0:
                ax.set_ylabel(metric.replace("_", " "))
    handles = [Line2D([], [], color=colors[s], marker="o", ms=3, label=f"{ax_name}={s}") for s in scales]
    handles += [Line2D([], [], color="gray", label="minimum", **{**MINIMUM, "clip_on": True}),
                Line2D([], [], color="gray", label="diverged", **{**DIVERGED, "clip_on": True})]
    if any(line.get_label() == "_clipped" for a in axes.flat for line in a.get_lines()):
        handles.append(Line2D([], [], color="gray", label="above y range", **{**CLIPPED, "clip_on": True}))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"{metric.replace('_', ' ')} vs learning rate across {ax_name}")
    save(fig, out)
    return fig


def _scale_axis(ax, scales) -> None:
    """log2 x-axis with a tick, written plainly, at each scale that was run."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(scales), [f"{s:g}" for s in scales])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(scales) == 1:
        ax.set_xlim(scales[0] / 2, scales[0] * 2)


def transfer_plot(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, out=None,
                  ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000, seed: int = 0) -> Figure:
    """Two panels per scale axis. Left: log2 optimal LR vs scale per series (solid: grid
    argmin, hollow where it sits at the edge of the LR grid; dotted: parabola fit, with bars
    spanning its bootstrap CI at level ``ci``); each series' legend entry gives its transfer
    verdict at ``tolerance`` octaves. Right: loss at the base-scale LR (solid; ✕ at the top
    edge where it diverged) and the best loss (dashed) vs scale; the gap is the regret of
    transferring the LR. Numbers from ``analysis.analyse``; ``out``: .png, .svg or .pdf.
    """
    out = check_out(out)
    table, verdicts = analyse(runs, metric, axis, ci=ci, tolerance=tolerance, n_boot=n_boot, seed=seed)
    axes_names = list(dict.fromkeys(table["axis"]))
    fig = Figure(figsize=(11, 0.6 + 3.6 * len(axes_names)), layout="constrained")
    panels = fig.subplots(len(axes_names), 2, squeeze=False)
    palette = mpl.colormaps["tab10"]
    for row, ax_name in enumerate(axes_names):
        t = table[table["axis"] == ax_name]
        keys = [k for k in group_columns(t) if t[k].notna().any()]
        left, right = panels[row]
        ylo, top = _robust_range(pd.concat([t["loss_at_base_lr"], t["best_loss"]]), _initial_loss(runs))
        v = verdicts[verdicts["axis"] == ax_name]
        marked, legend_text = False, []
        for i, (gkey, g) in enumerate(t.groupby(["series", *keys], sort=False, dropna=False)):
            gkey = gkey if isinstance(gkey, tuple) else (gkey,)
            label = f"{gkey[0]}{_group_label(keys, gkey[1:])}"
            g = g.sort_values("scale")
            col = palette(i % 10)
            left.plot(g["scale"], g["opt_log2_lr"], "-o", color=col, label=label)
            legend_text.append(f"{label}: {_select(v[v['series'] == gkey[0]], keys, gkey[1:])['verdict'].iloc[0]}")
            edge = g[g["edge"]]
            if not edge.empty:
                left.plot(edge["scale"], edge["opt_log2_lr"], "o", color=col, mfc="white", ms=7, zorder=5,
                          label="_edge")
            left.plot(g["scale"], g["opt_log2_lr_fit"], ":", color=col, label="_fit")
            lo, hi = g["opt_log2_lr_fit_lo"].astype(float), g["opt_log2_lr_fit_hi"].astype(float)
            # drawn about the CI's middle: a percentile CI need not contain the point estimate
            left.errorbar(g["scale"], (lo + hi) / 2, yerr=(hi - lo) / 2, fmt="none", ecolor=col, elinewidth=1.2,
                          capsize=3, label="_ci")
            right.plot(g["scale"], np.minimum(g["loss_at_base_lr"].astype(float), top), "-o", color=col,
                       label=f"{label} @ base LR")
            right.plot(g["scale"], np.minimum(g["best_loss"].astype(float), top), "--", color=col, alpha=0.75,
                       label=f"{label} best")
            div = g[g["base_lr_diverged"]]
            if not div.empty:
                right.plot(div["scale"], [top] * len(div), color=col, label="_diverged", **DIVERGED)
            above = g[g["loss_at_base_lr"] > top]
            if not above.empty:
                right.plot(above["scale"], [top] * len(above), color=col, label="_clipped", **CLIPPED)
            marked |= not div.empty
        scales = sorted(t["scale"].dropna().unique())
        for ax in (left, right):
            _scale_axis(ax, scales)
            ax.set_xlabel(ax_name)
            ax.grid(alpha=0.3)
        right.set_ylim(ylo, top)
        left.yaxis.set_major_locator(MaxNLocator(integer=True))
        y0, y1 = left.get_ylim()
        if y1 - y0 < 2:  # at least two octaves tall, so the integer ticks read as octaves
            mid = (y0 + y1) / 2
            left.set_ylim(mid - 1, mid + 1)
        left.set_ylabel(f"log2 optimal LR (bars: {ci * 100:g}% CI of the fit)")
        left.set_title(f"optimal LR vs {ax_name} (dotted: parabola fit, hollow: grid edge)", fontsize=10)
        right.set_ylabel(metric.replace("_", " "))
        right.set_title(f"{metric.replace('_', ' ')} at the base-{ax_name} LR (solid) vs best (dashed)", fontsize=10)
        series_lines = [h for h in left.get_lines() if not h.get_label().startswith("_")]
        left.legend(series_lines, legend_text, fontsize=8,
                    title=f"verdict (±{tolerance:g} octave{'' if tolerance == 1 else 's'}, {ci * 100:g}% CI)",
                    title_fontsize=8)
        handles = [h for h in right.get_lines() if h.get_label().endswith(" @ base LR")]
        handles += [Line2D([], [], color="gray", ls="--", label="best at that scale")]
        if marked:
            handles.append(Line2D([], [], color="gray", label="base LR diverged", **{**DIVERGED, "clip_on": True}))
        right.legend(handles=handles, fontsize=8)
    fig.suptitle(f"LR transfer across {' and '.join(axes_names)}: {metric.replace('_', ' ')}")
    save(fig, out)
    return fig


def loss_vs_step(runs: pd.DataFrame, curves: pd.DataFrame, metric: str = "train_loss", axis: str | None = None,
                 scale=None, out=None) -> Figure:
    """Training curves: loss vs step, one panel per series at one scale (default the largest),
    one line per LR — the mean over seeds at each logged step — coloured by log2(lr).

    A run that diverged stops where it diverged (its curve simply ends). ``metric``:
    ``train_loss`` or ``test_loss`` (the latter only where ``eval_every`` logged it).
    """
    out = check_out(out)
    if metric not in ("train_loss", "test_loss"):
        raise UserError(f"--metric {metric}: loss curves are train_loss or test_loss")
    ax_name = resolve_axes(runs, axis)[0]
    scales = sorted(runs[ax_name].dropna().unique())
    if scale is None:
        scale = scales[-1]
    elif scale not in scales:
        raise UserError(f"--scale {scale}: no runs at {ax_name}={scale}; {ax_name}s: "
                        f"{', '.join(str(s) for s in scales)}")
    at = runs[runs[ax_name] == scale][["run_id", "series", "lr"]]
    c = curves.drop(columns=["lr"]).merge(at, on="run_id")  # curves.lr is the scheduled LR
    c = c[np.isfinite(c[metric].to_numpy(float))]
    if c.empty:
        raise UserError(f"no logged {metric} at {ax_name}={scale}")
    mean = c.groupby(["series", "lr", "step"], sort=True)[metric].mean().reset_index()
    series = list(dict.fromkeys(runs["series"]))
    lo, hi = math.log2(mean["lr"].min()), math.log2(mean["lr"].max())
    cmap = mpl.colormaps["viridis"]
    norm = mpl.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
    fig = Figure(figsize=(1.6 + 3.9 * len(series), 3.6), layout="constrained")
    axes = fig.subplots(1, len(series), sharey=True, squeeze=False)[0]
    ylo, yhi = _robust_range(mean[metric], _initial_loss(runs))
    for ax, name in zip(axes, series):
        s = mean[mean["series"] == name]
        for lr, line in s.groupby("lr", sort=True):
            ax.plot(line["step"], np.minimum(line[metric], yhi), lw=1.4, color=cmap(norm(math.log2(lr))),
                    label=f"lr=2^{math.log2(lr):g}")
        ax.set_title(name)
        ax.set_ylim(ylo, yhi)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if s.empty:
            ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="gray")
    axes[0].set_ylabel(metric.replace("_", " ") + " (seed mean)")
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.9)
    bar.set_label("log2 learning rate")
    fig.suptitle(f"{metric.replace('_', ' ')} vs step at {ax_name}={scale}")
    save(fig, out)
    return fig
