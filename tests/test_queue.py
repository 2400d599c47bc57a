"""The grid as an optuna study: many workers, kill -9, resume — every cell exactly once."""
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from lrtransfer.sweep import experiment_from_dict, prepare
from lrtransfer.sweep.queue import STORAGE_ENV, redact

GRID = {"data": {"dataset": "mnist1d", "samples": 600},
        "model": {"arch": "mlp", "depth": 1, "block_depth": 1},
        "train": {"steps": 10, "batch_size": 32, "log_every": 5, "final_k": 1, "eval_examples": 64},
        "grid": {"width": [8, 16]},
        "series": {"adam": {"lr": {"log2": [-10, -5], "step": 1}},
                   "normed_adam": {"normalize": True, "lr": {"log2": [-4, 1], "step": 1}}}}


def postgres_url():
    url = os.environ.get("LRTRANSFER_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but LRTRANSFER_TEST_POSTGRES_URL is not set: .ci/run starts PostgreSQL")
        pytest.skip("no PostgreSQL (set LRTRANSFER_TEST_POSTGRES_URL; .ci/run does)")
    return url


def events(root: Path, kind: str) -> Counter:
    path = root / "events.jsonl"
    if not path.exists():
        return Counter()
    return Counter(e["run_id"] for e in map(json.loads, path.read_text().splitlines()) if e["event"] == kind)


def worker(study, root, storage=None, extra=()):
    env = dict(os.environ)
    if storage:
        env[STORAGE_ENV] = storage
    cmd = [sys.executable, "-m", "lrtransfer", "worker", "--study", study, "--results", str(root),
           "--device", "cpu", "--quiet", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def all_parquet_readable(root: Path) -> int:
    files = list((root / "runs").glob("*.parquet")) + list((root / "curves").glob("*.parquet"))
    for f in files:
        pq.read_table(f)
    assert not list((root / "runs").glob(".*.tmp")), "no temporary files left behind"
    return len(files)


def _batching(grid: dict, mode: str) -> dict:
    g = json.loads(json.dumps(grid))
    g["train"]["batch_cells"] = mode
    return g


@pytest.mark.parametrize("backend,batch", [("journal", "off"), ("journal", "on"), ("postgresql", "on")])
def test_four_workers_run_every_cell_exactly_once(tmp_path, backend, batch):
    """Exactly once, whether workers claim cells one at a time or in bundles they train together."""
    storage = postgres_url() if backend == "postgresql" else None
    name = f"grid-{uuid.uuid4().hex[:8]}"
    exp = experiment_from_dict(_batching(GRID, batch), name)
    assert len(exp.cells()) == 24
    queue, store, n = prepare(exp, tmp_path, storage=storage, device="cpu")
    assert n == 24
    procs = [worker(name, tmp_path, storage) for _ in range(4)]  # started together
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    starts = events(tmp_path, "start")
    ids = {c.run_id for c in exp.cells()}
    assert set(starts) == ids
    assert max(starts.values()) == 1, [k for k, v in starts.items() if v > 1]
    runs = store.load_runs()
    assert len(runs) == 24 and set(runs["run_id"]) == ids
    assert set(runs["status"]) <= {"done", "diverged"}
    assert (runs["bundle_size"] > 1).any() == (batch == "on")
    complete = [t for t in queue.trials() if t.state.name == "COMPLETE"]
    assert len(complete) == 24 and len({t.user_attrs["run_id"] for t in complete}) == 24
    assert len({json.loads(l)["pid"] for l in (tmp_path / "events.jsonl").read_text().splitlines()}) > 1
    from lrtransfer.sweep.status import sweep_status  # status counts match the parquet tables
    st = sweep_status(None if storage else tmp_path, storage, name)
    counts = runs["status"].value_counts()
    assert st["totals"] == {"waiting": 0, "running": 0, "done": int(counts.get("done", 0)),
                            "diverged": int(counts.get("diverged", 0)), "failed": 0}
    if storage:  # the password is in no file the sweep wrote, nor in the workers' output
        from urllib.parse import urlsplit
        secret = urlsplit(storage).password
        assert secret and all(secret not in o for o in outs)
        for f in tmp_path.rglob("*"):
            if f.is_file():
                assert secret.encode() not in f.read_bytes(), f
        assert "***" in (tmp_path / "experiment.json").read_text()


def _slow_grid(steps=150):
    g = json.loads(json.dumps(GRID))
    g["train"]["steps"] = steps
    g["grid"]["width"] = [8]
    g["series"] = {"adam": {"lr": {"log2": [-8, -5], "step": 1}}}
    return g


@pytest.mark.parametrize("batch", ["off", "on"])
def test_worker_killed_mid_run_is_rerun_and_nothing_is_lost(tmp_path, batch):
    """kill -9 mid-run; with bundles, mid-bundle: every cell it had not reported runs again."""
    name = f"kill-{uuid.uuid4().hex[:8]}"
    g = _batching(_slow_grid(), batch)
    g["grid"]["width"] = [8, 12]   # two shapes: with bundles, one finishes before the other starts
    exp = experiment_from_dict(g, name)
    ids = {c.run_id for c in exp.cells()}
    prepare(exp, tmp_path, device="cpu")
    p = worker(name, tmp_path)
    deadline = time.time() + 120
    in_hand = 4 if batch == "on" else 1   # a bundle holds the 4 LRs of one width
    while time.time() < deadline:  # wait until a cell (bundle) has finished and the next one has started
        if events(tmp_path, "finish") and len(events(tmp_path, "start")) - len(events(tmp_path, "finish")) == in_hand:
            break
        time.sleep(0.05)
    finished_before = set(events(tmp_path, "finish"))
    killed = set(events(tmp_path, "start")) - finished_before
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert killed and finished_before
    # resume: a new sweep of the same experiment reaps the dead worker's cell and completes
    from lrtransfer.sweep import run_sweep
    runs = run_sweep(exp, tmp_path, device="cpu", jobs=1, progress=False).runs
    starts, finishes = events(tmp_path, "start"), events(tmp_path, "finish")
    assert set(runs["run_id"]) == ids and set(runs["status"]) <= {"done", "diverged"}
    assert all(starts[k] == 2 for k in killed)          # the killed cell ran again
    assert all(starts[k] == 1 for k in ids - killed)   # nothing else ran twice
    assert all(finishes[k] == 1 for k in ids)          # no completed run lost or duplicated
    assert all_parquet_readable(tmp_path) == 2 * len(ids)
    assert len(killed) == in_hand   # with bundles, every cell of the one in hand ran again


def test_sweep_killed_at_random_moments_resumes_exactly(tmp_path):
    name = f"sweepkill-{uuid.uuid4().hex[:8]}"
    g = _slow_grid(steps=60)
    g["series"]["adam"]["lr"] = {"log2": [-10, -5], "step": 1}
    exp_file = tmp_path / f"{name}.toml"
    exp_file.write_text(
        f'name = "{name}"\n[data]\ndataset = "mnist1d"\nsamples = 600\n'
        '[model]\narch = "mlp"\ndepth = 1\nblock_depth = 1\n'
        '[train]\nsteps = 60\nbatch_size = 32\nlog_every = 5\nfinal_k = 1\neval_examples = 64\n'
        '[grid]\nwidth = [8]\n[series.adam]\nlr = { log2 = [-10, -5], step = 1 }\n')
    res = tmp_path / "res"
    cmd = [sys.executable, "-m", "lrtransfer", "sweep", str(exp_file), "--results", str(res), "--device", "cpu",
           "--quiet", "--jobs", "2"]
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 4.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
    assert kills >= 1
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = pd.read_parquet(res / "runs.parquet")
    assert len(runs) == 6 and runs["run_id"].is_unique and set(runs["status"]) <= {"done", "diverged"}
    finishes = events(res, "finish")
    assert set(finishes) == set(runs["run_id"]) and max(finishes.values()) == 1
    assert all_parquet_readable(res) == 12


def test_passwords_are_redacted():
    assert redact("postgresql://u:s3cret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact(None) == "journal"
    assert redact("sqlite:///a.db") == "sqlite:///a.db"


def test_a_run_that_raises_is_recorded_failed_retried_and_rerun_later(tmp_path, monkeypatch):
    from lrtransfer.sweep import run_sweep, worker as worker_module
    g = _batching(_slow_grid(steps=5), "off")
    exp = experiment_from_dict(g, f"fail-{uuid.uuid4().hex[:8]}")
    bad = exp.cells()[1].run_id
    real = worker_module.execute

    def flaky(values, *args, **kwargs):
        from lrtransfer.sweep.config import run_id
        if run_id(values) == bad:
            raise RuntimeError("out of memory (simulated)")
        return real(values, *args, **kwargs)

    monkeypatch.setattr(worker_module, "execute", flaky)
    runs = run_sweep(exp, tmp_path, device="cpu", jobs=1, progress=False, retries=2).runs
    row = runs.set_index("run_id").loc[bad]
    assert row["status"] == "failed" and "out of memory (simulated)" in row["error"]
    assert events(tmp_path, "fail")[bad] == 3            # the first try and 2 retries
    assert (runs.drop(index=runs.index[runs["run_id"] == bad])["status"] == "done").all()
    monkeypatch.setattr(worker_module, "execute", real)
    runs = run_sweep(exp, tmp_path, device="cpu", jobs=1, progress=False).runs  # failed runs run again
    assert (runs["status"] == "done").all() and events(tmp_path, "start")[bad] == 4
    assert max(v for k, v in events(tmp_path, "start").items() if k != bad) == 1


def test_one_study_cannot_feed_two_results_directories(tmp_path):
    """A shared storage keyed by experiment name: a second directory under the same name is refused,
    since a worker would otherwise write one sweep's runs into the other's directory."""
    from lrtransfer.errors import UserError
    shared = str(tmp_path / "shared.journal")
    exp = experiment_from_dict(GRID, name="same_name")
    prepare(exp, tmp_path / "a", storage=shared)
    prepare(exp, tmp_path / "a", storage=shared)  # resuming the same directory is fine
    with pytest.raises(UserError, match=r"same_name.*already belongs to results directory .*[/\\]a"):
        prepare(exp, tmp_path / "b", storage=shared)
    assert not (tmp_path / "b" / "experiment.json").exists()  # nothing recorded for the refused sweep
    prepare(experiment_from_dict(GRID, name="other_name"), tmp_path / "b", storage=shared)
    assert (tmp_path / "b" / "experiment.json").exists()


def test_a_bundle_that_raises_trains_its_cells_alone(tmp_path, monkeypatch):
    """Batched training failing is no lost cell: each cell then trains alone and is recorded."""
    from lrtransfer.sweep import run_sweep, worker as worker_module

    def broken(cells, *args, **kwargs):
        raise RuntimeError("batched kernel missing (simulated)")

    monkeypatch.setattr(worker_module, "execute_bundle", broken)
    exp = experiment_from_dict(_batching(_slow_grid(steps=5), "on"), f"bfail-{uuid.uuid4().hex[:8]}")
    runs = run_sweep(exp, tmp_path, device="cpu", jobs=1, progress=False).runs
    assert len(runs) == 4 and (runs["status"] == "done").all() and (runs["bundle_size"] == 1).all()
    lines = [json.loads(l) for l in (tmp_path / "events.jsonl").read_text().splitlines()]
    failed = [e for e in lines if e["event"] == "bundle-failed"]
    assert len(failed) == 1 and len(failed[0]["trials"]) == 4 and "simulated" in failed[0]["error"]
    assert max(events(tmp_path, "start").values()) == 1
