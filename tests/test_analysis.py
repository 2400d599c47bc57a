"""Transfer numbers checked on synthetic runs tables with known answers.

The synthetic loss is loss(lr, width) = (log2 lr - centre[width])^2 + offset[width] exactly, so
grid argmin, parabola vertex, drift and regret can all be computed by hand.
"""
import io
import json
import math

import numpy as np
import pandas as pd
import pytest

from lrtransfer.analysis import cells, drift_table, group_keys, optimum, report, transfer_table
from lrtransfer.errors import UserError


def table(centres: dict, offsets: dict, log2_lrs, series="s", seeds=(0,), noise=0.0, axis="width", fixed=None,
          **extra):
    """One run per (scale, lr, seed); ``axis`` is the scale column, the other axis is fixed."""
    fixed = fixed or {"width": 64, "depth": 2}
    rows = []
    for scale, c in centres.items():
        for x in log2_lrs:
            for seed in seeds:
                loss = (x - c) ** 2 + offsets[scale] + noise * (seed - np.mean(seeds))
                rows.append({"run_id": f"{series}-{scale}-{x}-{seed}", "series": series, **fixed, axis: scale,
                             "lr": 2.0 ** x, "seed": seed, "status": "done", "final_train_loss": loss,
                             "final_test_loss": loss + 0.1, "final_test_acc": 0.5, "diverged_at_step": math.nan,
                             "optimizer": "adam", "steps": 100, "wall_seconds": 1.0 + seed + x * 0.01,
                             "git_sha": "abc", **extra})
    return pd.DataFrame(rows)


def diverge(runs, where):
    runs.loc[where, ["status", "final_train_loss", "final_test_loss"]] = ["diverged", math.nan, math.nan]
    return runs


GRID = list(range(-8, 1))  # 2^-8 .. 2^0


# ----------------------------------------------------------------------------- optimum

def test_grid_argmin_and_exact_parabola_vertex():
    o = optimum([2.0 ** x for x in GRID], [(x + 3.3) ** 2 for x in GRID])
    assert o["lr_grid"] == 2.0 ** -3
    assert o["loss_grid"] == pytest.approx(0.3 ** 2)
    assert math.log2(o["lr_fit"]) == pytest.approx(-3.3, abs=1e-9)  # an exact parabola is recovered
    assert o["fitted"] and not o["on_edge"]


def test_parabola_on_uneven_grid_and_unsorted_input():
    xs = [-7.0, -4.0, -3.5, -1.0, 0.5]
    o = optimum([2.0 ** x for x in reversed(xs)], [(x + 3.2) ** 2 + 1 for x in reversed(xs)])
    assert math.log2(o["lr_grid"]) == -3.5
    assert math.log2(o["lr_fit"]) == pytest.approx(-3.2, abs=1e-9)


def test_optimum_edge_and_fallbacks():
    edge = optimum([1, 2, 4], [3, 2, 1])
    assert edge["on_edge"] and edge["lr_fit"] == 4 and not edge["fitted"]  # no right neighbour: grid argmin
    flat = optimum([1, 2, 4], [1, 1, 1])
    assert flat["lr_grid"] == 1 and flat["on_edge"]  # ties go to the smaller LR
    # a non-finite loss is ignored, and the grid (what was run) decides the edge
    o = optimum([1, 2, 4, 8], [2, 1, 3, math.nan], grid_lrs=[1, 2, 4, 8])
    assert o["lr_grid"] == 2 and not o["on_edge"]
    o = optimum([1, 2, 4, 8], [5, 4, 3, math.nan], grid_lrs=[1, 2, 4, 8])
    assert o["lr_grid"] == 4 and not o["on_edge"] and o["lr_fit"] == 4  # diverged above: bracketed, no fit
    nothing = optimum([1, 2], [math.nan, math.inf])
    assert math.isnan(nothing["lr_grid"]) and math.isnan(nothing["lr_fit"])


def test_fit_vertex_clipped_to_neighbours():
    # argmin at x=0 with a very asymmetric triple: the vertex of this parabola is inside anyway,
    # but must never leave [x_{i-1}, x_{i+1}]
    xs = [-1, 0, 1]
    o = optimum([2.0 ** x for x in xs], [1.0, 0.0, 1e-9])
    assert -1 <= math.log2(o["lr_fit"]) <= 1


# ----------------------------------------------------------------------------- transfer

def test_drift_and_regret_known_answers():
    runs = table({32: -2, 128: -4, 512: -5}, {32: 1.0, 128: 0.5, 512: 0.25}, GRID)
    t = transfer_table(runs)
    assert list(t["scale"]) == [32, 128, 512]
    assert set(t["axis"]) == {"width"}
    assert list(t["opt_log2_lr"]) == [-2, -4, -5]
    assert list(t["opt_lr"]) == [0.25, 2 ** -4, 2 ** -5]
    assert list(t["opt_log2_lr_fit"]) == pytest.approx([-2, -4, -5])
    assert (t["base_lr"] == 0.25).all() and (t["base_scale"] == 32).all()
    # base LR 2^-2 is 2 octaves off at 128 (regret 2^2 = 4) and 3 octaves off at 512 (regret 9)
    assert list(t["loss_at_base_lr"]) == pytest.approx([1.0, 4.5, 9.25])
    assert list(t["regret"]) == pytest.approx([0.0, 4.0, 9.0])
    assert list(t["best_loss"]) == pytest.approx([1.0, 0.5, 0.25])
    assert not t["edge"].any() and not t["too_few"].any() and (t["n_finished"] == 9).all()
    d = drift_table(t)
    assert len(d) == 1
    row = d.iloc[0]
    assert row["drift_octaves"] == 3.0 and row["drift_octaves_fit"] == pytest.approx(3.0)
    assert row["max_regret"] == pytest.approx(9.0) and row["n_scales"] == 3 and row["flags"] == ""
    # slope of log2 optimum vs log2 width: points (5,-2), (7,-4), (9,-5) -> least squares -0.75
    assert row["slope"] == pytest.approx(-0.75)


def test_off_grid_optimum_fit_drift_and_edge_flag():
    runs = table({32: -2.5, 128: -5.25, 512: -8.4}, {32: 0.0, 128: 0.0, 512: 0.0}, GRID)
    t = transfer_table(runs)
    assert list(t["opt_log2_lr_fit"][:2]) == pytest.approx([-2.5, -5.25])  # exact parabola: exact vertex
    assert list(t["opt_log2_lr"]) == [-3, -5, -8]  # ties at -2.5 go to the smaller LR
    assert t["edge"].tolist() == [False, False, True]  # 2^-8 is the grid's smallest LR
    assert t["opt_log2_lr_fit"].iloc[2] == -8  # no left neighbour: the grid argmin
    # regret at 128 of base LR 2^-3: (-3 + 5.25)^2 - (-5 + 5.25)^2
    assert t["regret"].iloc[1] == pytest.approx(2.25 ** 2 - 0.25 ** 2)
    d = drift_table(t).iloc[0]
    assert d["drift_octaves"] == 5.0 and d["drift_octaves_fit"] == pytest.approx(5.5)
    assert d["flags"] == "edge@512"


def test_seeds_are_averaged_with_std():
    runs = table({32: -2, 64: -3}, {32: 0.0, 64: 0.0}, GRID, seeds=(0, 1, 2), noise=0.3)
    t = transfer_table(runs)
    assert t["best_loss"].tolist() == pytest.approx([0.0, 0.0])  # noise averages out exactly
    assert t["best_loss_std"].tolist() == pytest.approx([0.3, 0.3])
    assert t["n_seeds"].tolist() == [3, 3]
    c = cells(runs, "train_loss", "width")
    assert len(c) == 2 * len(GRID) and (c["n_seeds"] == 3).all() and (c["n_runs"] == 3).all()
    assert c["lo"].iloc[0] == pytest.approx(c["loss"].iloc[0] - 0.3)


def test_partly_diverged_cell_uses_finished_seeds():
    runs = table({32: -2, 64: -2}, {32: 0.0, 64: 0.0}, GRID, seeds=(0, 1))
    diverge(runs, (runs["width"] == 64) & (runs["lr"] == 0.25) & (runs["seed"] == 0))
    t = transfer_table(runs)
    row = t[t["scale"] == 64].iloc[0]
    assert row["opt_log2_lr"] == -2 and row["n_seeds"] == 1 and row["n_diverged"] == 0 and row["regret"] == 0


def test_diverged_cells_excluded_and_counted_too_few_flag():
    runs = table({32: -2, 128: -4}, {32: 0.0, 128: 0.0}, [-3, -2, -1])
    t = transfer_table(runs)
    assert t["too_few"].tolist() == [False, False]
    diverge(runs, (runs["width"] == 128) & (runs["lr"] >= 0.25))
    t = transfer_table(runs)
    row = t[t["scale"] == 128].iloc[0]
    assert row["n_diverged"] == 2 and row["n_finished"] == 1 and row["n_lrs"] == 3
    assert row["too_few"] and row["opt_log2_lr"] == -3
    assert row["edge"] and not t["edge"].iloc[0]  # 2^-3 is the smallest LR run
    # the base LR 2^-2 diverged at 128: infinite regret
    assert row["base_lr_diverged"] and math.isinf(row["regret"]) and math.isnan(row["loss_at_base_lr"])
    d = drift_table(t).iloc[0]
    assert math.isinf(d["max_regret"])
    assert d["flags"] == "edge@128 too-few@128 base-lr-diverged@128"
    assert transfer_table(runs, min_runs=1)["too_few"].tolist() == [False, False]


def test_base_lr_not_run_at_a_scale():
    runs = pd.concat([table({32: -2}, {32: 0.0}, GRID), table({128: -4}, {128: 0.0}, [-6, -5, -4, -3])])
    t = transfer_table(runs)
    row = t.iloc[1]
    assert row["base_lr_missing"] and not row["base_lr_diverged"] and math.isnan(row["regret"])
    assert drift_table(t)["flags"].iloc[0] == "base-lr-not-run@128"


def test_scale_with_no_finished_runs_and_base_scale_fallback():
    runs = table({16: -2, 32: -2, 128: -4}, {16: 0.0, 32: 0.0, 128: 0.0}, GRID)
    diverge(runs, runs["width"] == 16)
    t = transfer_table(runs)
    assert t["n_finished"].tolist() == [0, 9, 9]
    assert math.isnan(t["opt_lr"].iloc[0]) and not t["edge"].iloc[0]
    assert (t["base_scale"] == 32).all() and (t["base_lr"] == 0.25).all()  # smallest scale with a finished run
    d = drift_table(t).iloc[0]
    assert d["drift_octaves"] == 2 and d["n_scales"] == 2 and "no-finished@16" in d["flags"]


def test_single_scale():
    t = transfer_table(table({64: -3}, {64: 0.5}, GRID))
    assert len(t) == 1 and t["regret"].iloc[0] == 0 and t["axis"].iloc[0] == "width"
    d = drift_table(t).iloc[0]
    assert d["drift_octaves"] == 0 and math.isnan(d["slope"])


def test_depth_axis_and_explicit_axis():
    runs = table({2: -2, 4: -3, 8: -4}, {2: 0.0, 4: 0.0, 8: 0.0}, GRID, axis="depth")
    t = transfer_table(runs)
    assert set(t["axis"]) == {"depth"} and list(t["scale"]) == [2, 4, 8]
    assert drift_table(t)["drift_octaves"].iloc[0] == 2
    with pytest.raises(UserError, match="--axis 'height'"):
        transfer_table(runs, axis="height")
    t = transfer_table(runs, axis="width")  # a constant axis: one scale per depth
    assert list(t["scale"]) == [64, 64, 64] and list(t["depth"]) == [2, 4, 8]


def test_width_by_depth_grid_analyses_both_axes():
    runs = pd.concat([table({32: -2, 128: -4}, {32: 0.0, 128: 0.0}, GRID, fixed={"depth": d})
                      .assign(run_id=lambda r, d=d: r["run_id"] + f"-d{d}") for d in (2, 4)])
    t = transfer_table(runs)
    width_rows, depth_rows = t[t["axis"] == "width"], t[t["axis"] == "depth"]
    assert len(width_rows) == 4 and len(depth_rows) == 4
    assert width_rows["depth"].tolist() == [2, 2, 4, 4] and width_rows["width"].isna().all()
    assert depth_rows["width"].tolist() == [32, 32, 128, 128] and depth_rows["depth"].isna().all()
    d = drift_table(t)
    assert len(d) == 4
    assert d[d["axis"] == "width"]["drift_octaves"].tolist() == [2, 2]
    assert d[d["axis"] == "depth"]["drift_octaves"].tolist() == [0, 0]
    assert json.loads(report(runs, format="json"))["drift"][0]["depth"] == 2


def test_other_varying_config_is_a_group_key_but_metadata_is_not():
    runs = pd.concat([table({32: -2, 128: -4}, {32: 0.0, 128: 0.0}, GRID, batch_size=b)
                      .assign(run_id=lambda r, b=b: r["run_id"] + f"-b{b}") for b in (64, 256)])
    runs["n_params"] = runs["width"] ** 2  # a function of the shape: not a key
    runs["lrtransfer_version"] = "0.1"
    runs["host"] = np.where(runs["seed"] == 0, "a", "b")
    assert group_keys(runs, "width") == ["batch_size"]
    t = transfer_table(runs)
    assert "batch_size" in t.columns and "n_params" not in t.columns and len(t) == 4
    d = drift_table(t)
    assert d["batch_size"].tolist() == [64, 256]
    # a key a series fixes (optimizer differs per series) is not a key
    runs2 = pd.concat([table({32: -2, 128: -4}, {32: 0.0, 128: 0.0}, GRID, series="adam"),
                       table({32: -2, 128: -2}, {32: 0.0, 128: 0.0}, GRID, series="sgd").assign(optimizer="sgd")])
    assert group_keys(runs2, "width") == []


def test_series_keep_their_order_of_first_appearance():
    runs = pd.concat([table({32: -2, 128: -4}, {32: 0.0, 128: 0.0}, GRID, series="zeta"),
                      table({32: -2, 128: -2}, {32: 0.0, 128: 0.0}, GRID, series="alpha")])
    assert list(dict.fromkeys(transfer_table(runs)["series"])) == ["zeta", "alpha"]
    assert drift_table(transfer_table(runs))["series"].tolist() == ["zeta", "alpha"]


def test_test_loss_metric():
    runs = table({32: -2, 128: -4}, {32: 1.0, 128: 0.5}, GRID)
    t = transfer_table(runs, metric="test_loss")
    assert t["best_loss"].tolist() == pytest.approx([1.1, 0.6])


# ----------------------------------------------------------------------------- report

def two_series():
    return pd.concat([table({32: -2, 128: -4}, {32: 1, 128: 0.5}, GRID, series="adam"),
                      table({32: -1, 128: -1}, {32: 1, 128: 0.5}, GRID, series="normed")])


def test_report_markdown_contains_the_numbers():
    md = report(two_series())
    assert "**drift: 2.00 octaves**" in md and "**drift: 0.00 octaves**" in md
    assert "| 128 | 2^-4 | 2^-4 | 0.5000 | 4.5000 | 4.0000 |" in md
    assert "| adam | width | 2.00 |" in md and "| normed | width | 0.00 |" in md
    off = report(table({32: -2.5, 128: -5.25}, {32: 0.0, 128: 0.0}, GRID))
    assert "2^-2.50" in off and "2^-5.25" in off and "drift: 2.00 octaves** (fitted 2.75" in off


def test_report_json_is_strict_and_complete():
    data = json.loads(report(two_series(), format="json"))
    assert data["metric"] == "train_loss" and data["column"] == "final_train_loss"
    assert {r["series"]: r["drift_octaves"] for r in data["drift"]} == {"adam": 2.0, "normed": 0.0}
    assert len(data["transfer"]) == 4
    row = data["transfer"][1]
    assert row["scale"] == 128 and row["regret"] == pytest.approx(4.0) and row["edge"] is False
    assert json.loads(report(two_series(), metric="test_loss", format="json"))["transfer"][0]["best_loss"] == \
        pytest.approx(1.1)


def test_json_has_no_nan_and_writes_inf_as_string():
    runs = table({32: -2, 128: -4}, {32: 0.0, 128: 0.0}, [-3, -2, -1])
    diverge(runs, (runs["width"] == 128) & (runs["lr"] == 0.25))
    text = report(runs, format="json")
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    row = data["transfer"][1]
    assert row["regret"] == "inf" and row["loss_at_base_lr"] is None and row["base_lr_diverged"] is True
    assert data["drift"][0]["max_regret"] == "inf"


def test_report_csv_parses_with_drift_merged():
    text = report(two_series(), format="csv")
    df = pd.read_csv(io.StringIO(text))
    assert len(df) == 4 and list(df.columns[:3]) == ["series", "axis", "scale"]
    assert df["drift_octaves"].tolist() == [2.0, 2.0, 0.0, 0.0]
    assert df["regret"].tolist() == pytest.approx([0.0, 4.0, 0.0, 0.0])


def test_bad_input():
    runs = table({32: -2}, {32: 0.0}, GRID)
    with pytest.raises(UserError, match="--metric 'accuracy'.*train_loss, test_loss"):
        transfer_table(runs, metric="accuracy")
    with pytest.raises(UserError, match="--metric 'accuracy'"):
        report(runs, metric="accuracy")
    with pytest.raises(UserError, match="--format 'html'"):
        report(runs, format="html")
    with pytest.raises(UserError, match="no final_test_loss column"):
        transfer_table(runs.drop(columns="final_test_loss"), metric="test_loss")
    with pytest.raises(UserError, match="no scale column"):
        transfer_table(runs.drop(columns=["width", "depth"]))
    with pytest.raises(UserError, match="no runs"):
        transfer_table(pd.DataFrame())
    with pytest.raises(UserError, match="lr must be > 0|learning rates must be > 0"):
        transfer_table(runs.assign(lr=0.0))
    runs["status"] = "diverged"
    with pytest.raises(UserError, match="no finished runs"):
        transfer_table(runs)
    runs["status"] = "failed"
    with pytest.raises(UserError, match="no finished runs"):
        report(runs)
