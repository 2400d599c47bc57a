"""Honest time estimates: measured run costs scheduled onto the workers (issue: speed)."""
import math

import pytest

from lrtransfer.run import spec
from lrtransfer.sweep import load_experiment, plan
from lrtransfer.sweep.estimate import (PARALLEL_SLOWDOWN, WORKER_START_SECONDS, RunCost, makespan, measure,
                                       shape_key, wall_seconds)


def test_makespan_hands_out_longest_first_to_the_least_loaded_worker():
    assert makespan([3, 3, 2, 2, 2], 2) == 7          # 3+2+2 | 3+2: LPT's known answer
    assert makespan([5, 1, 1, 1], 2) == 5
    assert makespan([1.0] * 10, 1) == 10 and makespan([], 4) == 0
    assert makespan([4, 4], 8) == 4                     # more workers than runs


def test_wall_time_accounts_for_jobs_threads_and_cores():
    d = [10.0] * 4
    assert wall_seconds(d, 1, 1, 2) == 40
    # two single-thread workers fill two cores: each run slowed by the measured contention
    assert wall_seconds(d, 2, 1, 2) == pytest.approx(20 * PARALLEL_SLOWDOWN + WORKER_START_SECONDS)
    # four workers on two cores share them: runs take twice as long, four at a time
    assert wall_seconds(d, 4, 1, 2) == pytest.approx(20 * PARALLEL_SLOWDOWN + WORKER_START_SECONDS)
    # two single-thread workers on eight cores: no sharing, no contention factor
    assert wall_seconds(d, 2, 1, 8) == pytest.approx(20 + WORKER_START_SECONDS)


def test_a_run_costs_fixed_plus_steps_plus_evaluations():
    cost = RunCost(fixed=0.5, per_step=0.01, record=0.05)
    assert cost.seconds({"steps": 300, "eval_every": 0}) == pytest.approx(0.5 + 3.0 + 0.05)
    # eval every 100 of 300 steps: two evaluations during training, each like the final one
    assert cost.seconds({"steps": 300, "eval_every": 100}) == pytest.approx(1.5 + 3.0 + 0.05)


def test_cells_differing_in_lr_seed_or_decay_share_a_shape_but_not_width():
    base = {k.name: k.default for k in spec.KEYS}
    same = [dict(base, lr=lr, seed=s, weight_decay=wd) for lr in (1e-3, 1e-2) for s in (0, 1) for wd in (0, 0.1)]
    assert len({shape_key(v) for v in same}) == 1
    assert shape_key(dict(base, width=64)) != shape_key(dict(base, width=128))
    assert shape_key(dict(base, update="normalize")) != shape_key(base)


def test_measured_cost_scales_with_steps(tmp_path):
    values = {k.name: k.default for k in spec.KEYS}
    values.update({"data.dataset": "mnist1d", "data.samples": 2000, "series": "s", "width": 32, "depth": 1,
                   "steps": 200, "log_every": 10})
    cost = measure(values, "cpu")
    assert cost.per_step > 0 and cost.fixed >= 0 and cost.record > 0
    # the per-step cost is what a longer run adds: 200 steps cost more than 20 by about 180 steps
    assert cost.seconds(values) > cost.seconds(dict(values, steps=20))


def test_dry_run_estimates_wall_time_for_the_jobs_asked(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text('seeds = 1\n[data]\ndataset = "mnist1d"\nsamples = 600\n[model]\narch = "mlp"\ndepth = 1\n'
                   '[train]\nsteps = 20\nbatch_size = 32\n[grid]\nwidth = [8, 16]\n'
                   '[series.adam]\noptimizer = "adam"\nlr = { log2 = [-8, -6], step = 1 }\n')
    one = plan(load_experiment(exp), tmp_path / "r", device="cpu", jobs=1)
    two = plan(load_experiment(exp), tmp_path / "r", device="cpu", jobs=2)
    assert one.shapes == 2 and one.todo == 6 and math.isfinite(one.estimate_seconds)
    assert one.estimate_seconds == pytest.approx(one.compute_seconds)
    assert two.estimate_seconds >= WORKER_START_SECONDS and "with --jobs 2" in two.summary()
    assert not (tmp_path / "r").exists()     # a dry run writes nothing


def test_status_eta_uses_each_shapes_measured_wall_time():
    import pandas as pd
    from lrtransfer.sweep.status import eta
    base = {k.name: k.default for k in spec.KEYS}
    runs = pd.DataFrame([dict(base, series="s", width=32, lr=0.1, seed=0, status="done", wall_seconds=2.0),
                         dict(base, series="s", width=32, lr=0.2, seed=0, status="done", wall_seconds=4.0),
                         dict(base, series="s", width=512, lr=0.1, seed=0, status="diverged", wall_seconds=30.0)])
    left = [dict(base, series="s", width=32, lr=0.4, seed=1), dict(base, series="s", width=512, lr=0.4, seed=1),
            dict(base, series="s", width=512, lr=0.8, seed=1)]
    # width 32 costs 3 s (its mean), width 512 30 s: on two workers 30 | 30 + 3
    assert eta(left, runs, workers=2) == "33 s"
    assert eta(left, runs, workers=1) == "63 s"
    assert eta(left, runs.iloc[:0], workers=1).startswith("unknown")
