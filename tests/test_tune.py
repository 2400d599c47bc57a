"""Tune small, transfer big, on the quickstart experiment (shortened for CI)."""
import math
from pathlib import Path

import pytest

from lrtransfer.store import ResultStore
from lrtransfer.sweep import load_experiment, run_sweep
from lrtransfer.tune import SearchParam, tune, tune_table
from lrtransfer.errors import UserError

QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.toml"
SHORT = ["steps=120", "width=[32,64]", "data.samples=8000"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    exp = load_experiment(QUICKSTART, SHORT)
    runs = run_sweep(exp, root, device="cpu", jobs=1, progress=False).runs
    return exp, root, runs


def test_tune_finds_the_grid_optimum_in_fewer_runs(grid):
    exp, root, runs = grid
    results = tune(exp, trials=8, results_dir=root, device="cpu", seed=0)
    assert {r.series for r in results} == {"adam", "normed_adam"}
    for r in results:
        grid_runs = int((runs["series"] == r.series).sum())
        assert r.grid_runs == grid_runs
        tune_runs = r.trials + len(r.rows) - 1
        assert tune_runs < grid_runs, (r.series, tune_runs, grid_runs)
        assert r.octaves_from_grid is not None and r.octaves_from_grid <= 1.0, (r.series, r.lr, r.grid_base_lr)
        assert [row["scale"] for row in r.rows] == [32, 64]
        assert all(math.isfinite(row["regret"]) for row in r.rows)
        assert r.target_tuning_seconds > 0 and r.tune_seconds > 0
    t = tune_table(results)
    assert set(t.columns) >= {"series", "scale", "tuned_lr", "loss", "grid_best", "regret"}
    # resumable: a second call runs nothing new
    before = len(ResultStore(root / "tune").load_runs())
    tune(exp, trials=8, results_dir=root, device="cpu", seed=0)
    assert len(ResultStore(root / "tune").load_runs()) == before


def test_tune_bad_input(grid):
    exp, root, _ = grid
    with pytest.raises(UserError, match="--series 'lion': not in the experiment"):
        tune(exp, series=["lion"], results_dir=root)
    with pytest.raises(UserError, match="--param"):
        SearchParam.parse("weight_decay=1:0")
    assert SearchParam.parse("weight_decay=1e-5:1e-1:log") == SearchParam("weight_decay", 1e-5, 0.1, True)
