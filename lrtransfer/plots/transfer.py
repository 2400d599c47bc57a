"""Loss vs LR per scale and series, and the transfer view (optimal LR and regret vs scale).

Every curve is a ``Line2D`` labelled ``"<axis>=<scale>"`` (``lr_curves``) or with the series
(``transfer_plot``); markers, bands and fits have a ``gid`` (``minimum``, ``diverged``,
``clipped``, ``band``, ``edge``, ``fit``, ``ci``) and a label kept out of legends.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..analysis.transfer import CELL_STATS, analyse, cells, group_columns, metric_spec, predict
from ..errors import UserError
from .kinds import Request, register
from .runs import best_index, group_label, in_group, initial_loss, plot_axes, single_scale
from .style import (BAND_ALPHA, CLIPPED, DIVERGED, MINIMUM, Style, axis_label, check_out, clip_to_range, edge_y,
                    frame_y, lr_axis, mark, no_runs, positive_range, pow2_formatter, saved, scale_axis, scale_styles,
                    series_styles, strip_y, style_or_default)


def _lr_curve(ax, s: pd.DataFrame, k: int, n: int, look: dict, ylim, metric: str) -> set[str]:
    """One scale's loss-vs-LR line in a panel, with its band, clipped / best / diverged marks;
    the kinds of marks it drew."""
    ylo, yhi = ylim
    maximize = metric_spec(metric).maximize
    drawn = set()
    ok = s[s["n_seeds"] > 0]
    ax.plot(ok["lr"], clip_to_range(ok["loss"], ylo, yhi), "-", ms=3.5, lw=1.6, label=look["label"],
            color=look["color"], marker=look["marker"])
    if (ok["n_seeds"] > 1).any():
        ax.fill_between(ok["lr"], clip_to_range(ok["lo"], ylo, yhi), clip_to_range(ok["hi"], ylo, yhi),
                        color=look["color"], alpha=BAND_ALPHA, linewidth=0, **mark("band"))
        drawn.add("band")
    beyond = ok[(ok["loss"] > yhi) | (ok["loss"] < ylo)]
    if not beyond.empty:
        ax.plot(beyond["lr"], [edge_y(maximize)] * len(beyond), color=look["color"],
                transform=ax.get_xaxis_transform(), **mark("clipped"), **CLIPPED)
        drawn.add("clipped")
    if not ok.empty:
        best = ok.loc[best_index(ok["loss"], metric)]
        ax.plot([best["lr"]], clip_to_range([best["loss"]], ylo, yhi), color=look["color"],
                **mark("minimum"), **MINIMUM)
    div = s[s["diverged"]]
    if not div.empty:
        ax.plot(div["lr"], [strip_y(k, n, maximize)] * len(div), color=look["color"],
                transform=ax.get_xaxis_transform(), **mark("diverged"), **DIVERGED)
        drawn.add("diverged")
    return drawn


def _lr_key(ax_name: str, scales, looks: dict, maximize: bool, drawn: set[str]) -> list:
    """The legend of ``lr_curves``: the scales, then the meaning of each kind of mark drawn."""
    handles = [Line2D([], [], ms=3.5, label=f"{ax_name}={s}", color=looks[s]["color"], marker=looks[s]["marker"])
               for s in scales]
    handles.append(Line2D([], [], color="gray", label="best (★)" if maximize else "minimum (★)", **MINIMUM))
    if "band" in drawn:
        handles += [Line2D([], [], color="gray", label="line: seed mean"),
                    Patch(color="gray", alpha=BAND_ALPHA * 2, label="band: min–max over seeds")]
    if "diverged" in drawn:
        handles.append(Line2D([], [], color="gray", label="every seed diverged", **DIVERGED))
    if "clipped" in drawn:
        handles.append(Line2D([], [], color="gray", label="beyond the y range", **CLIPPED))
    return handles


def lr_curves(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, out=None,
              style: Style | None = None) -> Figure:
    """Loss vs LR (log2 x-axis, 2^k ticks): one panel per series (order of first appearance; one
    row of panels per value of any other varying key, e.g. depth), one curve per scale (colour
    and marker per scale), shared y.

    ★ marks each curve's best point (the minimum of a loss, the maximum of ``test_acc``). Beyond
    the data's worse end a strip holds ✕ for an LR whose seeds all diverged, each scale at its
    own height, and △ at its edge for a value beyond the robust range. With several seeds the
    line is the seed mean and the band their min–max. ``out``: .png, .svg or .pdf.
    """
    out = check_out(out)
    style = style_or_default(style)
    spec = metric_spec(metric)
    ax_name = plot_axes(runs, axis)[0]
    c = cells(runs, metric, ax_name)
    extra = [k for k in c.columns if k not in ("series", ax_name, "lr", *CELL_STATS)]
    series = list(dict.fromkeys(c["series"]))
    groups = list(dict.fromkeys(c[extra].itertuples(index=False, name=None))) if extra else [()]
    scales = sorted(c[ax_name].dropna().unique())
    looks = {s: {**look, "label": f"{ax_name}={s}"} for s, look in scale_styles(scales).items()}
    fig = Figure(figsize=(1.9 + 3.9 * len(series), 0.6 + 3.3 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), len(series), sharey=True, sharex=False, squeeze=False)
    ylim = positive_range(pd.concat([c["lo"], c["hi"], c["loss"]]), style.logy, initial_loss(runs, metric))
    drawn: set[str] = set()
    for gi, gval in enumerate(groups):
        for si, name in enumerate(series):
            ax = axes[gi][si]
            sel = in_group(c[c["series"] == name], extra, gval)
            for k, scale in enumerate(scales):
                s = sel[sel[ax_name] == scale].sort_values("lr")
                if not s.empty:
                    drawn |= _lr_curve(ax, s, k, len(scales), looks[scale], ylim, metric)
            lr_axis(ax)
            frame_y(ax, *ylim, spec.maximize, style.logy)
            ax.set_title(f"{style.name(name)}{group_label(extra, gval)}")
            ax.grid(alpha=0.3)
            if sel.empty:
                no_runs(ax)
            if gi == len(groups) - 1:
                ax.set_xlabel("learning rate")
            if si == 0:
                ax.set_ylabel(metric.replace("_", " ") + (" (seed mean)" if "band" in drawn else ""))
    fig.legend(handles=_lr_key(ax_name, scales, looks, spec.maximize, drawn), loc="outside right upper",
               fontsize=8, frameon=False)
    fig.suptitle(f"{metric.replace('_', ' ')} vs learning rate across {axis_label(ax_name)}")
    return saved(fig, out)


def _optimum_panel(left, g: pd.DataFrame, look: dict, label: str) -> None:
    """A series' optimal LR vs scale: the grid optimum (hollow at the grid's edge), the parabola
    fit (dotted) and its CI as bars."""
    left.plot(g["scale"], g["opt_log2_lr"], "-", label=label, **look)
    edge = g[g["edge"]]
    if not edge.empty:
        left.plot(edge["scale"], edge["opt_log2_lr"], ls="none", color=look["color"], marker=look["marker"],
                  mfc="white", ms=8, zorder=5, **mark("edge"))
    left.plot(g["scale"], g["opt_log2_lr_fit"], ":", color=look["color"], **mark("fit"))
    lo, hi = g["opt_log2_lr_fit_lo"].astype(float), g["opt_log2_lr_fit_hi"].astype(float)
    # drawn about the CI's middle: a percentile CI need not contain the point estimate
    left.errorbar(g["scale"], (lo + hi) / 2, yerr=(hi - lo) / 2, fmt="none", ecolor=look["color"],
                  elinewidth=1.2, capsize=3, **mark("ci"))


def _law_line(left, law: pd.Series, g: pd.DataFrame, predicted: pd.DataFrame, look: dict) -> None:
    """A group's optimum's law, log2 η* = intercept + slope·log2 scale, dashed from its smallest
    scale to its largest or its farthest --predict target, with each prediction and its interval."""
    if pd.isna(law["slope"]):
        return
    scales = pd.concat([g.loc[g["opt_log2_lr"].notna(), "scale"], predicted["target"]]).astype(float)
    xs = np.geomspace(scales.min(), scales.max(), 50)
    left.plot(xs, law["intercept"] + law["slope"] * np.log2(xs), "--", color=look["color"], lw=1, **mark("law"))
    for p in predicted.to_dict("records"):
        lo, hi = p["pred_log2_lr_lo"], p["pred_log2_lr_hi"]
        left.errorbar([p["target"]], [p["pred_log2_lr"]], yerr=[[p["pred_log2_lr"] - lo], [hi - p["pred_log2_lr"]]],
                      fmt="D", color=look["color"], mfc="white", ms=5, capsize=3, **mark("prediction"))


def _regret_panel(right, g: pd.DataFrame, look: dict, series: str, ylim, maximize: bool) -> None:
    """A series' metric at the base-scale LR (✕ where it diverged) and the best one, vs scale."""
    ylo, top = ylim
    right.plot(g["scale"], clip_to_range(g["loss_at_base_lr"], ylo, top), "-", label=f"{series} @ base LR", **look)
    right.plot(g["scale"], clip_to_range(g["best_loss"], ylo, top), "--", color=look["color"], alpha=0.75,
               label=f"{series} best")
    div = g[g["base_lr_diverged"]]
    if not div.empty:
        right.plot(div["scale"], [strip_y(0, 1, maximize)] * len(div), color=look["color"],
                   transform=right.get_xaxis_transform(), **mark("diverged"), **DIVERGED)


def _frame_transfer_row(left, right, ax_name: str, scales, metric: str, ylim, style: Style) -> None:
    """Axes, limits and titles of one scale axis' pair of panels."""
    for ax in (left, right):
        scale_axis(ax, scales)
        ax.set_xlabel(axis_label(ax_name))
        ax.grid(alpha=0.3)
    frame_y(right, *ylim, metric_spec(metric).maximize, style.logy)
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.yaxis.set_major_formatter(pow2_formatter())
    y0, y1 = left.get_ylim()
    if y1 - y0 < 2:  # at least two octaves tall, so the ticks read as octaves
        mid = (y0 + y1) / 2
        left.set_ylim(mid - 1, mid + 1)
    left.set_ylabel("optimal learning rate")
    name = axis_label(ax_name)
    left.set_title(f"optimal LR vs {name}", fontsize=10)
    right.set_ylabel(metric.replace("_", " "))
    base = f"base-{name}" if " " not in name else f"base {name}'s"   # "base-width LR", "base batch size's LR"
    right.set_title(f"{metric.replace('_', ' ')} at the {base} LR vs the best", fontsize=10)


def _transfer_row(left, right, t: pd.DataFrame, v: pd.DataFrame, ax_name: str, runs, metric: str,
                  style: Style, prediction: pd.DataFrame) -> dict:
    """One scale axis' two panels; the verdict legend's entries (text -> handle)."""
    keys = [k for k in group_columns(t) if t[k].notna().any()]
    ylim = positive_range(pd.concat([t["loss_at_base_lr"], t["best_loss"]]), style.logy, initial_loss(runs, metric))
    groups = list(t.groupby(["series", *keys], sort=False, dropna=False))
    looks = series_styles([g for g, _ in groups])
    verdicts = {}
    for gkey, g in groups:
        look = looks[gkey]
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        g = g.sort_values("scale")
        _optimum_panel(left, g, look, str(gkey[0]) + group_label(keys, gkey[1:]))
        law = in_group(v[v["series"] == gkey[0]], keys, gkey[1:]).iloc[0]
        mine = in_group(prediction[prediction["series"] == gkey[0]], keys, gkey[1:]) if len(prediction) else prediction
        _law_line(left, law, g, mine, look)
        word = law["verdict"]
        verdicts.setdefault(f"{style.name(gkey[0])}{group_label(keys, gkey[1:])}: {word}", Line2D([], [], **look))
        _regret_panel(right, g, look, gkey[0], ylim, metric_spec(metric).maximize)
    scales = sorted({*t["scale"].dropna().unique(), *prediction["target"]})
    _frame_transfer_row(left, right, ax_name, scales, metric, ylim, style)
    return verdicts


def _transfer_key(ci: float, diverged: bool, predicted: bool = False) -> list:
    """What the lines and marks of the transfer view mean."""
    key = [Line2D([], [], color="gray", marker="o", label="optimum on the LR grid"),
           Line2D([], [], color="gray", marker="o", mfc="white", ls="none", label="… at the grid's edge"),
           Line2D([], [], color="gray", ls=":", label="parabola fit"),
           Line2D([], [], color="gray", marker="|", ms=10, ls="none", label=f"{ci * 100:g}% CI of the fit"),
           Line2D([], [], color="gray", ls="--", lw=1, label="law: least-squares line of the fits")]
    if predicted:
        key.append(Line2D([], [], color="gray", marker="D", mfc="white", ls="none",
                          label=f"law's prediction, {ci * 100:g}% PI"))
    key += [Line2D([], [], color="gray", label="at the base-scale LR (right)"),
            Line2D([], [], color="gray", ls="--", label="best at that scale (right)")]
    if diverged:
        key.append(Line2D([], [], color="gray", label="base LR diverged (right)", **DIVERGED))
    return key


def predict_on(runs: pd.DataFrame, targets: dict | None, axes_names: list[str], metric: str, ci: float, n_boot: int,
               seed: int) -> pd.DataFrame:
    """``analysis.predict`` for the --predict targets (none: an empty table), each on an axis drawn."""
    if not targets:
        return pd.DataFrame(columns=["series", "axis", "target"])
    prediction = predict(runs, targets, metric, ci=ci, n_boot=n_boot, seed=seed)
    for key, value in prediction.loc[~prediction["axis"].isin(axes_names), ["axis", "target"]].itertuples(index=False):
        raise UserError(f"--predict {key}={value:g}: the figure draws {' and '.join(axes_names)} only; allowed: a "
                        f"target on {' or '.join(axes_names)} (or --axis {key})")
    return prediction


def transfer_plot(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, out=None,
                  ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000, seed: int = 0,
                  style: Style | None = None, predict: dict | None = None) -> Figure:
    """Two panels per scale axis. Left: the optimal LR vs scale per series on a 2^k axis (solid:
    grid optimum, hollow at the edge of the LR grid; dotted: parabola fit, with bars spanning
    its bootstrap CI at level ``ci``). Right: the metric at the base-scale LR (✕ in the strip
    where it diverged) and the best value (dashed) vs scale; the gap is the regret. Keys, and
    each series' verdict at ``tolerance`` octaves, sit outside the panels. Needs two or more
    scales (UserError otherwise). Numbers from ``analysis.analyse``. Dashed on the left: each
    series' optimum's law (least-squares line of its fitted optima on log2 scale), extended to
    any ``predict`` target (``{axis: value or [values]}``, ``analysis.predict``), where a hollow
    diamond with bars marks the predicted optimum and its prediction interval.
    """
    out = check_out(out)
    style = style_or_default(style)
    axes_names = plot_axes(runs, axis)
    table, verdicts = analyse(runs, metric, axis, ci=ci, tolerance=tolerance, n_boot=n_boot, seed=seed)
    for ax_name in axes_names:
        n = table.loc[table["axis"] == ax_name, "scale"].nunique()
        if n < 2:
            raise UserError(f"the transfer view needs two or more {ax_name}s; the runs have {n} "
                            f"(draw more with --scales, or sweep another {ax_name})")
    prediction = predict_on(runs, predict, axes_names, metric, ci, n_boot, seed)
    fig = Figure(figsize=(12, 0.6 + 3.6 * len(axes_names)), layout="constrained")
    panels = fig.subplots(len(axes_names), 2, squeeze=False)
    handles = {}
    for row, ax_name in enumerate(axes_names):
        row_verdicts = _transfer_row(*panels[row], table[table["axis"] == ax_name],
                                     verdicts[verdicts["axis"] == ax_name], ax_name, runs, metric, style,
                                     prediction[prediction["axis"] == ax_name])
        for text, handle in row_verdicts.items():
            handles.setdefault(text, handle)
    diverged = any(h.get_gid() == "diverged" for ax in panels.flat for h in ax.get_lines())
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8, frameon=False,
               title=f"verdict (±{tolerance:g} octave{'' if tolerance == 1 else 's'}, {ci * 100:g}% CI)",
               title_fontsize=8)
    fig.legend(handles=_transfer_key(ci, diverged, not prediction.empty), loc="outside right lower", fontsize=8,
               frameon=False)
    fig.suptitle(f"LR transfer across {' and '.join(map(axis_label, axes_names))}: {metric.replace('_', ' ')}")
    return saved(fig, out)


@register("lr", "lr_curves", second="transfer",
          help="loss vs LR per scale, and the transfer view as a second figure")
def _lr_figures(r: Request) -> list[Figure]:
    figures = [lr_curves(r.runs, metric=r.metric, axis=r.axis, style=r.style)]
    single = single_scale(r.runs, r.axis)
    if single is None:
        figures.append(transfer_plot(r.runs, metric=r.metric, axis=r.axis, ci=r.ci, tolerance=r.tolerance,
                                     style=r.style, predict=r.predict))
    else:
        r.note(f"one {single}: no transfer view (it needs two or more); drew the loss-vs-LR curves only")
    return figures
