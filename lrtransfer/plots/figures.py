"""Figures: loss vs LR per scale and series, the transfer view (optimum and regret vs scale),
training curves, per-atom diagnostics, sphere regimes and the lr x weight decay view.

Figures are plain ``matplotlib.figure.Figure`` objects rendered with the Agg/SVG/PDF canvases:
no pyplot state, no GUI, nothing to close. Numbers come from ``analysis`` (one implementation).

Every curve is a ``Line2D`` labelled ``"<axis>=<scale>"`` (``lr_curves``) or with the series
label (``transfer_plot``); markers and helpers carry labels starting with ``_`` (``_minimum``,
``_diverged``, ``_clipped``, ``_fit``...) so that curves can be counted per panel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, MaxNLocator, NullLocator

from ..analysis.transfer import (CELL_STATS, analyse, cells, group_columns, metric_column, metric_spec, resolve_axes,
                       scale_axes)
from ..choices import COLOR_BY, QUANTITIES
from ..errors import UserError
from ..results.store import atomic_write

FORMATS = (".png", ".svg", ".pdf")
# diverged / clipped markers sit in a strip of the axes beyond the data (axes-fraction y), never on the spine
DIVERGED = {"marker": "x", "ms": 7, "mew": 2, "ls": "none", "zorder": 6}
CLIPPED = {"marker": "^", "ms": 6, "ls": "none", "mfc": "white", "zorder": 6}
MINIMUM = {"marker": "*", "ms": 13, "ls": "none", "mec": "black", "mew": 0.6, "zorder": 5}
DATA_FRACTION = 0.86            # the data fill this fraction of a panel's height; the strip beyond holds the ✕
STRIP = (0.90, 0.97)            # where the ✕ of the scales sit in that strip (axes fraction, best-to-worst end)
BAND_ALPHA = 0.18
# palettes readable on white (every colour at least 3:1 contrast against it, the WCAG level for
# graphics) and in greyscale: scales take viridis up to its teal (luminance ordered, no pale
# yellow) and a marker each; series take the darker tab10 colours and a marker each
SCALE_CMAP_RANGE = (0.0, 0.58)
SERIES_COLORS = tuple(mpl.colormaps["tab10"](i) for i in (0, 3, 2, 4, 5, 7))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")


@dataclass
class Style:
    """How a figure names and scales things: ``labels`` maps series to display names (legends,
    titles); ``logy`` puts the loss/metric axis on a log scale."""
    labels: dict = field(default_factory=dict)
    logy: bool = False

    def name(self, series) -> str:
        return self.labels.get(series, str(series))


def _style(style: Style | None) -> Style:
    return style if style is not None else Style()


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
    """Write ``fig`` to ``out`` (.png/.svg/.pdf) atomically; nothing for None. SVG keeps its text
    as text (``svg.fonttype = 'none'``), editable in a vector editor."""
    if out is None:
        return
    fmt = out.suffix.lower()[1:]

    def write(tmp):
        with mpl.rc_context({"svg.fonttype": "none"}):
            fig.savefig(tmp, format=fmt, dpi=130, bbox_inches="tight")
    atomic_write(out, write)  # atomically: an interrupted save never leaves a truncated figure


def select(runs: pd.DataFrame, series=(), scales=(), axis: str | None = None) -> pd.DataFrame:
    """The runs of the given ``series`` and ``scales`` (of ``axis``, default the varying one);
    empty selections mean all. UserError naming an unknown series (with the nearest) or scale."""
    if series:
        known = list(dict.fromkeys(runs["series"]))
        for s in series:
            if s not in known:
                from ..errors import nearest
                raise UserError(f"--series {s!r}: no such series here{nearest(s, known)}; series: {', '.join(known)}")
        runs = runs[runs["series"].isin(series)]
    if scales:
        ax_name = resolve_axes(runs, axis)[0]
        known = sorted(runs[ax_name].dropna().unique())
        for s in scales:
            if s not in known:
                raise UserError(f"--scales {s}: no runs at {ax_name}={s}; {ax_name}s: {', '.join(f'{k:g}' for k in known)}")
        runs = runs[runs[ax_name].isin(scales)]
    return runs


def _plot_axes(runs: pd.DataFrame, axis: str | None) -> list[str]:
    """``resolve_axes``, refusing an explicitly requested axis along which nothing varies (a
    figure of it would be degenerate)."""
    axes = resolve_axes(runs, axis)
    if axis is not None and runs[axis].nunique() < 2:
        varying = scale_axes(runs)
        raise UserError(f"--axis {axis}: every run has {axis} = {runs[axis].iloc[0]}, nothing varies along it"
                        + (f"; the runs vary {', '.join(varying)}" if varying else ""))
    return axes


def single_scale(runs: pd.DataFrame, axis: str | None = None) -> str | None:
    """``"width=32"`` when the runs have a single scale along ``axis`` (default the varying one;
    no transfer view to draw), else None."""
    ax_name = _plot_axes(runs, axis)[0]
    values = runs[ax_name].dropna().unique()
    return f"{ax_name}={values[0]}" if len(values) == 1 else None


def _pow2_formatter():
    """Tick labels 2^k for an axis whose values are log2 of a rate."""
    return FuncFormatter(lambda v, _pos: f"$2^{{{v:g}}}$")


def _scale_styles(scales) -> dict:
    """Per scale: colour (viridis without its faint end) and marker."""
    cmap = mpl.colormaps["viridis"]
    lo, hi = SCALE_CMAP_RANGE
    return {s: {"color": cmap(lo + (hi - lo) * i / max(len(scales) - 1, 1)), "marker": MARKERS[i % len(MARKERS)]}
            for i, s in enumerate(scales)}


def _series_styles(names) -> dict:
    return {n: {"color": SERIES_COLORS[i % len(SERIES_COLORS)], "marker": MARKERS[i % len(MARKERS)]}
            for i, n in enumerate(names)}


def _frame_y(ax, ylo: float, yhi: float, maximize: bool, logy: bool) -> None:
    """Limits that put the data range [ylo, yhi] in ``DATA_FRACTION`` of the panel, the strip for
    diverged / clipped markers beyond its worse end (the top for a loss, the bottom for a
    maximized metric)."""
    if logy:
        ax.set_yscale("log")
        a, b = math.log(ylo), math.log(yhi)
    else:
        a, b = ylo, yhi
    extra = (b - a) * (1 / DATA_FRACTION - 1)
    a, b = (a - extra, b) if maximize else (a, b + extra)
    ax.set_ylim(*(np.exp([a, b]) if logy else (a, b)))


def _strip_y(i: int, n: int, maximize: bool) -> float:
    """Axes-fraction height of the ✕ of the i-th of n scales (offset so that scales diverging at
    one LR do not overlap), in the strip at the worse end."""
    y = STRIP[0] + (STRIP[1] - STRIP[0]) * (i / (n - 1) if n > 1 else 0.5)
    return 1 - y if maximize else y


def _edge_y(maximize: bool) -> float:
    """Axes-fraction height of the data range's worse edge (where clipped points are drawn)."""
    return 1 - DATA_FRACTION if maximize else DATA_FRACTION


def _clip_to_range(values, ylo: float, yhi: float):
    return np.clip(np.asarray(values, dtype=float), ylo, yhi)


def _positive_range(values, logy: bool, initial: float | None) -> tuple[float, float]:
    """``_robust_range`` of ``values``; with ``logy``, of their logs (UserError if one is ≤ 0)."""
    vals = pd.Series(values, dtype=float)
    vals = vals[np.isfinite(vals)]
    if not logy:
        return _robust_range(vals, initial)
    if (vals <= 0).any():
        raise UserError(f"--logy: the values drawn include {vals.min():g} <= 0; a log axis cannot show them")
    lo, hi = _robust_range(np.log(vals), math.log(initial) if initial else None)
    return math.exp(lo), math.exp(hi)


def _initial_loss(runs: pd.DataFrame, metric: str = "train_loss") -> float | None:
    """The median loss at initialisation (a cap on the y range of a loss); None for a maximized
    metric, where it means nothing."""
    if "first_train_loss" not in runs or metric_spec(metric).maximize:
        return None
    start = pd.to_numeric(runs["first_train_loss"], errors="coerce").astype(float)
    start = start[np.isfinite(start)]
    return float(start.median()) if len(start) else None


def _best_index(values: pd.Series, metric: str):
    """The index of the best value: the minimum of a loss, the maximum of an accuracy."""
    return values.idxmax() if metric_spec(metric).maximize else values.idxmin()


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


def lr_curves(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, out=None,
              style: Style | None = None) -> Figure:
    """Loss vs LR (log2 x-axis, 2^k ticks): one panel per series (order of first appearance; one
    row of panels per value of any other varying key, e.g. depth), one curve per scale (colour
    and marker per scale), shared y.

    ★ marks each curve's best point (the minimum of a loss, the maximum of ``test_acc``). Beyond
    the data's worse end (the top for a loss, the bottom for an accuracy) a strip holds ✕ for an
    LR whose seeds all diverged, each scale at its own height, and △ at its edge for a value
    beyond the robust range. With several seeds the line is the seed mean and the band their
    min–max (the legend says so). When both width and depth vary and ``axis`` is None, the
    curves are drawn across width, one row per depth. ``out``: .png, .svg or .pdf.
    """
    out = check_out(out)
    style = _style(style)
    spec = metric_spec(metric)
    ax_name = _plot_axes(runs, axis)[0]
    c = cells(runs, metric, ax_name)
    extra = [k for k in c.columns if k not in ("series", ax_name, "lr", *CELL_STATS)]
    series = list(dict.fromkeys(c["series"]))
    groups = list(dict.fromkeys(c[extra].itertuples(index=False, name=None))) if extra else [()]
    scales = sorted(c[ax_name].dropna().unique())
    looks = _scale_styles(scales)
    fig = Figure(figsize=(1.9 + 3.9 * len(series), 0.6 + 3.3 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), len(series), sharey=True, sharex=False, squeeze=False)
    ylo, yhi = _positive_range(pd.concat([c["lo"], c["hi"], c["loss"]]), style.logy, _initial_loss(runs, metric))
    banded = clipped = diverged = False
    for gi, gval in enumerate(groups):
        for si, name in enumerate(series):
            ax = axes[gi][si]
            sel = _select(c[c["series"] == name], extra, gval)
            for k, scale in enumerate(scales):
                s = sel[sel[ax_name] == scale].sort_values("lr")
                if s.empty:
                    continue
                look = looks[scale]
                ok = s[s["n_seeds"] > 0]
                ax.plot(ok["lr"], _clip_to_range(ok["loss"], ylo, yhi), "-", ms=3.5, lw=1.6, label=f"{ax_name}={scale}",
                        **look)
                if (ok["n_seeds"] > 1).any():
                    ax.fill_between(ok["lr"], _clip_to_range(ok["lo"], ylo, yhi), _clip_to_range(ok["hi"], ylo, yhi),
                                    color=look["color"], alpha=BAND_ALPHA, linewidth=0, label="_band")
                    banded = True
                beyond = ok[(ok["loss"] > yhi) | (ok["loss"] < ylo)]
                if not beyond.empty:
                    ax.plot(beyond["lr"], [_edge_y(spec.maximize)] * len(beyond), color=look["color"],
                            transform=ax.get_xaxis_transform(), label="_clipped", **CLIPPED)
                    clipped = True
                if not ok.empty:
                    best = ok.loc[_best_index(ok["loss"], metric)]
                    ax.plot([best["lr"]], _clip_to_range([best["loss"]], ylo, yhi), color=look["color"],
                            label="_minimum", **MINIMUM)
                div = s[s["diverged"]]
                if not div.empty:
                    ax.plot(div["lr"], [_strip_y(k, len(scales), spec.maximize)] * len(div), color=look["color"],
                            transform=ax.get_xaxis_transform(), label="_diverged", **DIVERGED)
                    diverged = True
            _lr_axis(ax)
            _frame_y(ax, ylo, yhi, spec.maximize, style.logy)
            ax.set_title(f"{style.name(name)}{_group_label(extra, gval)}")
            ax.grid(alpha=0.3)
            if sel.empty:
                _no_runs(ax)
            if gi == len(groups) - 1:
                ax.set_xlabel("learning rate")
            if si == 0:
                ax.set_ylabel(metric.replace("_", " ") + (" (seed mean)" if banded else ""))
    handles = [Line2D([], [], ms=3.5, label=f"{ax_name}={s}", **looks[s]) for s in scales]
    handles.append(Line2D([], [], color="gray", label="best (★)" if spec.maximize else "minimum (★)", **MINIMUM))
    if banded:
        handles += [Line2D([], [], color="gray", label="line: seed mean"),
                    Patch(color="gray", alpha=BAND_ALPHA * 2, label="band: min–max over seeds")]
    if diverged:
        handles.append(Line2D([], [], color="gray", label="every seed diverged", **DIVERGED))
    if clipped:
        handles.append(Line2D([], [], color="gray", label="beyond the y range", **CLIPPED))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"{metric.replace('_', ' ')} vs learning rate across {ax_name}")
    save(fig, out)
    return fig


def _lr_axis(ax) -> None:
    """A learning-rate axis: log2, ticks 2^k."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(LogFormatterSciNotation(base=2))


def _scale_axis(ax, scales) -> None:
    """log2 x-axis with a tick, written plainly, at each scale that was run."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(scales), [f"{s:g}" for s in scales])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(scales) == 1:
        ax.set_xlim(scales[0] / 2, scales[0] * 2)


def transfer_plot(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, out=None,
                  ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000, seed: int = 0,
                  style: Style | None = None) -> Figure:
    """Two panels per scale axis. Left: the optimal LR vs scale per series on a 2^k axis (solid:
    grid optimum, hollow where it sits at the edge of the LR grid; dotted: parabola fit, with
    bars spanning its bootstrap CI at level ``ci``). Right: the metric at the base-scale LR
    (solid; ✕ in the strip beyond the data where it diverged) and the best value (dashed) vs
    scale; the gap is the regret of transferring the LR. The keys (line meanings, and each
    series with its transfer verdict at ``tolerance`` octaves) sit outside the panels. A colour
    and a marker per series. Needs two or more scales (UserError otherwise). Numbers from
    ``analysis.analyse``; ``out``: .png, .svg or .pdf.
    """
    out = check_out(out)
    style = _style(style)
    spec = metric_spec(metric)
    axes_names = _plot_axes(runs, axis)
    table, verdicts = analyse(runs, metric, axis, ci=ci, tolerance=tolerance, n_boot=n_boot, seed=seed)
    for ax_name in axes_names:
        n = table.loc[table["axis"] == ax_name, "scale"].nunique()
        if n < 2:
            raise UserError(f"the transfer view needs two or more {ax_name}s; the runs have {n} "
                            f"(draw more with --scales, or sweep another {ax_name})")
    fig = Figure(figsize=(12, 0.6 + 3.6 * len(axes_names)), layout="constrained")
    panels = fig.subplots(len(axes_names), 2, squeeze=False)
    handles = {}
    for row, ax_name in enumerate(axes_names):
        t = table[table["axis"] == ax_name]
        keys = [k for k in group_columns(t) if t[k].notna().any()]
        left, right = panels[row]
        ylo, top = _positive_range(pd.concat([t["loss_at_base_lr"], t["best_loss"]]), style.logy,
                                   _initial_loss(runs, metric))
        v = verdicts[verdicts["axis"] == ax_name]
        groups = list(t.groupby(["series", *keys], sort=False, dropna=False))
        looks = _series_styles([g for g, _ in groups])
        for gkey, g in groups:
            look = looks[gkey]
            gkey = gkey if isinstance(gkey, tuple) else (gkey,)
            label = f"{style.name(gkey[0])}{_group_label(keys, gkey[1:])}"
            g = g.sort_values("scale")
            left.plot(g["scale"], g["opt_log2_lr"], "-", label=str(gkey[0]) + _group_label(keys, gkey[1:]), **look)
            word = _select(v[v["series"] == gkey[0]], keys, gkey[1:])["verdict"].iloc[0]
            handles.setdefault(f"{label}: {word}", Line2D([], [], **look))
            edge = g[g["edge"]]
            if not edge.empty:
                left.plot(edge["scale"], edge["opt_log2_lr"], ls="none", color=look["color"], marker=look["marker"],
                          mfc="white", ms=8, zorder=5, label="_edge")
            left.plot(g["scale"], g["opt_log2_lr_fit"], ":", color=look["color"], label="_fit")
            lo, hi = g["opt_log2_lr_fit_lo"].astype(float), g["opt_log2_lr_fit_hi"].astype(float)
            # drawn about the CI's middle: a percentile CI need not contain the point estimate
            left.errorbar(g["scale"], (lo + hi) / 2, yerr=(hi - lo) / 2, fmt="none", ecolor=look["color"],
                          elinewidth=1.2, capsize=3, label="_ci")
            right.plot(g["scale"], _clip_to_range(g["loss_at_base_lr"], ylo, top), "-",
                       label=f"{gkey[0]} @ base LR", **look)
            right.plot(g["scale"], _clip_to_range(g["best_loss"], ylo, top), "--", color=look["color"], alpha=0.75,
                       label=f"{gkey[0]} best")
            div = g[g["base_lr_diverged"]]
            if not div.empty:
                right.plot(div["scale"], [_strip_y(0, 1, spec.maximize)] * len(div), color=look["color"],
                           transform=right.get_xaxis_transform(), label="_diverged", **DIVERGED)
        scales = sorted(t["scale"].dropna().unique())
        for ax in (left, right):
            _scale_axis(ax, scales)
            ax.set_xlabel(ax_name)
            ax.grid(alpha=0.3)
        _frame_y(right, ylo, top, spec.maximize, style.logy)
        left.yaxis.set_major_locator(MaxNLocator(integer=True))
        left.yaxis.set_major_formatter(_pow2_formatter())
        y0, y1 = left.get_ylim()
        if y1 - y0 < 2:  # at least two octaves tall, so the ticks read as octaves
            mid = (y0 + y1) / 2
            left.set_ylim(mid - 1, mid + 1)
        left.set_ylabel("optimal learning rate")
        left.set_title(f"optimal LR vs {ax_name}", fontsize=10)
        right.set_ylabel(metric.replace("_", " "))
        right.set_title(f"{metric.replace('_', ' ')} at the base-{ax_name} LR vs the best", fontsize=10)
    key = [Line2D([], [], color="gray", marker="o", label="optimum on the LR grid"),
           Line2D([], [], color="gray", marker="o", mfc="white", ls="none", label="… at the grid's edge"),
           Line2D([], [], color="gray", ls=":", label="parabola fit"),
           Line2D([], [], color="gray", marker="|", ms=10, ls="none", label=f"{ci * 100:g}% CI of the fit"),
           Line2D([], [], color="gray", label="at the base-scale LR (right)"),
           Line2D([], [], color="gray", ls="--", label="best at that scale (right)")]
    if any(h.get_label() == "_diverged" for ax in panels.flat for h in ax.get_lines()):
        key.append(Line2D([], [], color="gray", label="base LR diverged (right)", **DIVERGED))
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8, frameon=False,
               title=f"verdict (±{tolerance:g} octave{'' if tolerance == 1 else 's'}, {ci * 100:g}% CI)",
               title_fontsize=8)
    fig.legend(handles=key, loc="outside right lower", fontsize=8, frameon=False)
    fig.suptitle(f"LR transfer across {' and '.join(axes_names)}: {metric.replace('_', ' ')}")
    save(fig, out)
    return fig


# ----------------------------------------------------------------------------- training curves

CURVE_METRICS = ("train_loss", "test_loss")
# what to turn on when a quantity has no finite values
QUANTITY_HINTS = {"condition": "set `log_condition = true` in [train] and sweep again",
                  "elr": "it exists only for scale-invariant weights: train with `constraint = \"sphere\"` "
                         "or a post-norm model"}
REGIME_COLORS = {"converge": "tab:blue", "chaotic": "tab:orange", "diverge": "tab:red"}
DIVERGED_END = {"marker": "x", "s": 64, "linewidths": 2, "zorder": 6, "clip_on": False}


def _swept_rate(runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The runs with the rate the experiment sweeps in the ``lr`` column, and its name: the
    effective LR where runs set one (sphere experiments hold ``lr`` fixed and sweep ``elr``),
    else the LR itself."""
    if "elr" in runs:
        elr = pd.to_numeric(runs["elr"], errors="coerce").fillna(0.0)
        if (elr > 0).all() and elr.nunique() > 1:
            return runs.assign(lr=elr), "elr"
    return runs, "lr"


def _lr_text(lr: float) -> str:
    return f"2^{math.log2(lr):g}"


def _check_curve_metric(metric: str) -> None:
    if metric not in CURVE_METRICS:
        raise UserError(f"--metric {metric}: loss curves are train_loss or test_loss")


def _at_scale(runs: pd.DataFrame, ax_name: str, scale) -> tuple[pd.DataFrame, object]:
    """The runs at ``scale`` of ``ax_name`` (default the largest), checked; and the scale."""
    scales = sorted(runs[ax_name].dropna().unique())
    if scale is None:
        scale = scales[-1]
    elif scale not in scales:
        raise UserError(f"--scale {scale}: no runs at {ax_name}={scale}; {ax_name}s: "
                        f"{', '.join(str(s) for s in scales)}")
    return runs[runs[ax_name] == scale], scale


def _at_lr(runs: pd.DataFrame, lr) -> pd.DataFrame:
    """The runs at learning rate ``lr`` (None: all), matched to 1e-9 relative (grids are 2^k floats)."""
    if lr is None:
        return runs
    hit = runs[np.isclose(runs["lr"].astype(float), float(lr), rtol=1e-9, atol=0)]
    if hit.empty:
        lrs = sorted(runs["lr"].dropna().unique())
        raise UserError(f"--lr {lr:g}: no runs at that learning rate here; lrs: "
                        f"{', '.join(f'{v:g}' for v in lrs)}")
    return hit


def _best_lr_runs(runs: pd.DataFrame, metric: str, keys: list[str]) -> pd.DataFrame:
    """Per ``keys`` group, the runs at the LR with the lowest seed-mean final metric among the
    finished runs (groups where none finished are left out)."""
    col = metric_column(metric, runs)
    done = runs[(runs["status"] == "done") & np.isfinite(pd.to_numeric(runs[col], errors="coerce").astype(float))]
    if done.empty:
        return done
    means = done.groupby([*keys, "lr"], sort=False)[col].mean().reset_index()
    best = means.loc[means.groupby(keys, sort=False)[col].idxmin(), [*keys, "lr"]]
    return runs.merge(best, on=[*keys, "lr"])


def _mean_lines(sel: pd.DataFrame, curves: pd.DataFrame, metric: str, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seed-mean curves per (series, ``key``) of the runs in ``sel``, and where each diverged run's
    curve ends (series, key, step, and the seed-mean value there, so the ✕ sits on its line)."""
    c = curves.drop(columns=["lr"], errors="ignore").merge(sel[["run_id", "series", key, "status"]], on="run_id")
    c = c[np.isfinite(c[metric].to_numpy(float))]
    mean = c.groupby(["series", key, "step"], sort=True)[metric].mean().reset_index()
    last = c[c["status"] == "diverged"].sort_values("step").groupby("run_id", sort=False).tail(1)
    ends = last[["series", key, "step"]].drop_duplicates().merge(mean, on=["series", key, "step"])
    return mean, ends


def _no_runs(ax) -> None:
    ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="gray")


def _step_lines(axes, series, mean: pd.DataFrame, ends: pd.DataFrame, metric: str, ylim, line_style,
                look: Style) -> None:
    """Loss-vs-step panels, one per series: a seed-mean line per ``_key`` of ``mean`` drawn with
    ``line_style(key)`` (plot keywords, colour and label included), a ✕ at the last logged point of
    a line whose runs diverged (``ends``), values above the y range drawn at its top."""
    ylo, yhi = ylim
    for ax, name in zip(axes, series):
        s = mean[mean["series"] == name]
        for key, line in s.groupby("_key", sort=True):
            kw = line_style(key)
            ax.plot(line["step"], np.minimum(line[metric], yhi), **kw)
            end = ends[(ends["series"] == name) & (ends["_key"] == key)]
            if not end.empty:
                ax.scatter(end["step"], np.minimum(end[metric], yhi), color=kw["color"], label="_diverged",
                           **DIVERGED_END)
        ax.set_title(look.name(name))
        if look.logy:
            ax.set_yscale("log")
        ax.set_ylim(ylo, yhi)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if s.empty:
            _no_runs(ax)
    axes[0].set_ylabel(metric.replace("_", " ") + " (seed mean)")


def training_curves(runs: pd.DataFrame, curves: pd.DataFrame, color_by: str = "lr", metric: str = "train_loss",
                    axis: str | None = None, scale=None, lr=None, out=None, style: Style | None = None) -> Figure:
    """Training curves: loss vs step, one panel per series, one seed-mean line per LR or per scale.

    * ``color_by="lr"``: at one scale (``scale``, default the largest), one line per LR (or only
      ``lr``) coloured by log2(lr), labelled ``lr=2^k``, with a colorbar;
    * ``color_by="scale"``: one line per scale (or only ``scale``), labelled ``<axis>=<scale>``,
      each at ``lr`` or, by default, at that scale's best LR (lowest seed-mean final metric).

    A run that diverged stops where it diverged; a ✕ (a scatter labelled ``_diverged``) marks
    its last logged point on its line. ``metric``: ``train_loss`` or ``test_loss`` (the latter
    only where ``eval_every`` logged it).
    """
    out = check_out(out)
    _check_curve_metric(metric)
    if color_by not in COLOR_BY:
        raise UserError(f"--color-by {color_by!r}: allowed: {', '.join(COLOR_BY)}")
    runs, rate = _swept_rate(runs)
    ax_name = resolve_axes(runs, axis)[0]
    series = list(dict.fromkeys(runs["series"]))
    if color_by == "lr":
        sel, scale = _at_scale(runs, ax_name, scale)
        sel = _at_lr(sel, lr).assign(_key=lambda r: r["lr"].astype(float))
        where = f"at {ax_name}={scale}"
    else:
        sel = runs if scale is None else _at_scale(runs, ax_name, scale)[0]
        sel = _at_lr(sel, lr) if lr is not None else _best_lr_runs(sel, metric, ["series", ax_name])
        sel = sel.assign(_key=sel[ax_name])
        where = f"at {rate}={_lr_text(lr)}" if lr is not None else f"at each {ax_name}'s best {rate}"
    mean, ends = _mean_lines(sel, curves, metric, "_key")
    if mean.empty:
        raise UserError(f"no logged {metric} for the runs {where}")
    cmap = mpl.colormaps["viridis"]
    if color_by == "lr":
        lo, hi = math.log2(mean["_key"].min()), math.log2(mean["_key"].max())
        norm = mpl.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
        color = {k: cmap(norm(math.log2(k))) for k in mean["_key"].unique()}
        label = {k: f"{rate}={_lr_text(k)}" for k in color}
    else:
        keys = sorted(mean["_key"].unique())
        color = {k: cmap(0.9 * i / max(len(keys) - 1, 1)) for i, k in enumerate(keys)}
        label = {k: f"{ax_name}={k}" for k in keys}
    fig = Figure(figsize=(1.6 + 3.9 * len(series), 3.6), layout="constrained")
    axes = fig.subplots(1, len(series), sharey=True, squeeze=False)[0]
    _step_lines(axes, series, mean, ends, metric, _positive_range(mean[metric], _style(style).logy,
                                                                  _initial_loss(runs)),
                lambda key: {"lw": 1.4, "color": color[key], "label": label[key]}, _style(style))
    crossed = [] if ends.empty else [Line2D([], [], color="gray", marker="x", mew=2, ls="none",
                                            label="diverged (its last logged step)")]
    if color_by == "lr":
        bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.9)
        bar.set_label("effective LR" if rate == "elr" else "learning rate")
        bar.ax.yaxis.set_major_formatter(_pow2_formatter())
        if crossed:
            axes[-1].legend(handles=crossed, fontsize=8)
    else:
        handles = [Line2D([], [], color=color[k], label=label[k]) for k in color]
        fig.legend(handles=handles + crossed, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"{metric.replace('_', ' ')} vs step {where}")
    save(fig, out)
    return fig


def loss_vs_step(runs: pd.DataFrame, curves: pd.DataFrame, metric: str = "train_loss", axis: str | None = None,
                 scale=None, out=None) -> Figure:
    """``training_curves`` coloured by LR at one scale (what ``plot --steps`` draws)."""
    return training_curves(runs, curves, color_by="lr", metric=metric, axis=axis, scale=scale, out=out)


def curves_by_lrwd(runs: pd.DataFrame, curves: pd.DataFrame, metric: str = "train_loss", axis: str | None = None,
                   scale=None, out=None, style: Style | None = None) -> Figure:
    """Loss vs step, one panel per series at one scale (default the largest), one seed-mean line
    per (lr, weight_decay) cell with wd > 0, coloured by log2(lr·wd) (colorbar) with a line style
    per lr, labelled ``lr=2^a, wd=2^b``: under the lr·wd invariance lines of one colour meet late
    in training while lines of one style part. ✕ marks where a diverged run's curve ends."""
    out = check_out(out)
    _check_curve_metric(metric)
    if "weight_decay" not in runs:
        raise UserError("the runs table has no weight_decay column: nothing to colour by lr·wd")
    ax_name = resolve_axes(runs, axis)[0]
    sel, scale = _at_scale(runs, ax_name, scale)
    wd = pd.to_numeric(sel["weight_decay"], errors="coerce").astype(float)
    sel = sel[wd > 0].assign(_key=lambda r: list(zip(r["lr"].astype(float), r["weight_decay"].astype(float))))
    if sel.empty:
        raise UserError(f"no runs with weight_decay > 0 at {ax_name}={scale}: lr·wd is 0 everywhere")
    mean, ends = _mean_lines(sel, curves, metric, "_key")
    if mean.empty:
        raise UserError(f"no logged {metric} at {ax_name}={scale}")
    products = {k: math.log2(k[0] * k[1]) for k in mean["_key"].unique()}
    lo, hi = min(products.values()), max(products.values())
    cmap, norm = mpl.colormaps["plasma"], mpl.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
    styles = ["-", "--", ":", "-."]
    lr_style = {v: styles[i % len(styles)] for i, v in enumerate(sorted({k[0] for k in products}))}
    series = list(dict.fromkeys(runs["series"]))
    fig = Figure(figsize=(1.6 + 3.9 * len(series), 3.6), layout="constrained")
    axes = fig.subplots(1, len(series), sharey=True, squeeze=False)[0]
    _step_lines(axes, series, mean, ends, metric, _positive_range(mean[metric], _style(style).logy,
                                                                  _initial_loss(runs)),
                lambda key: {"lw": 1.3, "color": cmap(norm(products[key])), "ls": lr_style[key[0]],
                             "label": f"lr={_lr_text(key[0])}, wd={_lr_text(key[1])}"}, _style(style))
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.9)
    bar.set_label("lr · weight decay")
    bar.ax.yaxis.set_major_formatter(_pow2_formatter())
    handles = [Line2D([], [], color="gray", ls=st, label=f"lr={_lr_text(v)}") for v, st in lr_style.items()]
    axes[-1].legend(handles=handles, fontsize=7, title="line style", title_fontsize=7)
    fig.suptitle(f"{metric.replace('_', ' ')} vs step by lr·wd at {ax_name}={scale}")
    save(fig, out)
    return fig


# ----------------------------------------------------------------------------- dynamics

def _panel_groups(runs: pd.DataFrame) -> tuple[list[str], list, list[str]]:
    """Series (columns), the values of varying width/depth (rows) and their names."""
    from ..analysis.dynamics import _scale_keys
    keys = _scale_keys(runs)
    groups = list(dict.fromkeys(runs[keys].itertuples(index=False, name=None))) if keys else [()]
    return list(dict.fromkeys(runs["series"])), groups, keys


def regime_plot(runs: pd.DataFrame, regimes: pd.DataFrame, x: str = "elr", metric: str = "train_loss",
                boundaries: pd.DataFrame | None = None, out=None, style: Style | None = None) -> Figure:
    """Final loss against ``x`` (log2 axis; ``elr`` by default) per run, coloured by its regime
    (a scatter per regime labelled ``converge`` / ``chaotic`` / ``diverge``, fixed colours
    ``REGIME_COLORS``), the seed mean (line ``seed mean``), the chance loss (dotted, ``_chance``)
    and the regime boundaries of ``dynamics.regime_boundaries`` (dashed ``_to_chaotic`` /
    ``_to_diverge`` at the seeds' mean log2, a span ``_to_*_spread`` over their min–max). Runs
    with no final loss (diverged) are ✕ in a strip above the data (``_diverged``). One panel per series
    (a row per width/depth where those vary)."""
    from ..analysis import dynamics
    out = check_out(out)
    col = metric_column(metric, runs)
    full = dynamics.with_dynamics_columns(runs)
    full = full.assign(_x=dynamics.x_values(full, x)).merge(regimes[["run_id", "regime"]], on="run_id")
    full = full[full["_x"] > 0]
    if full.empty:
        raise UserError(f"no run with both a regime and a positive {x}")
    if boundaries is None:
        boundaries = dynamics.regime_boundaries(runs, regimes, x)
    full["_y"] = pd.to_numeric(full[col], errors="coerce").astype(float)
    series, groups, keys = _panel_groups(full)
    chance = full["chance_loss"][np.isfinite(full["chance_loss"])]
    ylo, yhi = _robust_range(pd.concat([full["_y"], chance]), _initial_loss(runs))
    if len(chance):
        yhi = max(yhi, float(chance.max()) * 1.05)
    fig = Figure(figsize=(1.6 + 4.2 * len(series), 0.6 + 3.4 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), len(series), sharey=True, squeeze=False)
    for gi, gval in enumerate(groups):
        for si, name in enumerate(series):
            ax = axes[gi][si]
            sel = _select(full[full["series"] == name], keys, gval)
            for regime, color in REGIME_COLORS.items():
                pts = sel[sel["regime"] == regime]
                ok = pts[np.isfinite(pts["_y"])]
                if not ok.empty:
                    ax.scatter(ok["_x"], np.minimum(ok["_y"], yhi), color=color, s=20, zorder=4, label=regime)
                gone = pts[~np.isfinite(pts["_y"])]
                if not gone.empty:   # in the strip beyond the data (axes-fraction y), not on the spine
                    ax.scatter(gone["_x"], [_strip_y(0, 1, False)] * len(gone), color=color, label="_diverged",
                               transform=ax.get_xaxis_transform(), **{**DIVERGED_END, "clip_on": True})
            mean = sel[np.isfinite(sel["_y"])].groupby("_x")["_y"].mean()
            if len(mean):
                ax.plot(mean.index, np.minimum(mean.to_numpy(), yhi), "-", color="gray", lw=1.2, zorder=3,
                        label="seed mean")
            c = sel["chance_loss"][np.isfinite(sel["chance_loss"])]
            if len(c):
                ax.axhline(float(c.median()), color="black", ls=":", lw=1, label="_chance")
            b = _select(boundaries[boundaries["series"] == name], keys, gval)
            for bname, color in (("to_chaotic", REGIME_COLORS["chaotic"]), ("to_diverge", REGIME_COLORS["diverge"])):
                if b.empty or not b[f"{bname}_n"].iloc[0]:
                    continue
                row = b.iloc[0]
                ax.axvline(2.0 ** row[f"{bname}_log2"], color=color, ls="--", lw=1.2, label=f"_{bname}")
                if row[f"{bname}_log2_max"] > row[f"{bname}_log2_min"]:
                    ax.axvspan(2.0 ** row[f"{bname}_log2_min"], 2.0 ** row[f"{bname}_log2_max"], color=color,
                               alpha=0.12, lw=0, label=f"_{bname}_spread")
            ax.set_xscale("log", base=2)
            _frame_y(ax, ylo, yhi, False, False)
            ax.set_title(f"{_style(style).name(name)}{_group_label(keys, gval)}")
            ax.grid(alpha=0.3)
            if sel.empty:
                _no_runs(ax)
            if gi == len(groups) - 1:
                ax.set_xlabel("effective LR (lr / ‖w‖²)" if x == "elr" else x.replace("_", " "))
            if si == 0:
                ax.set_ylabel(f"final {metric.replace('_', ' ')}")
    handles = [Line2D([], [], color=c, marker="o", ls="none", label=r) for r, c in REGIME_COLORS.items()]
    handles += [Line2D([], [], color="gray", label="seed mean"),
                Line2D([], [], color="black", ls=":", label="chance loss"),
                Line2D([], [], color="gray", ls="--", label="boundary (seed mean; band: min–max)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"regimes: final {metric.replace('_', ' ')} vs {x}")
    save(fig, out)
    return fig


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (half a step beyond the ends; one centre: ±0.5)."""
    if len(centers) == 1:
        return np.array([centers[0] - 0.5, centers[0] + 0.5])
    mid = (centers[1:] + centers[:-1]) / 2
    return np.concatenate([[centers[0] - (mid[0] - centers[0])], mid, [centers[-1] + (centers[-1] - mid[-1])]])


def lrwd_heatmap(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, scale=None,
                 out=None, style: Style | None = None) -> Figure:
    """Seed-mean final loss over (log2 lr, log2 weight_decay) as a heatmap (one QuadMesh per
    panel, one colour scale), one panel per series at one scale (default the largest): ✕ marks
    cells whose seeds all diverged (``_diverged``), dashed diagonals (``_product``) join the
    cells of equal lr·wd, each labelled ``lr·wd=2^k`` at its top end. Cells with wd = 0 have
    no place on the log axis and are left out."""
    out = check_out(out)
    col = metric_column(metric, runs)
    if "weight_decay" not in runs:
        raise UserError("the runs table has no weight_decay column: no lr x weight_decay grid to draw")
    ax_name = resolve_axes(runs, axis)[0]
    sel, scale = _at_scale(runs, ax_name, scale)
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
    xs, ys = np.sort(cells["x"].unique()), np.sort(cells["y"].unique())
    xe, ye = _edges(xs), _edges(ys)
    lo, hi = _robust_range(cells["loss"], _initial_loss(runs))
    norm = mpl.colors.Normalize(vmin=float(cells["loss"].min()) if cells["loss"].notna().any() else 0, vmax=hi)
    cmap = mpl.colormaps["viridis"]
    series = list(dict.fromkeys(sel["series"]))
    fig = Figure(figsize=(1.8 + 4.0 * len(series), 3.8), layout="constrained")
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    for ax, name in zip(axes, series):
        c = cells[cells["series"] == name]
        grid = np.full((len(ys), len(xs)), np.nan)
        for r in c.itertuples():
            # the true loss: a value above the robust range saturates in the colormap, it is not altered
            grid[np.searchsorted(ys, r.y), np.searchsorted(xs, r.x)] = r.loss if r.n_ok else np.nan
        ax.pcolormesh(xe, ye, np.ma.masked_invalid(grid), cmap=cmap, norm=norm, label="_loss")
        div = c[(c["n_ok"] == 0) & (c["n_div"] > 0)]
        if not div.empty:
            ax.plot(div["x"], div["y"], color="red", label="_diverged", **DIVERGED)
        for p, g in c.groupby("p", sort=True):
            if len(g) < 2:
                continue
            x0, x1 = g["x"].min(), g["x"].max()
            ax.plot([x0, x1], [p - x0, p - x1], color="white", ls="--", lw=0.9, label="_product")
            ax.text(x0, p - x0, f"lr·wd=2^{p:g}", fontsize=6, color="white", ha="left", va="bottom",
                    rotation=-35, rotation_mode="anchor")
        ax.set_xlim(xe[0], xe[-1])
        ax.set_ylim(ye[0], ye[-1])
        ax.set_xticks(xs)
        ax.set_yticks(ys)
        ax.set_xlabel("learning rate")
        ax.set_title(_style(style).name(name))
        ax.xaxis.set_major_formatter(_pow2_formatter())
        ax.yaxis.set_major_formatter(_pow2_formatter())
    axes[0].set_ylabel("weight decay")
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.9)
    bar.set_label(f"final {metric.replace('_', ' ')} (seed mean)")
    fig.suptitle(f"final {metric.replace('_', ' ')} over lr x weight decay at {ax_name}={scale} "
                 f"(dashed: equal lr·wd; ✕ diverged)")
    save(fig, out)
    return fig


def diagnostics_plot(runs: pd.DataFrame, diagnostics: pd.DataFrame, quantity: str = "relative_update",
                     axis: str | None = None, scale=None, lr=None, out=None, style: Style | None = None) -> Figure:
    """Per-atom ``quantity`` (``QUANTITIES``) against step: one panel per series, one seed-mean
    line per atom labelled with the atom's name (atom −1, all scale-invariant weights together,
    black and dashed), for the runs at one scale (default the largest) and one LR (``lr``, or
    per series its best: lowest seed-mean final train loss). Log y-axis when every value is
    positive."""
    out = check_out(out)
    if quantity not in QUANTITIES:
        raise UserError(f"--quantity {quantity!r}: allowed: {', '.join(QUANTITIES)}")
    if diagnostics is None or diagnostics.empty:
        raise UserError("no diagnostics recorded for these runs (committed reference results keep them only for "
                        "the sphere and conditioning experiments); sweep with diagnostics = true to record them")
    runs, rate = _swept_rate(runs)
    ax_name = resolve_axes(runs, axis)[0]
    sel, scale = _at_scale(runs, ax_name, scale)
    sel = _at_lr(sel, lr) if lr is not None else _best_lr_runs(sel, "train_loss", ["series"])
    d = pd.DataFrame()
    if quantity in diagnostics:
        d = diagnostics.merge(sel[["run_id", "series", "lr"]], on="run_id")
        d = d[np.isfinite(pd.to_numeric(d[quantity], errors="coerce").astype(float))]
    if d.empty:
        hint = QUANTITY_HINTS.get(quantity, "the runs recorded none")
        raise UserError(f"--quantity {quantity}: no finite values at {ax_name}={scale}; {hint}")
    d = d.assign(**{quantity: d[quantity].astype(float)})
    mean = d.groupby(["series", "lr", "atom", "name", "step"], sort=True)[quantity].mean().reset_index()
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
        ax.set_title(_style(style).name(name) + (f" ({rate}={_lr_text(lrs[0])})" if len(lrs) == 1 else ""))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if s.empty:
            _no_runs(ax)
    if (mean[quantity] > 0).all():
        for ax in axes:
            ax.set_yscale("log")
    axes[0].set_ylabel(QUANTITIES[quantity] + " (seed mean)")
    labels = dict.fromkeys(h.get_label() for ax in axes for h in ax.get_lines())
    handles = [next(h for ax in axes for h in ax.get_lines() if h.get_label() == lab) for lab in labels]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False)
    fig.suptitle(f"{quantity.replace('_', ' ')} per atom vs step at {ax_name}={scale}")
    save(fig, out)
    return fig


DIR_STYLES = ("-", "--", ":", "-.")


def compare_curves(runs_by_dir: dict[str, pd.DataFrame], metric: str = "train_loss", axis: str | None = None,
                   out=None, style: Style | None = None) -> Figure:
    """Several results directories' loss-vs-LR curves overlaid (``lrtransfer compare``): one
    panel per series, colour = scale (as ``lr_curves``), line style = directory, ★ at each
    curve's minimum. A series missing from a directory is just not drawn there."""
    out = check_out(out)
    metric_column(metric)
    first = next(iter(runs_by_dir.values()))
    ax_name = _plot_axes(first, axis)[0]
    tables = {label: cells(runs, metric, ax_name) for label, runs in runs_by_dir.items()}
    series = list(dict.fromkeys(s for c in tables.values() for s in c["series"]))
    scales = sorted({x for c in tables.values() for x in c[ax_name].dropna().unique()})
    looks = _scale_styles(scales)
    colors = {s: look["color"] for s, look in looks.items()}
    styles = {label: DIR_STYLES[i % len(DIR_STYLES)] for i, label in enumerate(tables)}
    everything = pd.concat([c["loss"] for c in tables.values()])
    ylo, yhi = _positive_range(everything, _style(style).logy, _initial_loss(first, metric))
    fig = Figure(figsize=(1.8 + 3.9 * len(series), 3.9), layout="constrained")
    axes = fig.subplots(1, len(series), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, series):
        for label, c in tables.items():
            sel = c[(c["series"] == name) & (c["n_seeds"] > 0)]
            for scale in scales:
                s = sel[sel[ax_name] == scale].sort_values("lr")
                if s.empty:
                    continue
                ax.plot(s["lr"], np.minimum(s["loss"].to_numpy(float), yhi), ls=styles[label], marker="o", ms=2.5,
                        lw=1.5, color=colors[scale], label=f"{label}: {ax_name}={scale}")
                best = s.loc[_best_index(s["loss"], metric)]
                ax.plot([best["lr"]], [min(best["loss"], yhi)], color=colors[scale], label="_minimum", **MINIMUM)
        _lr_axis(ax)
        if _style(style).logy:
            ax.set_yscale("log")
        ax.set_ylim(ylo, yhi)
        ax.set_title(_style(style).name(name))
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric.replace("_", " ") + " (seed mean)")
    handles = [Line2D([], [], color=colors[s], label=f"{ax_name}={s}") for s in scales]
    handles += [Line2D([], [], color="black", ls=styles[label], label=label) for label in tables]
    handles.append(Line2D([], [], color="gray", label="minimum", **{**MINIMUM, "clip_on": True}))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"{metric.replace('_', ' ')} vs learning rate: {' vs '.join(tables)}")
    save(fig, out)
    return fig
