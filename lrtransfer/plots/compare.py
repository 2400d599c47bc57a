"""Several results directories' loss-vs-LR curves overlaid (``lrtransfer compare --out``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..analysis.transfer import cells, metric_column
from .runs import best_index, initial_loss, plot_axes
from .style import (LINE_STYLES, MINIMUM, Style, check_out, lr_axis, mark, positive_range, saved, scale_styles,
                    style_or_default)


def _compare_panel(ax, tables: dict, name: str, ax_name: str, scales, colors: dict, styles: dict, yhi: float,
                   metric: str) -> None:
    """One series: a curve per directory (line style) and scale (colour), ★ at each minimum."""
    for label, c in tables.items():
        sel = c[(c["series"] == name) & (c["n_seeds"] > 0)]
        for scale in scales:
            s = sel[sel[ax_name] == scale].sort_values("lr")
            if s.empty:
                continue
            ax.plot(s["lr"], np.minimum(s["loss"].to_numpy(float), yhi), ls=styles[label], marker="o", ms=2.5,
                    lw=1.5, color=colors[scale], label=f"{label}: {ax_name}={scale}")
            best = s.loc[best_index(s["loss"], metric)]
            ax.plot([best["lr"]], [min(best["loss"], yhi)], color=colors[scale], **mark("minimum"), **MINIMUM)


def compare_curves(runs_by_dir: dict[str, pd.DataFrame], metric: str = "train_loss", axis: str | None = None,
                   out=None, style: Style | None = None) -> Figure:
    """Several results directories' loss-vs-LR curves overlaid: one panel per series, colour =
    scale (as ``lr_curves``), line style = directory, ★ at each curve's minimum. A series
    missing from a directory is just not drawn there."""
    out = check_out(out)
    style = style_or_default(style)
    metric_column(metric)
    first = next(iter(runs_by_dir.values()))
    ax_name = plot_axes(first, axis)[0]
    tables = {label: cells(runs, metric, ax_name) for label, runs in runs_by_dir.items()}
    series = list(dict.fromkeys(s for c in tables.values() for s in c["series"]))
    scales = sorted({x for c in tables.values() for x in c[ax_name].dropna().unique()})
    colors = {s: look["color"] for s, look in scale_styles(scales).items()}
    styles = {label: LINE_STYLES[i % len(LINE_STYLES)] for i, label in enumerate(tables)}
    everything = pd.concat([c["loss"] for c in tables.values()])
    ylo, yhi = positive_range(everything, style.logy, initial_loss(first, metric))
    fig = Figure(figsize=(1.8 + 3.9 * len(series), 3.9), layout="constrained")
    axes = fig.subplots(1, len(series), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, series):
        _compare_panel(ax, tables, name, ax_name, scales, colors, styles, yhi, metric)
        lr_axis(ax)
        if style.logy:
            ax.set_yscale("log")
        ax.set_ylim(ylo, yhi)
        ax.set_title(style.name(name))
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric.replace("_", " ") + " (seed mean)")
    handles = [Line2D([], [], color=colors[s], label=f"{ax_name}={s}") for s in scales]
    handles += [Line2D([], [], color="black", ls=styles[label], label=label) for label in tables]
    handles.append(Line2D([], [], color="gray", label="minimum", **{**MINIMUM, "clip_on": True}))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"{metric.replace('_', ' ')} vs learning rate: {' vs '.join(tables)}")
    return saved(fig, out)
