"""Tune small, transfer big, on the quickstart experiment (shortened for CI)."""
import math
from pathlib import Path

import pytest

from lrtransfer.results.store import ResultStore
from lrtransfer.sweep import load_experiment, run_sweep
from lrtransfer.sweep.tune import SearchParam, tune, tune_table
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
        # the grid's optimum's law at each scale: with two scales it passes through both fitted optima
        assert sorted(r.law) == [32, 64] and all(lo <= lr <= hi for lr, lo, hi in r.law.values())
    t = tune_table(results)
    assert set(t.columns) >= {"series", "scale", "tuned_lr", "loss", "grid_best", "regret", "law_lr"}
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


# ----------------------------------------------------------------------------- compute and output

def _mlp_values(tmp_path, width=16, batch=5):
    from conftest import TINY_DATA_MODEL
    exp = tmp_path / "mlp.toml"
    exp.write_text(TINY_DATA_MODEL + f"[train]\nsteps = 7\nbatch_size = {batch}\n[grid]\nwidth = [{width}]\n"
                   "[series.adam]\nlr = [0.01]\n")
    return load_experiment(exp).cells()[0].values


def test_training_flops_match_a_hand_count_for_a_small_mlp(tmp_path):
    from lrtransfer.run.flops import FlopCounter, run_step_flops
    values = _mlp_values(tmp_path)
    # ResMLP, one block of one Linear: 40 -> 16 (input), 16 -> 16 (block), 16 -> 10 (head); batch 5.
    # forward 2·B·Σ in·out; backward: the weight gradients cost the same again, the input
    # gradients the same for every Linear but the first (its input needs none); Adam adds no products
    forward = 2 * 5 * (40 * 16 + 16 * 16 + 16 * 10)
    hand = forward + forward + 2 * 5 * (16 * 16 + 16 * 10)
    assert hand == 25280
    assert run_step_flops(values) == (hand, hand)   # plain Adam: every step alike
    counter = FlopCounter()
    assert counter.run({**values, "status": "done"}) == 7 * hand
    assert counter.run({**values, "status": "diverged", "diverged_at_step": 3.0}) == 3 * hand
    assert counter.per_step({**values, "lr": 0.5, "seed": 4, "wall_seconds": 9.0}) == hand   # same shape


def test_normalized_training_flops_count_the_cold_start_once(tmp_path, monkeypatch):
    from lrtransfer.run.flops import FlopCounter, run_step_flops
    from lrtransfer.modular.atoms import Tracked
    monkeypatch.setattr(Tracked, "align_floor", 0.0)   # no data-dependent refinement on the counted step
    values = {**_mlp_values(tmp_path), "update": "normalize"}
    forward = 2 * 5 * (40 * 16 + 16 * 16 + 16 * 10)
    plain = forward + forward + 2 * 5 * (16 * 16 + 16 * 10)
    # each atom's update as (rows, cols), cols the smaller side: input (40, 16), block (16, 16), head (16, 10)
    shapes, r = [(40, 16), (16, 16), (16, 10)], 8
    # first step: the cold start's Gram matrix MᵀM of each update
    cold = sum(2 * cols * cols * rows for rows, cols in shapes)
    # later steps: one block power step, B = M·Q, U = MᵀB, P = BᵀB, S = UᵀU, the next block T·U,
    # and the Ritz step's two r×r×r products for WᵀSW and one for W·E
    warm = sum(2 * rows * cols * r * 2 + 2 * r * r * rows + 2 * r * r * cols + 2 * r * r * cols
               for rows, cols in shapes) + len(shapes) * 3 * 2 * r ** 3
    assert run_step_flops(values) == (plain + cold, plain + warm)
    assert FlopCounter().run({**values, "status": "done"}) == plain + cold + 6 * (plain + warm)


def test_tune_output_is_rounded_with_regret_clipped_at_zero():
    from lrtransfer.report.tune import render_tune
    from lrtransfer.sweep.tune import TuneResult, regret
    assert regret(0.49, 0.5, "train_loss") == 0.0 and regret(0.6, 0.5, "train_loss") == pytest.approx(0.1)
    assert regret(0.8, 0.9, "test_acc") == pytest.approx(0.1) and regret(0.95, 0.9, "test_acc") == 0.0
    r = TuneResult(series="adam", axis="width", base_scale=32, lr=2 ** -7.123456789, params={}, trials=8,
                   rows=[{"scale": 32, "loss": 1.0 / 3, "status": "done", "grid_best": 0.3, "regret": 1.0 / 30},
                         {"scale": 128, "loss": 0.2, "status": "done", "grid_best": 0.25, "regret": 0.0}],
                   grid_runs=27, grid_base_lr=2 ** -7.0, tune_seconds=12.3456, target_tuning_seconds=45.678,
                   tune_flops=9 * 10 ** 9, target_tuning_flops=36 * 10 ** 9, grid_flops=81 * 10 ** 9,
                   law={128: (2 ** -8, 2 ** -9.5, 2 ** -6.5)})
    text = render_tune([r])
    # beside the transferred LR, the one the grid's optimum's law predicts (none for width 32 here)
    assert "| 32 | done | 0.3333 | 0.3000 | 0.0333 | — |" in text
    assert "| 128 | done | 0.2000 | 0.2500 | 0.0000 | 2^-8.00 [-9.50, -6.50] |" in text
    assert "tuned LR 2^-7.12 at width=32 in 8 runs" in text and "0.12 octaves away" in text
    assert "| 32 | done | 0.3333 | 0.3000 | 0.0333 |" in text and "| 128 | done | 0.2000 | 0.2500 | 0.0000 |" in text
    assert "9 GFLOP to tune small and transfer (9 runs) vs 36 GFLOP" in text and "(4.0x)" in text
    assert "the full grid: 81 GFLOP in 27 runs" in text and "12.3 s vs ~45.7 s" in text
    assert "0.333333" not in text
    import json
    doc = json.loads(render_tune([r], "json"))
    assert doc["scales"][0]["loss"] == 0.333333 and doc["compute"][0]["flops_ratio"] == 4.0
    assert render_tune([r], "csv").splitlines()[1] == "adam,width,32,0.00717176,-7.12346,0.333333,0.3,0.0333333,done,,,"
    assert render_tune([r], "csv").splitlines()[2].endswith(",done,0.00390625,0.00138107,0.0110485")


def _toml(path, width: str):
    from conftest import TINY_DATA_MODEL
    path.write_text(TINY_DATA_MODEL + f"[train]\nsteps = 7\n[grid]\nwidth = {width}\n[series.adam]\nlr = [0.01, 0.1]\n")
    return path


def test_tune_without_a_scale_axis_says_so_and_names_no_none(tmp_path):
    from conftest import invoke
    one, two = _toml(tmp_path / "one.toml", "[16]"), _toml(tmp_path / "two.toml", "[16, 32]")
    r = invoke("tune", one, "--results", tmp_path / "r", "--device", "cpu", "--trials", "1")
    assert r.exit_code == 2 and "varies neither width nor depth" in r.output and "None" not in r.output
    r = invoke("tune", two, "--axis", "depth", "--results", tmp_path / "r", "--device", "cpu")
    assert r.exit_code == 2 and "--axis depth: the experiment varies only width" in r.output
    r = invoke("tune", two, "--series", "adma", "--results", tmp_path / "r", "--device", "cpu")
    assert r.exit_code == 2 and "--series 'adma': not in the experiment (did you mean 'adam'?)" in r.output
    assert not (tmp_path / "r").exists()
