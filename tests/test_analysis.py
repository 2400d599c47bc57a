"""Transfer numbers checked on synthetic runs tables with known answers."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from lrtransfer.analysis import drift_table, optimum, report, transfer_table
from lrtransfer.errors import UserError


def table(centres: dict, offsets: dict, log2_lrs, series="s", seeds=(0,), noise=0.0):
    """loss(lr, width) = (log2 lr - centre[width])^2 + offset[width] exactly."""
    rows = []
    for width, c in centres.items():
        for x in log2_lrs:
            for seed in seeds:
                loss = (x - c) ** 2 + offsets[width] + noise * (seed - np.mean(seeds))
                rows.append({"run_id": f"{series}-{width}-{x}-{seed}", "series": series, "width": width,
                             "depth": 2, "lr": 2.0 ** x, "seed": seed, "status": "done",
                             "final_train_loss": loss, "final_test_loss": loss + 0.1,
                             "diverged_at_step": math.nan, "optimizer": "adam"})
    return pd.DataFrame(rows)


GRID = list(range(-8, 1))  # 2^-8 .. 2^0


def test_grid_argmin_and_exact_parabola_vertex():
    o = optimum([2.0 ** x for x in GRID], [(x + 3.3) ** 2 for x in GRID])
    assert o["lr_grid"] == 2.0 ** -3
    assert math.log2(o["lr_fit"]) == pytest.approx(-3.3, abs=1e-9)  # an exact parabola is recovered
    assert not o["on_edge"]
    assert optimum([1, 2, 4], [3, 2, 1])["on_edge"]


def test_drift_and_regret_known_answers():
    runs = table({32: -2, 128: -4, 512: -5}, {32: 1.0, 128: 0.5, 512: 0.25}, GRID)
    t = transfer_table(runs)
    assert list(t["scale"]) == [32, 128, 512]
    assert list(t["opt_log2_lr"]) == [-2, -4, -5]
    # at width 512 the base LR 2^-2 is 3 octaves off: regret = 3^2 = 9
    assert list(t["regret"]) == pytest.approx([0.0, 4.0, 9.0])
    assert list(t["best_loss"]) == pytest.approx([1.0, 0.5, 0.25])
    d = drift_table(t)
    assert d["drift_octaves"].iloc[0] == 3.0 and d["max_regret"].iloc[0] == pytest.approx(9.0)
    assert d["flags"].iloc[0] == ""


def test_off_grid_optimum_fit_and_edge_flag():
    runs = table({32: -2.5, 128: -8.4}, {32: 0.0, 128: 0.0}, GRID)
    t = transfer_table(runs)
    assert t["opt_log2_lr_fit"].iloc[0] == pytest.approx(-2.5)
    assert t["edge"].tolist() == [False, True]        # 2^-8 is the grid's smallest LR
    assert drift_table(t)["flags"].iloc[0] == "edge@128"


def test_seeds_are_averaged():
    runs = table({32: -2, 64: -2}, {32: 0.0, 64: 0.0}, GRID, seeds=(0, 1, 2), noise=0.3)
    t = transfer_table(runs)
    assert t["best_loss"].tolist() == pytest.approx([0.0, 0.0])  # noise averages out exactly


def test_diverged_and_too_few():
    runs = table({32: -2, 128: -4}, {32: 0.0, 128: 0.0}, [-3, -2, -1])
    t = transfer_table(runs)
    assert t["too_few"].tolist() == [False, False]
    runs.loc[(runs["width"] == 128) & (runs["lr"] == 0.25), ["status", "final_train_loss"]] = ["diverged", math.nan]
    runs.loc[(runs["width"] == 128) & (runs["lr"] == 0.5), ["status", "final_train_loss"]] = ["diverged", math.nan]
    t = transfer_table(runs)
    row = t[t["scale"] == 128].iloc[0]
    assert row["n_diverged"] == 2 and row["too_few"] and row["opt_log2_lr"] == -3
    assert row["base_lr_diverged"] and math.isinf(row["regret"])


def test_report_formats():
    runs = pd.concat([table({32: -2, 128: -4}, {32: 1, 128: 0.5}, GRID, series="adam"),
                      table({32: -1, 128: -1}, {32: 1, 128: 0.5}, GRID, series="normed")])
    md = report(runs)
    assert "**drift: 2.00 octaves**" in md and "**drift: 0.00 octaves**" in md and "| 128 | 2^-4 |" in md
    data = json.loads(report(runs, format="json"))
    drifts = {r["series"]: r["drift_octaves"] for r in data["drift"]}
    assert drifts == {"adam": 2.0, "normed": 0.0}
    csv = report(runs, format="csv").splitlines()
    assert csv[0].startswith("series,") and len(csv) == 5
    test = json.loads(report(runs, metric="test_loss", format="json"))
    assert test["transfer"][0]["best_loss"] == pytest.approx(1.1)


def test_json_has_no_nan():
    runs = table({32: -2, 128: -4}, {32: 0.0, 128: 0.0}, [-3, -2, -1])
    runs.loc[(runs["width"] == 128) & (runs["lr"] == 0.25), ["status", "final_train_loss"]] = ["diverged", math.nan]
    text = report(runs, format="json")
    assert "NaN" not in text and '"inf"' in text
    json.loads(text)


def test_bad_input():
    runs = table({32: -2}, {32: 0.0}, GRID)
    with pytest.raises(UserError, match="--metric 'accuracy'"):
        transfer_table(runs, metric="accuracy")
    runs["status"] = "diverged"
    with pytest.raises(UserError, match="no finished runs"):
        transfer_table(runs)
    with pytest.raises(UserError, match="no runs"):
        transfer_table(pd.DataFrame())
