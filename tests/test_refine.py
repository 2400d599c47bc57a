"""sweep --until decided: the planner on synthetic tables, the rounds on a synthetic objective
(a cheap function of lr, width and seed standing in for training), budgets, resuming."""
import json
import math
import uuid
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from conftest import invoke
from lrtransfer.errors import UserError
from lrtransfer.sweep.refine import (Budget, dominant_scales, parse_budget, plan_round, seeds_needed)

LOG2_LRS = [-9, -8, -7, -6, -5, -4, -3]


# ----------------------------------------------------------------------------- the budget

@pytest.mark.parametrize("text", ["30x", "0", "-5", "0m", "", "m", "-2h"])
def test_a_bad_budget_is_a_user_error_naming_it(text):
    with pytest.raises(UserError, match=r"--budget .*allowed: a run count"):
        parse_budget(text)


def test_budgets_are_runs_or_wall_time():
    assert parse_budget("200") == Budget(runs=200)
    assert parse_budget("30m") == Budget(seconds=1800.0)
    assert parse_budget("90s") == Budget(seconds=90.0)
    assert parse_budget("1.5h") == Budget(seconds=5400.0)


# ----------------------------------------------------------------------------- the planner

def test_seeds_needed_scales_the_half_width_as_one_over_root_n():
    # half-width 0.6 around -1.3: 0.3 from the boundary -1, so n·(0.6/0.3)² = 12 seeds make the
    # half-width equal the distance; one more makes it smaller
    assert seeds_needed(-1.9, -0.7, 3, tolerance=1.0) == 13
    assert seeds_needed(-0.5, 0.5, 3) == 3                     # already decided
    assert math.isinf(seeds_needed(-2.0, 0.0, 3))              # centred on -1: no n decides it
    assert math.isnan(seeds_needed(math.nan, 1.0, 3))


def _runs(opt, widths=(8, 32), seeds=(0, 1), log2_lrs=LOG2_LRS, series="adam"):
    """A runs table of the objective 1 + 0.05·(log2 lr − opt(width, seed))²."""
    rows = []
    for w in widths:
        for s in seeds:
            for x in log2_lrs:
                rows.append({"run_id": f"{series}-{w}-{x}-{s}", "series": series, "width": w, "lr": 2.0 ** x,
                             "seed": s, "status": "done", "final_train_loss": 1 + 0.05 * (x - opt(w, s)) ** 2})
    return pd.DataFrame(rows)


def _tables(rows, verdict="inconclusive", n_seeds=2, drift_ci=(-1.5, 0.5)):
    """A hand-made transfer table (``rows``: scale, opt, fit_lo, fit_hi, edge) and its verdict row."""
    transfer = pd.DataFrame([{"series": "adam", "axis": "width", "scale": sc, "opt_log2_lr": opt,
                              "opt_log2_lr_fit": opt, "opt_log2_lr_fit_lo": lo, "opt_log2_lr_fit_hi": hi,
                              "edge": edge, "n_seeds": n_seeds} for sc, opt, lo, hi, edge in rows])
    verdicts = pd.DataFrame([{"series": "adam", "axis": "width", "verdict": verdict, "n_seeds": n_seeds,
                              "drift_ci_lo": drift_ci[0], "drift_ci_hi": drift_ci[1], "flags": ""}])
    return transfer, verdicts


def test_an_optimum_on_the_lower_edge_extends_the_window_one_octave_below():
    runs = _runs(lambda w, s: -6 if w == 8 else -10)
    transfer, verdicts = _tables([(8, -6, -6.5, -5.5, False), (32, -9, -9, -9, True)])
    cells = plan_round(runs, transfer, verdicts)
    # only the edge: the window at width 32 with both seeds; no seeds or finer LRs while it blocks
    assert {(c.scale, c.log2_lr, c.seed, c.kind) for c in cells} == {(32, -10, 0, "window"), (32, -10, 1, "window")}
    assert "lowest LR run (2^-9)" in cells[0].reason


def test_an_optimum_on_the_upper_edge_of_a_half_octave_grid_gets_two_points_above():
    runs = _runs(lambda w, s: -2, log2_lrs=[-5, -4.5, -4, -3.5, -3])
    transfer, verdicts = _tables([(8, -3, -3, -3, True), (32, -3, -3, -3, True)])
    cells = plan_round(runs, transfer, verdicts)
    assert {(c.scale, c.log2_lr) for c in cells} == {(8, -2.5), (8, -2), (32, -2.5), (32, -2)}
    assert all(c.kind == "window" for c in cells) and len(cells) == 8   # 2 seeds each


def test_a_wide_ci_at_the_base_scale_puts_the_new_seeds_there():
    runs = _runs(lambda w, s: -6)
    # the base scale's optimum CI is ten times wider: it holds (10/1)² of the drift's variance
    transfer, verdicts = _tables([(8, -6, -8.0, -4.0, False), (32, -6, -6.2, -5.8, False)],
                                 drift_ci=(-1.5, 0.5))
    cells = plan_round(runs, transfer, verdicts)
    seeds = [c for c in cells if c.kind == "seeds"]
    # drift CI [-1.5, 0.5]: half-width 1, centre -0.5, 0.5 from -1 → 2·(1/0.5)² + 1 = 9 seeds
    # needed; a round at most doubles them: seeds 2 and 3, at the optimum ±2 LRs (-8 … -4)
    assert {c.scale for c in seeds} == {8}
    assert {(c.log2_lr, c.seed) for c in seeds} == {(x, s) for x in (-8, -7, -6, -5, -4) for s in (2, 3)}
    assert "≈9 seeds" in seeds[0].reason
    # and half-octave LRs around each scale's optimum, for every seed it will have
    lrs = {(c.scale, c.log2_lr, c.seed) for c in cells if c.kind == "lrs"}
    assert lrs == {(8, x, s) for x in (-6.5, -5.5) for s in range(4)} | {(32, x, s) for x in (-6.5, -5.5)
                                                                          for s in range(2)}


def test_the_middle_of_three_scales_does_not_move_the_drift_and_gets_no_seeds():
    transfer, _ = _tables([(8, -6, -7, -5, False), (32, -6, -7, -5, False), (128, -6, -7, -5, False)])
    assert dominant_scales(transfer) == [8, 128]


def test_decided_verdicts_and_cells_already_run_add_nothing():
    runs = _runs(lambda w, s: -6, log2_lrs=[-7, -6.5, -6, -5.5, -5])
    transfer, verdicts = _tables([(8, -6, -6.1, -5.9, False), (32, -6, -6.1, -5.9, False)], verdict="transfers")
    assert plan_round(runs, transfer, verdicts) == []
    transfer, verdicts = _tables([(8, -6, -6.1, -5.9, False), (32, -6, -6.1, -5.9, False)], drift_ci=(-1.2, 0.0))
    cells = plan_round(runs, transfer, verdicts)
    assert all(c.kind == "seeds" for c in cells)               # the LR grid is already half-octave
    present = set(zip(runs["width"], np.round(np.log2(runs["lr"]), 6), runs["seed"]))
    assert not {(c.scale, c.log2_lr, c.seed) for c in cells} & present


# ----------------------------------------------------------------------------- the rounds

SIGMA = 0.3   # seed-to-seed spread of the optimum, octaves


def objective(values: dict) -> float:
    """The synthetic objective: a parabola in log2 lr whose vertex is -6 at every width plus
    seed noise (a deterministic draw per width and seed): the optimum transfers."""
    z = np.random.default_rng([int(values["width"]), int(values["seed"])]).standard_normal()
    return 1.0 + 0.05 * (math.log2(values["lr"]) - (-6 + SIGMA * z)) ** 2


class FakeTraining:
    """``worker.execute`` replaced by ``objective``: counts the runs it finished, per run id;
    ``interrupt_at``: raise KeyboardInterrupt (a Ctrl-C, a kill) on that call."""

    def __init__(self, interrupt_at=None):
        self.finished = Counter()
        self.calls = 0
        self.interrupt_at = interrupt_at

    def __call__(self, values, *args, **kwargs):
        from lrtransfer.run.train import RunResult
        from lrtransfer.sweep.config import run_id
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        rid = run_id(values)
        loss = objective(values)
        row = {**values, "run_id": rid, "status": "done", "error": None, "diverged_at_step": math.nan,
               "final_train_loss": loss, "final_test_loss": loss, "final_test_acc": 0.5, "wall_seconds": 0.01}
        self.finished[rid] += 1
        return RunResult(row=row, curves=pd.DataFrame({"run_id": [rid], "step": [1], "train_loss": [loss],
                                                       "test_loss": [loss], "lr": [values["lr"]]}))


EXPERIMENT = {"data": {"dataset": "mnist1d", "samples": 600},
              "model": {"arch": "mlp", "depth": 1, "block_depth": 1},
              "train": {"steps": 5, "batch_size": 16, "log_every": 5, "final_k": 1, "eval_examples": 32,
                        "batch_cells": "off", "diagnostics": False},
              "grid": {"width": [8, 32]}, "seeds": 2,
              "series": {"adam": {"lr": {"log2": [-9, -3], "step": 1}}}}


@pytest.fixture
def fake(monkeypatch):
    from lrtransfer.sweep import worker as worker_module
    training = FakeTraining()
    monkeypatch.setattr(worker_module, "execute", training)
    return training


def _refine(root, budget, name, **kw):
    from lrtransfer.sweep import experiment_from_dict, run_refinement
    exp = experiment_from_dict(EXPERIMENT, name)
    return run_refinement(exp, budget, root, jobs=1, device="cpu", progress=False, n_boot=200, **kw)


def test_refinement_reaches_a_decided_verdict_and_records_its_rounds(tmp_path, fake):
    from lrtransfer.report.results import results_report
    result = _refine(tmp_path, Budget(runs=400), f"refine-{uuid.uuid4().hex[:8]}")
    assert result.stopped == "decided" and result.verdicts["verdict"].tolist() == ["transfers"]
    record = json.loads((tmp_path / "refinement.json").read_text())
    added = [c for r in record["rounds"] for c in r["cells"]]
    assert len(record["rounds"]) >= 1 and all(r["status"] == "done" for r in record["rounds"])
    assert {c["kind"] for c in added} <= {"seeds", "lrs", "window"} and all(c["reason"] for c in added)
    # every cell ran once: the grid's 28 and the refinement's
    assert sum(fake.finished.values()) == 28 + len(added) and max(fake.finished.values()) == 1
    runs = result.runs
    assert len(runs) == 28 + len(added) and runs["seed"].max() >= 2     # seeds beyond the grid's 0, 1
    # the fitted optimum is the seed mean of the vertices: near -6 at both widths
    report = results_report(tmp_path, n_boot=200)
    assert f"refined runs per series: adam {len(added)}" in report
    assert json.loads(results_report(tmp_path, format="json", n_boot=200))["refinement"]["runs"] == {"adam": len(added)}


def test_refinement_stops_at_a_run_budget(tmp_path, fake):
    result = _refine(tmp_path, Budget(runs=5), f"budget-{uuid.uuid4().hex[:8]}")
    assert result.stopped == "budget"
    record = json.loads((tmp_path / "refinement.json").read_text())
    assert sum(len(r["cells"]) for r in record["rounds"]) == 5 and sum(fake.finished.values()) == 28 + 5
    # the same command again: the budget is spent over restarts, nothing more runs
    again = _refine(tmp_path, Budget(runs=5), record["experiment"])
    assert again.stopped == "budget" and sum(fake.finished.values()) == 28 + 5


def test_a_killed_refinement_resumes_without_running_a_cell_twice(tmp_path, monkeypatch):
    from lrtransfer.sweep import worker as worker_module
    from lrtransfer.sweep.sweep import SweepInterrupted
    name = f"resume-{uuid.uuid4().hex[:8]}"
    reference = FakeTraining()
    monkeypatch.setattr(worker_module, "execute", reference)
    whole = _refine(tmp_path / "whole", Budget(runs=400), name)
    first_round = len(json.loads((tmp_path / "whole" / "refinement.json").read_text())["rounds"][0]["cells"])
    assert len(whole.record.rounds) >= 2, "the test needs a second round to interrupt"

    # killed in the middle of round 2 (after the grid's 28 runs and round 1)
    killed = FakeTraining(interrupt_at=28 + first_round + 3)
    monkeypatch.setattr(worker_module, "execute", killed)
    with pytest.raises(SweepInterrupted, match="refinement round 2"):
        _refine(tmp_path / "killed", Budget(runs=400), name)
    record = json.loads((tmp_path / "killed" / "refinement.json").read_text())
    assert [r["status"] for r in record["rounds"]] == ["done", "running"]   # round 2 recorded before it ran
    resumed = FakeTraining()
    monkeypatch.setattr(worker_module, "execute", resumed)
    final = _refine(tmp_path / "killed", Budget(runs=400), name)
    both = killed.finished + resumed.finished
    assert max(both.values()) == 1                            # no cell ran twice
    assert set(both) == set(reference.finished)               # the same cells as the uninterrupted refinement
    assert final.stopped == whole.stopped == "decided"

    def cells(rec):
        return [[{k: c[k] for k in ("run_id", "kind", "reason")} for c in r["cells"]] for r in rec.rounds]
    assert cells(final.record) == cells(whole.record)


def test_cli_until_decided_checks_its_options_and_dry_run_estimates(tmp_path, fake):
    exp = tmp_path / "exp.toml"
    lines = ['seeds = 2', '[data]', 'dataset = "mnist1d"', 'samples = 600', '[model]', 'arch = "mlp"',
             'depth = 1', 'block_depth = 1', '[train]', 'steps = 5', 'batch_size = 16', 'eval_examples = 32',
             'batch_cells = "off"', 'diagnostics = false', '[grid]', 'width = [8, 32]', '[series.adam]',
             'lr = { log2 = [-9, -3], step = 1 }']
    exp.write_text("\n".join(lines) + "\n")
    res = tmp_path / "res"
    for bad in ("30x", "0", "-3"):
        r = invoke("sweep", exp, "--results", res, "--until", "decided", "--budget", bad)
        assert r.exit_code == 2 and "--budget" in r.output and repr(bad) in r.output
    r = invoke("sweep", exp, "--results", res, "--until", "decided")
    assert r.exit_code == 2 and "--budget" in r.output
    r = invoke("sweep", exp, "--results", res, "--until", "decided", "--dry-run", "--budget", "30x")
    assert r.exit_code == 2 and "--budget '30x'" in r.output
    r = invoke("sweep", exp, "--results", res, "--until", "decided", "--budget", "10", "--rerun")
    assert r.exit_code == 2 and "--rerun" in r.output
    r = invoke("sweep", exp, "--results", res, "--budget", "10")
    assert r.exit_code == 2 and "--until" in r.output
    r = invoke("sweep", exp, "--results", res, "--until", "soon", "--budget", "10")
    assert r.exit_code == 2 and "--until 'soon'" in r.output and "decided" in r.output
    assert not (res / "refinement.json").exists()
    r = invoke("sweep", exp, "--results", res, "--device", "cpu", "--jobs", "1", "--quiet")   # the grid
    assert r.exit_code == 0, r.output
    r = invoke("sweep", exp, "--results", res, "--until", "decided", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "adam (width): drift CI" in r.output and "1/√n" in r.output
    assert not (res / "refinement.json").exists()           # a dry run writes nothing
    r = invoke("sweep", exp, "--results", res, "--device", "cpu", "--jobs", "1", "--until", "decided",
               "--budget", "6")
    assert r.exit_code == 0, r.output
    assert "refinement round 1: +6 runs" in r.output and "budget 6 runs spent" in r.output


def test_a_time_budget_cuts_a_round_to_what_the_time_left_buys():
    from lrtransfer.sweep.refine import Record
    from lrtransfer.sweep.rounds import _affordable
    record = Record("x", rounds=[{"round": 1, "seconds": 4.0, "cells": [{"run_id": "a"}]}])
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "wall_seconds": [1.0, 2.0, 9.0]})   # median 2 s a run
    # 10 s budget, 4 s recorded and 1 s spent in this call: 5 s left buy 2 runs on 1 worker, 5 on 2
    assert _affordable(Budget(seconds=10.0), record, 1.0, runs, jobs=1) == 2
    assert _affordable(Budget(seconds=10.0), record, 1.0, runs, jobs=2) == 5
    assert _affordable(Budget(seconds=10.0), record, 6.0, runs, jobs=1) == 0
    assert _affordable(Budget(runs=3), record, 0.0, runs, jobs=1) == 2


def test_the_dry_run_estimate_names_seeds_scales_and_edges():
    from lrtransfer.sweep.refine import describe_estimate, estimate_seeds
    transfer, verdicts = _tables([(8, -6, -8.0, -4.0, False), (32, -6, -6.2, -5.8, False)], drift_ci=(-1.5, 0.5))
    [entry] = estimate_seeds(verdicts, transfer)
    assert entry["seeds_needed"] == 9 and entry["scales"] == [8] and entry["edge"] == [] and entry["n_seeds"] == 2
    assert "≈9 seeds per scale decide it (+7 at width 8)" in describe_estimate([entry])[0]
    transfer, verdicts = _tables([(8, -6, -6.5, -5.5, False), (32, -9, -9, -9, True)])
    [entry] = estimate_seeds(verdicts, transfer)
    assert entry["edge"] == [32] and "grid's edge at width 32" in describe_estimate([entry])[0]
    assert describe_estimate([]) == ["every verdict is decided: nothing to refine"]


def test_the_planner_reads_real_tables_with_group_keys():
    """A width x depth grid: each depth is its own width group (and each width a depth group);
    only depth 2 has its optimum off the grid at width 32, so only its window is widened."""
    from lrtransfer.analysis.transfer import analyse
    runs = pd.concat([_runs(lambda w, s, d=d: -10 if (d == 2 and w == 32) else -6 + 0.1 * s, seeds=(0, 1, 2))
                      .assign(depth=d, run_id=lambda t, d=d: t["run_id"] + f"-{d}") for d in (1, 2)])
    transfer, verdicts = analyse(runs, n_boot=100)
    cells = plan_round(runs, transfer, verdicts)
    window = {(c.axis, c.keys, c.scale, c.log2_lr) for c in cells if c.kind == "window"}
    # the same runs seen from the width axis (depth 2, width 32) and from the depth axis (width 32,
    # depth 2): planned once
    assert {(dict(k).get("depth", s if a == "depth" else None), dict(k).get("width", s if a == "width" else None), x)
            for a, k, s, x in window} == {(2, 32, -10.0)}
    assert len([c for c in cells if c.kind == "window"]) == 3          # seeds 0, 1, 2
    assert len({c.identity() for c in cells}) == len(cells)
