"""The coordinate check's figure: RMS against width per atom, one panel per series."""
from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..analysis.coordcheck import CoordCheck
from ..report.render import pow2


def figure(cc: CoordCheck, step: int | None = None) -> Figure:
    """One panel per series (three to a row): RMS vs width (log–log) per atom at ``step``
    (default: the last), the geometric mean over seeds; solid ``output_rms``, dashed
    ``output_update_rms``, dotted ``delta_wx_rms`` (ΔW·x), one colour per atom."""
    step = cc.steps if step is None else step
    names = list(cc.verdict)
    cols = min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.4 * cols, 3.6 * rows), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in grid[len(names):]:
        ax.remove()
    axes = grid[:len(names)]
    styles = {"output_rms": "-", "output_update_rms": "--", "delta_wx_rms": ":"}
    for ax, name in zip(axes, names):
        t = cc.table[(cc.table["series"] == name) & (cc.table["step"] == step)]
        atoms = t.drop_duplicates("atom_index").sort_values("atom_index")
        colours = {a: f"C{i % 10}" for i, a in enumerate(atoms["atom"])}
        for q, ls in styles.items():
            for atom in atoms["atom"]:
                g = t[(t["atom"] == atom) & (t["quantity"] == q)]
                g = g[np.isfinite(g["rms"]) & (g["rms"] > 0)]
                # the seeds' geometric mean: the slopes are fitted to log RMS
                g = np.exp(np.log(g["rms"]).groupby(g["width"]).mean()).sort_index()
                if len(g):
                    ax.plot(g.index, g.to_numpy(), ls=ls, marker="o", ms=3, color=colours[atom],
                            label=atom if q == "output_rms" else f"_{atom} {q}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width")
        ax.set_ylabel("RMS")
        ok = cc.verdict[name]
        ax.set_title(f"{name} (lr {pow2(cc.lrs[name])}, step {step}): {'pass' if ok else 'FAIL'}",
                     fontsize=9)
        handles = [Line2D([], [], color=c, label=a) for a, c in colours.items()]
        handles += [Line2D([], [], color="black", ls=ls, label=q) for q, ls in styles.items()]
        ax.legend(handles=handles, fontsize=6, loc="best")
    return fig
