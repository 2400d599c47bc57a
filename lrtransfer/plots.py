"""Figures: loss vs LR per scale and series, and the transfer view (optimum and regret vs scale)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .analysis import TRANSFER_COLUMNS, cells, metric_column, resolve_axes, transfer_table  # noqa: E402
from .errors import UserError  # noqa: E402

FORMATS = (".png", ".svg", ".pdf")


def _save(fig, out):
    if out is None:
        return
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise UserError(f"--out {out}: unsupported format {out.suffix or '(none)'}; allowed: {', '.join(FORMATS)}")
    fig.savefig(out, dpi=130, bbox_inches="tight")


def _ylim(c: pd.DataFrame, runs: pd.DataFrame, metric: str) -> tuple[float, float]:
    """From a little below the best loss to about the loss at initialisation: one huge loss
    (a run near divergence) must not flatten every curve."""
    vals = c["loss"].dropna()
    if vals.empty:
        return 0.0, 1.0
    lo = float(vals.min())
    start = runs["first_train_loss"].dropna() if "first_train_loss" in runs else pd.Series(dtype=float)
    hi = float(vals.max())
    if not start.empty:
        hi = min(hi, 1.1 * float(start.median()))
    hi = max(hi, lo + 1e-3)
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def lr_curves(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, out=None):
    """Loss vs LR (log2 axis), one curve per scale, one panel per series, shared y.

    A star marks each curve's minimum, ✕ at the top edge a diverged LR; with several seeds the
    line is their mean and the band their min-max.
    """
    metric_column(metric)
    ax_name = resolve_axes(runs, axis)[0]
    c = cells(runs, metric, ax_name)
    extra = [k for k in c.columns if k not in ("series", ax_name, "lr", "loss", "std", "lo", "hi", "n_done",
                                               "n_runs", "n_diverged", "diverged")]
    series = list(dict.fromkeys(runs["series"]))
    groups = [()] if not extra else list(dict.fromkeys(map(tuple, c[extra].itertuples(index=False, name=None))))
    scales = sorted(c[ax_name].unique())
    cmap = plt.get_cmap("viridis")
    colors = {s: cmap(0.9 * i / max(len(scales) - 1, 1)) for i, s in enumerate(scales)}
    fig, axes = plt.subplots(len(groups), len(series), figsize=(4.2 * len(series), 3.6 * len(groups)),
                             sharey=True, squeeze=False)
    ylo, yhi = _ylim(c, runs, metric)
    for gi, gval in enumerate(groups):
        for si, name in enumerate(series):
            ax = axes[gi][si]
            sel = c[c["series"] == name]
            for k, v in zip(extra, gval):
                sel = sel[sel[k] == v]
            for scale in scales:
                s = sel[sel[ax_name] == scale].sort_values("lr")
                if s.empty:
                    continue
                ok = s[s["n_done"] > 0]
                line, = ax.plot(ok["lr"], ok["loss"], "-o", ms=3, color=colors[scale], label=f"{ax_name}={scale}")
                if (ok["n_done"] > 1).any():
                    ax.fill_between(ok["lr"], ok["lo"], ok["hi"], color=colors[scale], alpha=0.2, linewidth=0)
                if not ok.empty:
                    best = ok.loc[ok["loss"].idxmin()]
                    ax.plot([best["lr"]], [best["loss"]], "*", ms=13, color=colors[scale], mec="black",
                            mew=0.6, zorder=5, label="_minimum")
                div = s[s["diverged"]]
                if not div.empty:
                    ax.plot(div["lr"], [yhi] * len(div), "x", ms=8, mew=2, color=colors[scale], clip_on=False,
                            zorder=6, label="_diverged")
            ax.set_xscale("log", base=2)
            ax.set_ylim(ylo, yhi)
            title = name + "".join(f", {k}={v}" for k, v in zip(extra, gval))
            ax.set_title(title)
            ax.set_xlabel("learning rate")
            ax.grid(alpha=0.3)
            if si == 0:
                ax.set_ylabel(metric.replace("_", " "))
    # every scale, once, in order, for the legend
    handles = {}
    for ax in axes.flat:
        for h in ax.get_lines():
            if not h.get_label().startswith("_"):
                handles.setdefault(h.get_label(), h)
    axes[0][-1].legend(handles=[handles[f"{ax_name}={s}"] for s in scales if f"{ax_name}={s}" in handles],
                       fontsize=8, loc="best")
    fig.suptitle(f"{metric.replace('_', ' ')} vs learning rate across {ax_name} (★ minimum, ✕ diverged)")
    fig.tight_layout()
    _save(fig, out)
    return fig


def transfer_plot(runs: pd.DataFrame, metric: str = "train_loss", axis: str | None = None, out=None):
    """Left: optimal log2 LR vs scale per series. Right: loss at the base-scale LR (solid) and
    the best loss (dashed) vs scale — the gap is the regret of transferring the LR."""
    table = transfer_table(runs, metric, axis)
    ax_name = table["axis"].iloc[0]
    table = table[table["axis"] == ax_name]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = plt.get_cmap("tab10")
    keys = ["series", *[k for k in table.columns if k not in TRANSFER_COLUMNS]]
    for i, (gkey, g) in enumerate(table.groupby(keys, sort=False)):
        label = gkey if isinstance(gkey, str) else ", ".join(map(str, gkey))
        g = g.sort_values("scale")
        col = colors(i % 10)
        left.plot(g["scale"], g["opt_log2_lr"], "-o", color=col, label=label)
        left.plot(g["scale"], g["opt_log2_lr_fit"], ":", color=col, label="_fit")
        right.plot(g["scale"], g["loss_at_base_lr"], "-o", color=col, label=f"{label} @ base LR")
        right.plot(g["scale"], g["best_loss"], "--", color=col, alpha=0.7, label=f"{label} best")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(ax_name)
        ax.grid(alpha=0.3)
    left.set_ylabel("log2 optimal LR (dotted: parabola fit)")
    left.set_title("optimal learning rate")
    right.set_ylabel(metric.replace("_", " "))
    right.set_title("loss at the base-scale LR vs best (regret)")
    left.legend(fontsize=8)
    right.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out)
    return fig
