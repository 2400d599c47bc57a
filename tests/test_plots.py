"""Figures: files written, one curve per scale per series panel, diverged runs marked, robust y limits."""
import math

import numpy as np
import pandas as pd
import pytest

from lrtransfer import plots
from lrtransfer.plots import style
from lrtransfer.errors import ConfigError, UserError


def runs(widths=(32, 128, 512), series=("adam", "normed"), diverge=True, seeds=(0,), depths=(2,)):
    """Loss (log2 lr + 2 + i)^2 / 10 + 1/width; the top LR diverges at the largest width."""
    rows = []
    for s_i, s in enumerate(series):
        for d in depths:
            for w in widths:
                for x in range(-6, 1):
                    for seed in seeds:
                        status = "diverged" if diverge and x == 0 and w == widths[-1] else "done"
                        loss = (x + 2 + s_i) ** 2 / 10 + 1 / w + 0.01 * seed + 0.01 * d
                        loss = loss if status == "done" else math.nan
                        rows.append({"run_id": f"{s}{w}{d}{x}{seed}", "series": s, "width": w, "depth": d,
                                     "lr": 2.0 ** x, "seed": seed, "status": status, "final_train_loss": loss,
                                     "final_test_loss": loss, "first_train_loss": 2.3})
    return pd.DataFrame(rows)


def curve_labels(ax):
    """The labels of the curves (markers, bands and fits carry a gid instead)."""
    return [line.get_label() for line in ax.get_lines() if line.get_gid() is None]


def marks(ax, kind):
    return [line for line in ax.get_lines() if line.get_gid() == kind]


def test_png_and_svg_written(tmp_path):
    for suffix in ("png", "svg", "pdf"):
        plots.lr_curves(runs(), out=tmp_path / f"c.{suffix}")
        plots.transfer_plot(runs(), out=tmp_path / f"t.{suffix}")
        for name in ("c", "t"):
            assert (tmp_path / f"{name}.{suffix}").stat().st_size > 1000
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "c.svg").read_bytes()[:2000]


def test_unsupported_format_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unsupported format .gif"):
        plots.lr_curves(runs(), out=tmp_path / "c.gif")
    with pytest.raises(UserError, match="unsupported format"):
        plots.transfer_plot(runs(), out=tmp_path / "t")
    assert not list(tmp_path.iterdir())
    with pytest.raises(UserError, match="--metric 'acc'"):
        plots.lr_curves(runs(), metric="acc")


def test_one_panel_per_series_one_curve_per_scale():
    fig = plots.lr_curves(runs(series=("normed", "adam", "sgd")))
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["normed", "adam", "sgd"]  # order of first appearance
    for ax in fig.axes:
        assert curve_labels(ax) == ["width=32", "width=128", "width=512"]
        assert len(marks(ax, "minimum")) == 3
        assert ax.get_xscale() == "log"
    assert fig.axes[0].get_ylim() == fig.axes[1].get_ylim()  # shared y
    title = fig.get_suptitle()
    assert "train loss" in title and "width" in title


def test_minimum_star_sits_on_the_argmin():
    fig = plots.lr_curves(runs(series=("adam",), widths=(32,)))
    star = marks(fig.axes[0], "minimum")[0]
    assert star.get_xdata()[0] == 2.0 ** -2 and star.get_marker() == "*"


def test_diverged_runs_drawn_as_crosses_in_a_strip_above_the_data():
    fig = plots.lr_curves(runs())
    for ax in fig.axes:
        crosses = marks(ax, "diverged")
        assert len(crosses) == 1 and crosses[0].get_marker() == "x"
        assert list(crosses[0].get_xdata()) == [1.0]
        # the largest of three widths: the top of the strip beyond the data, inside the axes (not on the spine)
        assert crosses[0].get_ydata()[0] == pytest.approx(style.STRIP[1]) and crosses[0].get_clip_on()
        assert style.DATA_FRACTION < style.STRIP[0] < style.STRIP[1] < 1


def test_crosses_of_several_scales_at_one_lr_are_offset():
    r = runs(series=("adam",), diverge=False)
    r.loc[r["lr"] == 1.0, ["status", "final_train_loss"]] = ["diverged", math.nan]
    crosses = marks(plots.lr_curves(r).axes[0], "diverged")
    assert [c.get_xdata()[0] for c in crosses] == [1.0, 1.0, 1.0]
    lo, hi = style.STRIP
    assert [c.get_ydata()[0] for c in crosses] == pytest.approx([lo, (lo + hi) / 2, hi])
    # an accuracy's worse end is the bottom: the strip is mirrored there
    acc = r.assign(final_test_acc=1 - r["final_train_loss"] / 10)
    crosses = marks(plots.lr_curves(acc, metric="test_acc").axes[0], "diverged")
    assert [c.get_ydata()[0] for c in crosses] == pytest.approx([1 - lo, 1 - (lo + hi) / 2, 1 - hi])


def test_all_runs_of_a_scale_diverged():
    r = runs(series=("adam",))
    r.loc[r["width"] == 512, ["status", "final_train_loss"]] = ["diverged", math.nan]
    fig = plots.lr_curves(r)
    ax = fig.axes[0]
    assert curve_labels(ax) == ["width=32", "width=128", "width=512"]
    assert len(marks(ax, "diverged")[0].get_xdata()) == 7
    assert len(marks(ax, "minimum")) == 2
    fig = plots.transfer_plot(r)
    right = fig.axes[1]
    crosses = marks(right, "diverged")
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [512]


def test_huge_loss_does_not_blow_up_the_axis():
    r = runs(series=("adam",), diverge=False).drop(columns="first_train_loss")
    r.loc[(r["width"] == 128) & (r["lr"] == 1.0), "final_train_loss"] = 1e6
    fig = plots.lr_curves(r)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert hi < 10 and lo < r["final_train_loss"].min()
    clipped = marks(ax, "clipped")
    assert len(clipped) == 1 and clipped[0].get_ydata()[0] == pytest.approx(style.DATA_FRACTION)  # the data's edge


def test_y_limits_follow_initial_loss():
    fig = plots.lr_curves(runs(series=("adam",), diverge=False).assign(first_train_loss=1.0))
    lo, hi = fig.axes[0].get_ylim()
    best = 1 / 512 + 0.02                          # the smallest loss drawn
    data_hi = 1.1 + 0.08 * (1.1 - best)            # 1.1 x the initial loss, and a margin
    assert lo == pytest.approx(best - 0.06 * (1.1 - best), rel=1e-6)
    assert hi == pytest.approx(lo + (data_hi - lo) / style.DATA_FRACTION, rel=1e-6)   # and the strip


def test_several_seeds_get_a_band():
    fig = plots.lr_curves(runs(series=("adam",), seeds=(0, 1, 2)))
    ax = fig.axes[0]
    assert curve_labels(ax) == ["width=32", "width=128", "width=512"]
    assert len(ax.collections) == 3  # one min-max band per curve
    line = ax.get_lines()[0]
    assert line.get_ydata()[0] == pytest.approx((-6 + 2) ** 2 / 10 + 1 / 32 + 0.01 + 0.02)  # seed mean


def test_single_scale_and_single_series(tmp_path):
    r = runs(widths=(64,), series=("adam",), diverge=False)
    fig = plots.lr_curves(r, out=tmp_path / "one.png")
    assert len(fig.axes) == 1 and curve_labels(fig.axes[0]) == ["width=64"]
    with pytest.raises(UserError, match="the transfer view needs two or more widths; the runs have 1"):
        plots.transfer_plot(r, out=tmp_path / "t.png")
    assert (tmp_path / "one.png").stat().st_size > 1000 and not (tmp_path / "t.png").exists()


def test_transfer_plot_panels_and_curves():
    fig = plots.transfer_plot(runs())
    left, right = fig.axes
    assert curve_labels(left) == ["adam", "normed"]
    assert curve_labels(right) == ["adam @ base LR", "adam best", "normed @ base LR", "normed best"]
    adam = left.get_lines()[0]
    assert list(adam.get_xdata()) == [32, 128, 512] and list(adam.get_ydata()) == [-2, -2, -2]
    assert [t.get_text() for t in left.get_xticklabels()] == ["32", "128", "512"]


def test_width_by_depth_grid():
    r = runs(depths=(2, 4))
    fig = plots.lr_curves(r)
    assert len(fig.axes) == 4  # rows: depth, columns: series
    assert [ax.get_title() for ax in fig.axes] == ["adam, depth=2", "normed, depth=2", "adam, depth=4",
                                                   "normed, depth=4"]
    for ax in fig.axes:
        assert curve_labels(ax) == ["width=32", "width=128", "width=512"]
    fig = plots.transfer_plot(r)
    assert len(fig.axes) == 4  # two panels per scale axis
    fig = plots.lr_curves(r, axis="depth")
    assert curve_labels(fig.axes[0]) == ["depth=2", "depth=4"]


def test_transfer_plot_ci_bars_and_verdicts(tmp_path):
    from matplotlib.container import ErrorbarContainer

    r = runs(seeds=(0, 1, 2))
    fig = plots.transfer_plot(r, ci=0.8, tolerance=0.5, out=tmp_path / "t.svg")
    left = fig.axes[0]
    bars = [c for c in left.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2  # one set of CI bars per series
    verdicts, key = fig.legends   # both outside the panels
    assert "80% CI of the fit" in [t.get_text() for t in key.get_texts()]
    legend = verdicts
    assert [t.get_text() for t in legend.get_texts()] == ["adam: transfers", "normed: transfers"]
    assert "±0.5 octaves" in legend.get_title().get_text() and "80% CI" in legend.get_title().get_text()
    assert curve_labels(left) == ["adam", "normed"]  # the curves keep their series labels
    assert (tmp_path / "t.svg").stat().st_size > 1000
    # the CI bars span the bootstrap CI of the fitted optimum
    from lrtransfer.analysis.transfer import transfer_table
    t = transfer_table(r, ci=0.8)
    segments = bars[0].lines[2][0].get_segments()
    adam = t[t["series"] == "adam"]
    assert [s[0][1] for s in segments] == pytest.approx(adam["opt_log2_lr_fit_lo"].tolist())
    assert [s[1][1] for s in segments] == pytest.approx(adam["opt_log2_lr_fit_hi"].tolist())


def test_transfer_plot_draws_the_law_to_a_predicted_scale():
    from matplotlib.container import ErrorbarContainer
    from lrtransfer.analysis.transfer import predict, verdict_table

    r = runs(seeds=(0, 1, 2))
    plain = plots.transfer_plot(r).axes[0]
    assert len(marks(plain, "law")) == 2 and not marks(plain, "prediction")  # the law is always drawn
    fig = plots.transfer_plot(r, predict={"width": [2048]})
    left = fig.axes[0]
    laws = marks(left, "law")
    v = verdict_table(r).set_index("series")
    for line, series in zip(laws, ("adam", "normed")):
        x, y = line.get_data()
        assert x[0] == pytest.approx(32) and x[-1] == pytest.approx(2048)  # extended to the target
        assert y == pytest.approx(v.loc[series, "intercept"] + v.loc[series, "slope"] * np.log2(x))
    p = predict(r, {"width": 2048}).set_index("series")
    bars = [c for c in left.containers if isinstance(c, ErrorbarContainer) and c[0] is not None
            and c[0].get_gid() == "prediction"]
    assert len(bars) == 2
    (lo, hi), = [seg[:, 1] for seg in bars[0].lines[2][0].get_segments()]
    assert (lo, hi) == pytest.approx((p.loc["adam", "pred_log2_lr_lo"], p.loc["adam", "pred_log2_lr_hi"]))
    assert 2048 in left.get_xticks()
    assert "law's prediction, 90% PI" in [t.get_text() for t in fig.legends[1].get_texts()]
    with pytest.raises(UserError, match=r"--predict depth=4: 'depth' is not a scale axis"):
        plots.transfer_plot(r, predict={"depth": 4})


def test_transfer_plot_bad_ci_writes_nothing(tmp_path):
    with pytest.raises(UserError, match="--ci 90"):
        plots.transfer_plot(runs(), ci=90, out=tmp_path / "t.png")
    with pytest.raises(UserError, match="--tolerance -1"):
        plots.transfer_plot(runs(), tolerance=-1, out=tmp_path / "t.png")
    assert not list(tmp_path.iterdir())


def _curves(r: pd.DataFrame) -> pd.DataFrame:
    """Train loss at steps 10, 20, 30: 2 − step/100 + seed/10 + log2(lr)/100, with the scheduled lr."""
    rows = []
    for run in r.itertuples():
        for step in (10, 20, 30):
            if run.status == "diverged" and step > 10:
                break  # a diverged run's curve ends where it diverged
            rows.append({"run_id": run.run_id, "step": step, "lr": run.lr * (1 - step / 40),
                         "train_loss": 2 - step / 100 + run.seed / 10 + math.log2(run.lr) / 100,
                         "test_loss": math.nan})
    return pd.DataFrame(rows)


def test_loss_vs_step_draws_the_seed_mean_curve_of_every_lr(tmp_path):
    r = runs(seeds=(0, 1))
    fig = plots.loss_vs_step(r, _curves(r), out=tmp_path / "steps.svg")
    assert (tmp_path / "steps.svg").exists()
    panels = [ax for ax in fig.axes if ax.get_title() in ("adam", "normed")]
    assert [ax.get_title() for ax in panels] == ["adam", "normed"]
    for ax in panels:  # the largest width by default: 7 LRs, the diverged one a single point
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert sorted(lines) == sorted(f"lr=2^{x}" for x in range(-6, 1))
        x, y = lines["lr=2^-3"].get_data()
        assert list(x) == [10, 20, 30]
        expected = [2 - s / 100 + 0.05 - 3 / 100 for s in (10, 20, 30)]   # mean over seeds 0 and 1
        assert y == pytest.approx(expected)
        assert list(lines["lr=2^0"].get_data()[0]) == [10]


def test_loss_vs_step_refuses_a_scale_that_is_not_there():
    r = runs()
    with pytest.raises(UserError, match=r"--scale 64: no runs at width=64; widths: 32, 128, 512"):
        plots.loss_vs_step(r, _curves(r), scale=64)
    with pytest.raises(UserError, match="train_loss or test_loss"):
        plots.loss_vs_step(r, _curves(r), metric="test_acc")


# ----------------------------------------------------------------------------- figure details

def test_svg_keeps_its_text_as_text(tmp_path):
    plots.lr_curves(runs(), out=tmp_path / "c.svg")
    svg = (tmp_path / "c.svg").read_text()
    assert "<text" in svg and "train loss vs learning rate across width" in svg


def test_every_lr_axis_reads_2_to_the_k():
    fig = plots.transfer_plot(runs())
    left = fig.axes[0]
    assert left.yaxis.get_major_formatter()(-3, 0) == "$2^{-3}$"          # the optimum panel, in log2 LR
    panel = plots.lr_curves(runs()).axes[0]
    assert panel.get_xscale() == "log" and panel.xaxis.get_major_formatter()(0.125, 0) == r"$\mathdefault{2^{-3}}$"


def test_keys_sit_outside_the_panels():
    for fig in (plots.lr_curves(runs(seeds=(0, 1))), plots.transfer_plot(runs())):
        assert fig.legends and all(ax.get_legend() is None for ax in fig.axes)
        assert all(not ax.get_title().count("(") for ax in fig.axes)        # no key in a subplot title


def test_band_meaning_is_in_the_legend():
    texts = [t.get_text() for t in plots.lr_curves(runs(seeds=(0, 1, 2))).legends[0].get_texts()]
    assert "band: min–max over seeds" in texts and "line: seed mean" in texts
    texts = [t.get_text() for t in plots.lr_curves(runs()).legends[0].get_texts()]
    assert not any("band" in t for t in texts)                               # one seed: no band, no entry


def _contrast_with_white(color) -> float:
    """WCAG 2 contrast ratio of ``color`` against white (relative luminance of linear sRGB)."""
    from matplotlib.colors import to_rgb
    lin = [x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4 for x in to_rgb(color)]
    return 1.05 / (0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2] + 0.05)


def test_palettes_read_on_white_and_in_greyscale():
    looks = style.scale_styles([32, 64, 128, 256, 512])
    contrast = [_contrast_with_white(look["color"]) for look in looks.values()]
    assert min(contrast) >= 3.0                                      # WCAG's 3:1 for graphics, the last one too
    assert contrast == sorted(contrast, reverse=True)                # grey levels in scale order
    assert all(a / b > 1.3 for a, b in zip(contrast, contrast[1:]))  # and apart
    assert len({look["marker"] for look in looks.values()}) == 5     # a marker each for greyscale
    series = style.series_styles(["a", "b", "c", "d", "e", "f"])
    assert min(_contrast_with_white(look["color"]) for look in series.values()) >= 3.0
    assert len({look["marker"] for look in series.values()}) == 6


def test_select_series_scales_labels_and_logy():
    r = plots.select(runs(), series=["normed"], scales=[32, 512])
    fig = plots.lr_curves(r, style=plots.Style(labels={"normed": "normed Adam"}, logy=True))
    (ax,) = fig.axes
    assert ax.get_title() == "normed Adam" and curve_labels(ax) == ["width=32", "width=512"]
    assert ax.get_yscale() == "log"
    fig = plots.transfer_plot(r, style=plots.Style(labels={"normed": "normed Adam"}))
    assert [t.get_text().split(":")[0] for t in fig.legends[0].get_texts()] == ["normed Adam"]
    with pytest.raises(UserError, match=r"--series 'normd': no such series here \(did you mean 'normed'\?\)"):
        plots.select(runs(), series=["normd"])
    with pytest.raises(UserError, match="--scales 64: no runs at width=64; widths: 32, 128, 512"):
        plots.select(runs(), scales=[64])
    with pytest.raises(UserError, match="--logy"):
        plots.lr_curves(runs().assign(final_train_loss=lambda d: d["final_train_loss"] - 1), style=plots.Style(logy=True))


def test_an_axis_with_one_value_is_refused():
    with pytest.raises(UserError, match="--axis depth: every run has depth = 2, nothing varies along it; the runs vary width"):
        plots.lr_curves(runs(), axis="depth")
    with pytest.raises(UserError, match="--axis depth"):
        plots.transfer_plot(runs(), axis="depth")


def test_plot_cli_degenerate_request_exits_2_and_writes_nothing(tmp_path):
    from conftest import invoke
    from lrtransfer.results.store import write_table
    write_table(runs(), tmp_path / "runs.parquet")
    r = invoke("plot", tmp_path)
    assert r.exit_code == 0, r.output
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {"lr_curves.png", "transfer.png"} <= set(before)
    for args, message in ((("--axis", "depth"), "--axis depth: every run has depth = 2"),
                          (("--series", "adma"), "(did you mean 'adam'?)"),
                          (("--kind", "curvs"), "--kind 'curvs': allowed: lr, curves, diagnostics, regimes, lrwd "
                                                "(did you mean 'curves'?)"),
                          (("--label", "adam"), "--label 'adam': expected SERIES=NAME")):
        r = invoke("plot", tmp_path, *args)
        assert r.exit_code == 2 and message in " ".join(r.output.split()), (args, r.output)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, args
    # one scale asked for: the loss-vs-LR curves alone, and it says why
    r = invoke("plot", tmp_path, "--scales", "32", "--out", tmp_path / "one.png")
    assert r.exit_code == 0 and "one width=32: no transfer view" in r.output
    assert (tmp_path / "one.png").exists() and not (tmp_path / "one_transfer.png").exists()
    r = invoke("plot", tmp_path, "--series", "adam", "--label", "adam=Adam (SP)", "--out", tmp_path / "a.svg")
    assert r.exit_code == 0 and (tmp_path / "a.svg").exists() and (tmp_path / "a_transfer.svg").exists()
    assert "Adam (SP)" in (tmp_path / "a.svg").read_text()
    assert f"wrote {tmp_path / 'a.svg'} and {tmp_path / 'a_transfer.svg'}" in " ".join(r.output.split())


def test_test_acc_star_sits_on_the_maximum():
    r = runs(series=("adam",), widths=(32,), diverge=False)
    x = np.log2(r["lr"])
    r = r.assign(final_test_acc=0.9 - 0.01 * (x + 5) ** 2)          # the maximum at 2^-5, the loss' minimum at 2^-2
    (star,) = marks(plots.lr_curves(r, metric="test_acc").axes[0], "minimum")
    assert star.get_xdata()[0] == 2.0 ** -5 and star.get_ydata()[0] == pytest.approx(0.9)
    (star,) = marks(plots.lr_curves(r).axes[0], "minimum")
    assert star.get_xdata()[0] == 2.0 ** -2


def test_a_series_label_in_the_experiment_file_names_it_in_figures(tmp_path):
    """`label = "…"` in a series table: recorded with the experiment, shown by plot, not a run key."""
    from conftest import invoke
    from lrtransfer.results.store import write_json, write_table
    from lrtransfer.sweep import experiment_from_dict
    raw = {"data": {"dataset": "mnist1d", "samples": 600}, "model": {"arch": "mlp"},
           "grid": {"width": [32, 512]}, "series": {"adam": {"label": "Adam, plain", "lr": 0.01}, "normed": {"lr": 0.1}}}
    exp = experiment_from_dict(raw, "labelled")
    plain = experiment_from_dict({**raw, "series": {"adam": {"lr": 0.01}, "normed": {"lr": 0.1}}}, "labelled")
    assert exp.labels == {"adam": "Adam, plain"} and [c.run_id for c in exp.cells()] == [c.run_id for c in plain.cells()]
    write_table(runs(), tmp_path / "runs.parquet")
    write_json(exp.to_dict(), tmp_path / "experiment.json")
    r = invoke("plot", tmp_path, "--out", tmp_path / "f.svg")
    assert r.exit_code == 0, r.output
    assert "Adam, plain" in (tmp_path / "f.svg").read_text()
    r = invoke("plot", tmp_path, "--label", "adam=Adam (SP)", "--out", tmp_path / "g.svg")   # the option wins
    text = (tmp_path / "g.svg").read_text()
    assert "Adam (SP)" in text and "Adam, plain" not in text
    with pytest.raises(ConfigError, match="series.adam.label: must be a non-empty string"):
        experiment_from_dict({**raw, "series": {"adam": {"label": 3, "lr": 0.01}}}, "bad")


def test_draw_writes_a_kinds_figures_and_names_the_second(tmp_path):
    from lrtransfer.results.store import write_table
    write_table(runs(), tmp_path / "runs.parquet")
    assert plots.draw(tmp_path) == [tmp_path / "lr_curves.png", tmp_path / "transfer.png"]
    notes = []
    written = plots.draw(tmp_path, "lr", tmp_path / "one.svg", scales=[32], note=notes.append)
    assert written == [tmp_path / "one.svg"] and notes == [
        "one width=32: no transfer view (it needs two or more); drew the loss-vs-LR curves only"]
    assert plots.draw(tmp_path, "lr", tmp_path / "a.pdf", labels={"adam": "Adam"}) == [tmp_path / "a.pdf",
                                                                                     tmp_path / "a_transfer.pdf"]


def test_a_plot_kind_is_one_registered_function(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    from lrtransfer.plots import kinds
    from lrtransfer.results.store import write_table
    monkeypatch.setattr(kinds, "KINDS", dict(kinds.KINDS))

    @kinds.register("seeds", "seeds", help="finished runs per series")
    def seeds(request):
        fig = Figure()
        counts = request.runs.groupby("series")["seed"].count()
        fig.subplots().bar(counts.index, counts.to_numpy())
        return [fig]

    write_table(runs(), tmp_path / "runs.parquet")
    assert plots.draw(tmp_path, "seeds") == [tmp_path / "seeds.png"]
    assert (tmp_path / "seeds.png").stat().st_size > 1000
    with pytest.raises(UserError, match=r"--kind 'sead': allowed: .*seeds \(did you mean 'seeds'\?\)"):
        plots.draw(tmp_path, "sead")
    with pytest.raises(UserError, match=r"--quantity 'spin'"):
        plots.draw(tmp_path, "seeds", quantity="spin")     # every kind's options are checked before drawing
