"""Training curves: loss vs step, one panel per series, one seed-mean line per LR or per scale."""
from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..analysis.transfer import resolve_axes
from ..errors import UserError
from ..errors import check_choice
from .kinds import Request, register
from .runs import at_lr, at_scale, best_lr_runs, check_curve_metric, initial_loss, lr_text, swept_rate
from .style import DIVERGED_END, Style, check_out, mark, no_runs, positive_range, pow2_formatter, saved, \
    style_or_default

COLOR_BY = ("scale", "lr")


def mean_lines(sel: pd.DataFrame, curves: pd.DataFrame, metric: str, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seed-mean curves per (series, ``key``) of the runs in ``sel``, and where each diverged run's
    curve ends (series, key, step, and the seed-mean value there, so the ✕ sits on its line)."""
    c = curves.drop(columns=["lr"], errors="ignore").merge(sel[["run_id", "series", key, "status"]], on="run_id")
    c = c[np.isfinite(c[metric].to_numpy(float))]
    mean = c.groupby(["series", key, "step"], sort=True)[metric].mean().reset_index()
    last = c[c["status"] == "diverged"].sort_values("step").groupby("run_id", sort=False).tail(1)
    ends = last[["series", key, "step"]].drop_duplicates().merge(mean, on=["series", key, "step"])
    return mean, ends


def step_panels(fig: Figure, runs: pd.DataFrame, mean: pd.DataFrame, ends: pd.DataFrame, metric: str,
                line_style, style: Style) -> list:
    """Loss-vs-step panels, one per series of ``runs``: a seed-mean line per ``_key`` of ``mean``
    drawn with ``line_style(key)`` (plot keywords, colour and label included), a ✕ at the last
    logged point of a line whose runs diverged (``ends``), values above the y range drawn at
    its top. Returns the panels."""
    series = list(dict.fromkeys(runs["series"]))
    axes = fig.subplots(1, len(series), sharey=True, squeeze=False)[0]
    ylo, yhi = positive_range(mean[metric], style.logy, initial_loss(runs))
    for ax, name in zip(axes, series):
        s = mean[mean["series"] == name]
        for key, line in s.groupby("_key", sort=True):
            kw = line_style(key)
            ax.plot(line["step"], np.minimum(line[metric], yhi), **kw)
            end = ends[(ends["series"] == name) & (ends["_key"] == key)]
            if not end.empty:
                ax.scatter(end["step"], np.minimum(end[metric], yhi), color=kw["color"], **mark("diverged"),
                           **DIVERGED_END)
        ax.set_title(style.name(name))
        if style.logy:
            ax.set_yscale("log")
        ax.set_ylim(ylo, yhi)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if s.empty:
            no_runs(ax)
    axes[0].set_ylabel(metric.replace("_", " ") + " (seed mean)")
    return list(axes)


def _curve_runs(runs: pd.DataFrame, ax_name: str, color_by: str, metric: str, scale, lr, rate: str):
    """The runs drawn, each with its line's ``_key`` (its LR or its scale), and where they are."""
    if color_by == "lr":
        sel, scale = at_scale(runs, ax_name, scale)
        return at_lr(sel, lr).assign(_key=lambda r: r["lr"].astype(float)), f"at {ax_name}={scale}"
    sel = runs if scale is None else at_scale(runs, ax_name, scale)[0]
    sel = at_lr(sel, lr) if lr is not None else best_lr_runs(sel, metric, ["series", ax_name])
    where = f"at {rate}={lr_text(lr)}" if lr is not None else f"at each {ax_name}'s best {rate}"
    return sel.assign(_key=sel[ax_name]), where


def _curve_colors(keys, color_by: str, rate: str, ax_name: str):
    """Per line key: its colour and label; and the colour norm (by log2 LR; None by scale)."""
    cmap = mpl.colormaps["viridis"]
    if color_by == "lr":
        lo, hi = math.log2(min(keys)), math.log2(max(keys))
        norm = mpl.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
        color = {k: cmap(norm(math.log2(k))) for k in keys}
        return color, {k: f"{rate}={lr_text(k)}" for k in color}, norm
    keys = sorted(keys)
    color = {k: cmap(0.9 * i / max(len(keys) - 1, 1)) for i, k in enumerate(keys)}
    return color, {k: f"{ax_name}={k}" for k in keys}, None


def training_curves(runs: pd.DataFrame, curves: pd.DataFrame, color_by: str = "lr", metric: str = "train_loss",
                    axis: str | None = None, scale=None, lr=None, out=None, style: Style | None = None) -> Figure:
    """Training curves: loss vs step, one panel per series, one seed-mean line per LR or per scale.

    * ``color_by="lr"``: at one scale (``scale``, default the largest), one line per LR (or only
      ``lr``) coloured by log2(lr), labelled ``lr=2^k``, with a colorbar;
    * ``color_by="scale"``: one line per scale (or only ``scale``), labelled ``<axis>=<scale>``,
      each at ``lr`` or, by default, at that scale's best LR (lowest seed-mean final metric).

    A diverged run's line stops where it diverged, a ✕ (gid ``diverged``) at its last logged
    point. ``metric``: ``train_loss`` or ``test_loss`` (where ``eval_every`` logged it).
    """
    out = check_out(out)
    check_curve_metric(metric)
    check_choice("--color-by", color_by, COLOR_BY)
    runs, rate = swept_rate(runs)
    ax_name = resolve_axes(runs, axis)[0]
    sel, where = _curve_runs(runs, ax_name, color_by, metric, scale, lr, rate)
    mean, ends = mean_lines(sel, curves, metric, "_key")
    if mean.empty:
        raise UserError(f"no logged {metric} for the runs {where}")
    color, label, norm = _curve_colors(mean["_key"].unique(), color_by, rate, ax_name)
    fig = Figure(figsize=(1.6 + 3.9 * runs["series"].nunique(), 3.6), layout="constrained")
    axes = step_panels(fig, runs, mean, ends, metric, lambda key: {"lw": 1.4, "color": color[key],
                                                                   "label": label[key]}, style_or_default(style))
    crossed = [] if ends.empty else [Line2D([], [], color="gray", marker="x", mew=2, ls="none",
                                            label="diverged (its last logged step)")]
    if norm is not None:
        bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=mpl.colormaps["viridis"]), ax=axes, shrink=0.9)
        bar.set_label("effective LR" if rate == "elr" else "learning rate")
        bar.ax.yaxis.set_major_formatter(pow2_formatter())
        if crossed:
            axes[-1].legend(handles=crossed, fontsize=8)
    else:
        handles = [Line2D([], [], color=color[k], label=label[k]) for k in color]
        fig.legend(handles=handles + crossed, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"{metric.replace('_', ' ')} vs step {where}")
    return saved(fig, out)


def loss_vs_step(runs: pd.DataFrame, curves: pd.DataFrame, metric: str = "train_loss", axis: str | None = None,
                 scale=None, out=None) -> Figure:
    """``training_curves`` coloured by LR at one scale."""
    return training_curves(runs, curves, color_by="lr", metric=metric, axis=axis, scale=scale, out=out)


@register("curves", "loss_steps", help="loss vs step", options={"color_by": COLOR_BY})
def _curve_figures(r: Request) -> list[Figure]:
    return [training_curves(r.runs, r.curves, color_by=r.color_by, metric=r.metric, axis=r.axis, scale=r.scale,
                            lr=r.lr, style=r.style)]
