"""What every figure shares: colours and markers, the y framing with its strip for diverged
runs, axis formats, and writing a figure to .png/.svg/.pdf."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, NullLocator

from ..errors import UserError
from ..results.store import atomic_write

FORMATS = (".png", ".svg", ".pdf")
# diverged / clipped markers sit in a strip of the axes beyond the data (axes-fraction y), never on the spine
DIVERGED = {"marker": "x", "ms": 7, "mew": 2, "ls": "none", "zorder": 6}
DIVERGED_END = {"marker": "x", "s": 64, "linewidths": 2, "zorder": 6, "clip_on": False}
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
LINE_STYLES = ("-", "--", ":", "-.")


@dataclass
class Style:
    """How a figure names and scales things: ``labels`` maps series to display names (legends,
    titles); ``logy`` puts the loss/metric axis on a log scale."""
    labels: dict = field(default_factory=dict)
    logy: bool = False

    def name(self, series) -> str:
        return self.labels.get(series, str(series))


def style_or_default(style: Style | None) -> Style:
    return style if style is not None else Style()


def mark(kind: str) -> dict:
    """Plot keywords of a helper artist (a marker, band or fit): kept out of legends, and
    findable by its ``gid`` (``minimum``, ``diverged``, ``clipped``...)."""
    return {"label": f"_{kind}", "gid": kind}


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


def saved(fig: Figure, out: Path | None) -> Figure:
    """``fig``, written to ``out`` first (``save``)."""
    save(fig, out)
    return fig


def scale_styles(scales) -> dict:
    """Per scale: colour (viridis without its faint end) and marker."""
    cmap = mpl.colormaps["viridis"]
    lo, hi = SCALE_CMAP_RANGE
    return {s: {"color": cmap(lo + (hi - lo) * i / max(len(scales) - 1, 1)), "marker": MARKERS[i % len(MARKERS)]}
            for i, s in enumerate(scales)}


def series_styles(names) -> dict:
    """Per series: colour (darker tab10) and marker."""
    return {n: {"color": SERIES_COLORS[i % len(SERIES_COLORS)], "marker": MARKERS[i % len(MARKERS)]}
            for i, n in enumerate(names)}


def pow2_formatter():
    """Tick labels 2^k for an axis whose values are log2 of a rate."""
    return FuncFormatter(lambda v, _pos: f"$2^{{{v:g}}}$")


def lr_axis(ax) -> None:
    """A learning-rate axis: log2, ticks 2^k."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(LogFormatterSciNotation(base=2))


def scale_axis(ax, scales) -> None:
    """log2 x-axis with a tick, written plainly, at each scale that was run."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(scales), [f"{s:g}" for s in scales])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(scales) == 1:
        ax.set_xlim(scales[0] / 2, scales[0] * 2)


# how a scale axis reads on a figure; any other key reads as its name, underscores as spaces
AXIS_LABELS = {"batch_size": "batch size", "data.context": "context length", "data.samples": "training samples"}


def axis_label(key: str) -> str:
    """A scale axis' name on a figure: ``batch_size`` -> "batch size", ``steps`` -> "steps"."""
    return AXIS_LABELS.get(key, str(key).replace("_", " "))


def no_runs(ax) -> None:
    ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="gray")


def frame_y(ax, ylo: float, yhi: float, maximize: bool, logy: bool) -> None:
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


def strip_y(i: int, n: int, maximize: bool) -> float:
    """Axes-fraction height of the ✕ of the i-th of n scales (offset so that scales diverging at
    one LR do not overlap), in the strip at the worse end."""
    y = STRIP[0] + (STRIP[1] - STRIP[0]) * (i / (n - 1) if n > 1 else 0.5)
    return 1 - y if maximize else y


def edge_y(maximize: bool) -> float:
    """Axes-fraction height of the data range's worse edge (where clipped points are drawn)."""
    return 1 - DATA_FRACTION if maximize else DATA_FRACTION


def clip_to_range(values, ylo: float, yhi: float):
    return np.clip(np.asarray(values, dtype=float), ylo, yhi)


def robust_range(values, initial: float | None = None) -> tuple[float, float]:
    """Y limits from a little below the smallest value to a robust upper bound: the smallest
    of the largest value, 1.1 x the loss at initialisation (when known) and Q3 + 3 IQR of the
    values, so that one huge loss (a run near divergence) cannot flatten every curve. Callers
    draw points above it at the top edge."""
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


def positive_range(values, logy: bool, initial: float | None) -> tuple[float, float]:
    """``robust_range`` of ``values``; with ``logy``, of their logs (UserError if one is ≤ 0)."""
    vals = pd.Series(values, dtype=float)
    vals = vals[np.isfinite(vals)]
    if not logy:
        return robust_range(vals, initial)
    if (vals <= 0).any():
        raise UserError(f"--logy: the values drawn include {vals.min():g} <= 0; a log axis cannot show them")
    lo, hi = robust_range(np.log(vals), math.log(initial) if initial else None)
    return math.exp(lo), math.exp(hi)
