"""The lr x weight decay view: final loss over the (lr, wd) grid, and loss curves by lr·wd."""
from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..analysis.transfer import metric_column, resolve_axes
from ..errors import UserError
from .curves import mean_lines, step_panels
from .kinds import Request, register
from .runs import at_scale, check_curve_metric, initial_loss, lr_text
from .style import (DIVERGED, LINE_STYLES, Style, check_out, mark, pow2_formatter, robust_range, saved,
                    style_or_default)


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (half a step beyond the ends; one centre: ±0.5)."""
    if len(centers) == 1:
        return np.array([centers[0] - 0.5, centers[0] + 0.5])
    mid = (centers[1:] + centers[:-1]) / 2
    return np.concatenate([[centers[0] - (mid[0] - centers[0])], mid, [centers[-1] + (centers[-1] - mid[-1])]])


def _lrwd_cells(runs: pd.DataFrame, metric: str, axis: str | None, scale) -> tuple[pd.DataFrame, str, object]:
    """Per (series, lr, wd > 0) at one scale of ``axis``: the seed-mean final metric of the finished runs,
    how many finished and diverged, log2 lr (``x``), log2 wd (``y``) and log2 lr·wd (``p``); the axis and scale."""
    col = metric_column(metric, runs)
    if "weight_decay" not in runs:
        raise UserError("the runs table has no weight_decay column: no lr x weight_decay grid to draw")
    ax_name = resolve_axes(runs, axis)[0]
    sel, scale = at_scale(runs, ax_name, scale)
    sel = sel.assign(_wd=pd.to_numeric(sel["weight_decay"], errors="coerce").astype(float),
                     _y=pd.to_numeric(sel[col], errors="coerce").astype(float))
    sel = sel[sel["_wd"] > 0]
    if sel.empty or sel["_wd"].nunique() < 2:
        raise UserError(f"weight_decay does not vary over values > 0 at {ax_name}={scale}: no lr x weight_decay grid")
    ok = (sel["status"] == "done") & np.isfinite(sel["_y"])
    sel = sel.assign(_ok=ok, _div=sel["status"] == "diverged", _y=sel["_y"].where(ok))
    cells = sel.groupby(["series", "lr", "_wd"], sort=False).agg(loss=("_y", "mean"), n_ok=("_ok", "sum"),
                                                                 n_div=("_div", "sum")).reset_index()
    cells["x"], cells["y"] = np.log2(cells["lr"].astype(float)), np.log2(cells["_wd"])
    cells["p"] = np.round(cells["x"] + cells["y"], 6)
    return cells, ax_name, scale


def _heat_panel(ax, c: pd.DataFrame, xs, ys, cmap, norm) -> None:
    """One series' heatmap: ✕ on all-diverged cells, dashed diagonals of equal lr·wd."""
    grid = np.full((len(ys), len(xs)), np.nan)
    for r in c.itertuples():
        # the true loss: a value above the robust range saturates in the colormap, it is not altered
        grid[np.searchsorted(ys, r.y), np.searchsorted(xs, r.x)] = r.loss if r.n_ok else np.nan
    xe, ye = _edges(xs), _edges(ys)
    ax.pcolormesh(xe, ye, np.ma.masked_invalid(grid), cmap=cmap, norm=norm, **mark("loss"))
    div = c[(c["n_ok"] == 0) & (c["n_div"] > 0)]
    if not div.empty:
        ax.plot(div["x"], div["y"], color="red", **mark("diverged"), **DIVERGED)
    for p, g in c.groupby("p", sort=True):
        if len(g) < 2:
            continue
        x0, x1 = g["x"].min(), g["x"].max()
        ax.plot([x0, x1], [p - x0, p - x1], color="white", ls="--", lw=0.9, **mark("product"))
        ax.text(x0, p - x0, f"lr·wd=2^{p:g}", fontsize=6, color="white", ha="left", va="bottom",
                rotation=-35, rotation_mode="anchor")
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(ye[0], ye[-1])
    ax.set_xticks(xs)
    ax.set_yticks(ys)
    ax.set_xlabel("learning rate")
    ax.xaxis.set_major_formatter(pow2_formatter())
    ax.yaxis.set_major_formatter(pow2_formatter())


def lrwd_heatmap(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, scale=None,
                 out=None, style: Style | None = None) -> Figure:
    """Seed-mean final loss over (log2 lr, log2 weight_decay) as a heatmap (one QuadMesh per
    panel, one colour scale), one panel per series at one scale (default the largest): ✕ marks
    cells whose seeds all diverged (gid ``diverged``), dashed diagonals (gid ``product``) join
    the cells of equal lr·wd, each labelled ``lr·wd=2^k``. Cells with wd = 0 have no place on
    the log axis and are left out."""
    out = check_out(out)
    cells, ax_name, scale = _lrwd_cells(runs, metric, axis, scale)
    xs, ys = np.sort(cells["x"].unique()), np.sort(cells["y"].unique())
    _, hi = robust_range(cells["loss"], initial_loss(runs))
    norm = mpl.colors.Normalize(vmin=float(cells["loss"].min()) if cells["loss"].notna().any() else 0, vmax=hi)
    cmap = mpl.colormaps["viridis"]
    series = list(dict.fromkeys(cells["series"]))
    fig = Figure(figsize=(1.8 + 4.0 * len(series), 3.8), layout="constrained")
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    for ax, name in zip(axes, series):
        _heat_panel(ax, cells[cells["series"] == name], xs, ys, cmap, norm)
        ax.set_title(style_or_default(style).name(name))
    axes[0].set_ylabel("weight decay")
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.9)
    bar.set_label(f"final {metric.replace('_', ' ')} (seed mean)")
    fig.suptitle(f"final {metric.replace('_', ' ')} over lr x weight decay at {ax_name}={scale} "
                 f"(dashed: equal lr·wd; ✕ diverged)")
    return saved(fig, out)


def curves_by_lrwd(runs: pd.DataFrame, curves: pd.DataFrame, metric: str = "train_loss", axis: str | None = None,
                   scale=None, out=None, style: Style | None = None) -> Figure:
    """Loss vs step, one panel per series at one scale (default the largest), one seed-mean line
    per (lr, weight_decay) cell with wd > 0, coloured by log2(lr·wd) (colorbar) with a line style
    per lr, labelled ``lr=2^a, wd=2^b``: under the lr·wd invariance lines of one colour meet late
    in training while lines of one style part. ✕ marks where a diverged run's curve ends."""
    out = check_out(out)
    check_curve_metric(metric)
    if "weight_decay" not in runs:
        raise UserError("the runs table has no weight_decay column: nothing to colour by lr·wd")
    ax_name = resolve_axes(runs, axis)[0]
    sel, scale = at_scale(runs, ax_name, scale)
    wd = pd.to_numeric(sel["weight_decay"], errors="coerce").astype(float)
    sel = sel[wd > 0].assign(_key=lambda r: list(zip(r["lr"].astype(float), r["weight_decay"].astype(float))))
    if sel.empty:
        raise UserError(f"no runs with weight_decay > 0 at {ax_name}={scale}: lr·wd is 0 everywhere")
    mean, ends = mean_lines(sel, curves, metric, "_key")
    if mean.empty:
        raise UserError(f"no logged {metric} at {ax_name}={scale}")
    products = {k: math.log2(k[0] * k[1]) for k in mean["_key"].unique()}
    lo, hi = min(products.values()), max(products.values())
    cmap, norm = mpl.colormaps["plasma"], mpl.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
    lr_style = {v: LINE_STYLES[i % len(LINE_STYLES)] for i, v in enumerate(sorted({k[0] for k in products}))}
    fig = Figure(figsize=(1.6 + 3.9 * runs["series"].nunique(), 3.6), layout="constrained")
    axes = step_panels(fig, runs, mean, ends, metric,
                       lambda key: {"lw": 1.3, "color": cmap(norm(products[key])), "ls": lr_style[key[0]],
                                    "label": f"lr={lr_text(key[0])}, wd={lr_text(key[1])}"}, style_or_default(style))
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.9)
    bar.set_label("lr · weight decay")
    bar.ax.yaxis.set_major_formatter(pow2_formatter())
    handles = [Line2D([], [], color="gray", ls=st, label=f"lr={lr_text(v)}") for v, st in lr_style.items()]
    axes[-1].legend(handles=handles, fontsize=7, title="line style", title_fontsize=7)
    fig.suptitle(f"{metric.replace('_', ' ')} vs step by lr·wd at {ax_name}={scale}")
    return saved(fig, out)


@register("lrwd", "lrwd", second="lrwd_curves",
          help="loss over lr x weight decay, and curves by lr·wd as a second figure")
def _lrwd_figures(r: Request) -> list[Figure]:
    return [lrwd_heatmap(r.runs, metric=r.metric, axis=r.axis, scale=r.scale, style=r.style),
            curves_by_lrwd(r.runs, r.curves, metric=r.metric, axis=r.axis, scale=r.scale, style=r.style)]
