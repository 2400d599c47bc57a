"""Rows name their machine; `lrtransfer reproduce` re-runs a sample of a results directory here
and says whether its numbers, optima and verdicts hold (docs/results.md)."""
import json
import shutil
import tomllib

import pandas as pd
import pytest

from lrtransfer.errors import UserError
from lrtransfer.results.store import ResultStore
from lrtransfer.run.provenance import MACHINE_KEYS, is_metadata, machine, other_machine
from lrtransfer.sweep import experiment_from_dict, plan, run_sweep
from lrtransfer.sweep.reproduce import SPREADS, reproduce, sample_cells, match_cells, recorded_results

from conftest import TINY_DATA_MODEL, invoke



# two series, two widths, three LRs, two seeds: 24 cells of 12 steps
TINY = TINY_DATA_MODEL + """
[train]
steps = 12
batch_size = 32
log_every = 4
final_k = 1
eval_examples = 64
batch_cells = "off"
[grid]
width = [8, 16]
lr = [0.002, 0.008, 0.032]
seed = [0, 1]
[series.adam]
optimizer = "adam"
[series.sgd]
optimizer = "sgd"
lr = [0.05, 0.2, 0.8]
"""


def experiment():
    return experiment_from_dict(tomllib.loads(TINY), "repro")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A finished tiny sweep, written once; tests copy it before touching it."""
    root = tmp_path_factory.mktemp("repro") / "res"
    run_sweep(experiment(), root, jobs=1, progress=False)
    return root


@pytest.fixture
def results(recorded, tmp_path):
    root = tmp_path / "res"
    shutil.copytree(recorded, root)
    return root


def tamper(root, run_id, column, value):
    """Change one recorded value in the run's own file (what load_runs reads first)."""
    path = root / "runs" / f"{run_id}.parquet"
    row = pd.read_parquet(path)
    row[column] = value
    row.to_parquet(path, index=False)


def test_machine_names_this_machine_once():
    m = machine()
    assert list(m) == list(MACHINE_KEYS)
    assert all(isinstance(v, str) for v in m.values())
    assert m["machine_cpu"] and m["machine_isa"] and m["blas"]
    assert m["machine_gpu"] == ""     # a CPU run names no GPU
    import torch
    assert m["torch_build"].startswith(torch.__version__)
    assert m == machine("cpu") and m is not machine()   # stable, and a copy callers may change
    assert all(is_metadata(k) for k in MACHINE_KEYS)   # never a grouping key


def test_other_machine():
    here = machine()
    assert other_machine(dict(here), here) is False
    assert other_machine({**here, "blas": "openblas"}, here) is True
    assert other_machine({"run_id": "x"}, here) is None              # recorded before rows named machines
    assert other_machine({k: float("nan") for k in MACHINE_KEYS}, here) is None


def test_rows_record_the_machine(recorded):
    runs = ResultStore(recorded).load_runs()
    assert len(runs) == 24
    for k, v in machine().items():
        assert (runs[k].fillna("") == v).all(), k


def test_old_rows_without_machine_columns_still_analyse(results):
    from lrtransfer.analysis.transfer import analyse
    runs = ResultStore(results).load_runs().drop(columns=list(MACHINE_KEYS))
    table, verdicts = analyse(runs)
    assert set(table["series"]) == {"adam", "sgd"} and len(verdicts) == 2


def test_plan_counts_cells_from_another_machine(results):
    exp = experiment()
    assert plan(exp, results, estimate=False).other_machine == 0
    runs = ResultStore(results).load_runs()
    for rid in runs["run_id"][:3]:
        tamper(results, rid, "machine_cpu", "Some Other CPU")
    for rid in runs["run_id"][3:5]:
        tamper(results, rid, "blas", None)
        for k in MACHINE_KEYS:
            tamper(results, rid, k, None)
    p = plan(exp, results, estimate=False)
    assert (p.finished, p.other_machine, p.unknown_machine) == (24, 3, 2)   # still current by run id
    assert "3 on another machine" in p.summary() and f"lrtransfer reproduce {results}" in p.summary()


def test_sample_prefers_optima_and_is_deterministic(results):
    exp, _, runs = recorded_results(results)
    pairs, keys, _ = match_cells(exp, runs)
    assert len(pairs) == 24
    four = sample_cells(pairs, keys, 4, seed=0)
    assert four == sample_cells(pairs, keys, 4, seed=0)
    # the first four are the optimum LR of each (series, width) group, by mean over seeds
    means = runs.groupby(["series", "width", "lr"])["final_train_loss"].mean().reset_index()
    best = {(s, w): g.loc[g["final_train_loss"].idxmin(), "lr"] for (s, w), g in means.groupby(["series", "width"])}
    got = {(pairs[i][0]["series"], pairs[i][0]["width"]): pairs[i][0]["lr"] for i in four}
    assert got == best
    assert len(set(sample_cells(pairs, keys, 30, seed=3))) == 24


def test_reproduce_same_machine_is_bit_identical(results):
    before = {p.name: p.stat().st_mtime_ns for p in results.rglob("*")}
    rep = reproduce(results, cells=6)
    assert len(rep.cells) == 6 and rep.cells["identical"].all() and rep.ok
    assert (rep.cells["diff"] == 0).all() and (rep.cells["recorded_machine"] == "this").all()
    assert rep.optima["holds"].all() and rep.verdicts["holds"].all() and len(rep.verdicts) == 2
    assert {p.name: p.stat().st_mtime_ns for p in results.rglob("*")} == before   # wrote nothing
    r = invoke("reproduce", results, "--cells", 3, "--quiet")
    assert r.exit_code == 0, r.output
    assert "REPRODUCED: 3 cells" in r.stdout and "bit-identical" in r.stdout


def _first_pick(results):
    """The recorded row ``reproduce(results, cells=1)`` re-runs, and its point's rows."""
    exp, _, runs = recorded_results(results)
    pairs, keys, _ = match_cells(exp, runs)
    row = pairs[sample_cells(pairs, keys, 1)[0]][0]
    point = runs[(runs["series"] == row["series"]) & (runs["width"] == row["width"]) & (runs["lr"] == row["lr"])]
    return row, point, runs


def test_a_value_beyond_its_seed_spread_fails(results):
    row, point, _ = _first_pick(results)
    spread = point["final_train_loss"].std(ddof=1)
    # every seed of the point recorded 3 spreads lower: the spread stays, the optimum stays,
    # and the re-run cell comes back 3 spreads above its record (the rule allows 2)
    for r in point.to_dict("records"):
        tamper(results, r["run_id"], "final_train_loss", r["final_train_loss"] - 3 * spread)
    rep = reproduce(results, cells=1)
    cell = rep.cells.iloc[0]
    assert cell["run_id"] == row["run_id"] and not cell["identical"] and not cell["holds"]
    assert cell["diff"] == pytest.approx(3 * spread, rel=1e-9)
    assert cell["spread"] == pytest.approx(spread, rel=1e-9) and cell["diff_spreads"] == pytest.approx(3.0)
    assert not rep.ok and rep.summary().startswith("NOT REPRODUCED") and "1 beyond 2x" in rep.summary()
    r = invoke("reproduce", results, "--cells", 1, "--quiet", "--format", "json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["cells"][0]["holds"] is False and doc["cells"][0]["run_id"] == row["run_id"]


def test_a_moved_optimum_is_reported(results):
    row, point, runs = _first_pick(results)     # a seed at its group's optimum LR
    group = runs[(runs["series"] == row["series"]) & (runs["width"] == row["width"])]
    means = group.groupby("lr")["final_train_loss"].mean()
    runner_up = means.drop(row["lr"]).min()
    # the other seed of the optimum recorded far worse, the re-run one far better: the recorded
    # mean still makes this LR the optimum, the mean with the honest re-run value does not
    twin = point[point["run_id"] != row["run_id"]].iloc[0]
    raised = runner_up + 5.0
    tamper(results, twin["run_id"], "final_train_loss", raised)
    tamper(results, row["run_id"], "final_train_loss", 2 * runner_up - raised - 0.5)
    rep = reproduce(results, cells=1)
    # the cell itself lies within the (now wide) spread of its seeds: only the analysis sees it
    assert rep.cells.iloc[0]["run_id"] == row["run_id"] and rep.cells.iloc[0]["holds"]
    moved = rep.optima[~rep.optima["holds"]]
    assert len(moved) == 1
    at = moved.iloc[0]
    assert (at["series"], at["scale"], at["recorded_opt_lr"]) == (row["series"], row["width"], row["lr"])
    assert at["opt_lr"] == means.drop(row["lr"]).idxmin()
    assert "1 of 4 optima" in rep.summary() and not rep.ok


@pytest.mark.parametrize("args, message", [
    (["--cells", "0"], "--cells 0"),
    (["--cells", "-2"], "--cells -2"),
    (["--metric", "nope"], "--metric 'nope'"),
])
def test_bad_arguments_exit_2(results, args, message):
    r = invoke("reproduce", results, *args, "--quiet")
    assert r.exit_code == 2 and message in r.output


def test_bad_directories_exit_2(tmp_path, results):
    r = invoke("reproduce", tmp_path / "nowhere")
    assert r.exit_code == 2 and "no such results directory" in r.output
    (tmp_path / "empty").mkdir()
    r = invoke("reproduce", tmp_path / "empty")
    assert r.exit_code == 2 and "experiment.json" in r.output
    (results / "experiment.json").unlink()
    with pytest.raises(UserError, match="experiment.json"):
        reproduce(results)
