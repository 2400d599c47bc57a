"""Figures: files written, one curve per scale per series panel, diverged runs marked."""
import math

import matplotlib
import pandas as pd
import pytest

from lrtransfer import plots
from lrtransfer.errors import UserError


def runs(widths=(32, 128, 512), series=("adam", "normed"), diverge=True):
    rows = []
    for s_i, s in enumerate(series):
        for w in widths:
            for x in range(-6, 1):
                status = "diverged" if diverge and x == 0 and w == widths[-1] else "done"
                loss = (x + 2 + s_i) ** 2 / 10 + 1 / w if status == "done" else math.nan
                rows.append({"run_id": f"{s}{w}{x}", "series": s, "width": w, "depth": 2, "lr": 2.0 ** x,
                             "seed": 0, "status": status, "final_train_loss": loss, "final_test_loss": loss,
                             "first_train_loss": 2.3})
    return pd.DataFrame(rows)


def curve_labels(ax):
    return [l.get_label() for l in ax.get_lines() if not l.get_label().startswith("_")]


def test_one_panel_per_series_one_curve_per_scale(tmp_path):
    fig = plots.lr_curves(runs(), out=tmp_path / "c.png")
    panels = fig.axes[:2]
    assert [ax.get_title() for ax in panels] == ["adam", "normed"]
    for ax in panels:
        assert curve_labels(ax) == ["width=32", "width=128", "width=512"]
    assert (tmp_path / "c.png").stat().st_size > 5000


def test_diverged_runs_drawn_as_crosses_at_the_top():
    fig = plots.lr_curves(runs())
    ax = fig.axes[0]
    crosses = [l for l in ax.get_lines() if l.get_label() == "_diverged"]
    assert len(crosses) == 1
    assert crosses[0].get_ydata()[0] == pytest.approx(ax.get_ylim()[1])


def test_svg_pdf_and_transfer_figure(tmp_path):
    for suffix in ("svg", "pdf"):
        plots.lr_curves(runs(), out=tmp_path / f"c.{suffix}")
        plots.transfer_plot(runs(), out=tmp_path / f"t.{suffix}")
        assert (tmp_path / f"c.{suffix}").stat().st_size > 1000 and (tmp_path / f"t.{suffix}").stat().st_size > 1000
    with pytest.raises(UserError, match="unsupported format .gif"):
        plots.lr_curves(runs(), out=tmp_path / "c.gif")


def test_single_scale_and_single_series():
    fig = plots.lr_curves(runs(widths=(64,), series=("adam",), diverge=False))
    assert curve_labels(fig.axes[0]) == ["width=64"]
    matplotlib.pyplot.close("all")
