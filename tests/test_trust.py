"""Results a researcher can trust: seeds, pure runs, provenance, and directories that cannot
mix or break (issue: numbers a researcher can publish)."""
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from conftest import invoke
from lrtransfer.errors import ConfigError
from lrtransfer.sweep import experiment_from_dict, load_experiment

ROOT = Path(__file__).resolve().parents[1]

TINY = """
description = "tiny"
seeds = 2
[data]
dataset = "mnist1d"
samples = 600
[model]
arch = "mlp"
depth = 1
block_depth = 1
[train]
steps = 12
batch_size = 32
log_every = 4
final_k = 2
eval_examples = 128
[grid]
width = [8, 16]
[series.adam]
lr = [0.001, 0.01]
"""



def write(tmp_path, text=TINY, name="tiny.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def listing(root: Path) -> dict:
    """Every file under ``root`` with its size and mtime: what 'nothing written' compares."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# -- seeds ------------------------------------------------------------------------------------
def test_seeds_runs_every_cell_with_each_seed():
    exp = experiment_from_dict(tomllib.loads(TINY), "tiny")
    cells = exp.cells()
    assert len(cells) == 2 * 2 * 2
    assert sorted({c.values["seed"] for c in cells}) == [0, 1]
    assert len({c.run_id for c in cells}) == len(cells)


def test_seeds_and_a_seed_list_conflict_and_bad_seeds_are_named():
    raw = tomllib.loads(TINY)
    with pytest.raises(ConfigError, match="seeds"):
        experiment_from_dict({**raw, "grid": {**raw["grid"], "seed": [0, 1]}}, "x")
    with pytest.raises(ConfigError, match="seeds: must be a positive integer"):
        experiment_from_dict({**raw, "seeds": 0}, "x")
    # --set seeds=N replaces a seed list, --set seed=[...] replaces seeds
    exp = experiment_from_dict(raw, "x", overrides=["seed=[3, 4, 5]"])
    assert sorted({c.values["seed"] for c in exp.cells()}) == [3, 4, 5]
    exp = experiment_from_dict(raw, "x", overrides=["seeds=3"])
    assert sorted({c.values["seed"] for c in exp.cells()}) == [0, 1, 2]


def test_every_shipped_experiment_uses_at_least_three_seeds():
    for path in sorted((ROOT / "experiments").glob("*.toml")):
        exp = load_experiment(path)
        per_cell: dict = {}
        for c in exp.resolved_values():
            key = tuple(sorted((k, str(v)) for k, v in c.items() if k != "seed"))
            per_cell.setdefault(key, set()).add(c["seed"])
        assert min(len(s) for s in per_cell.values()) >= 3, path.name


# -- run ids: config, threads, data and code ------------------------------------------------
def test_run_id_hashes_threads_data_and_code(tmp_path, monkeypatch):
    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be, that is the question. " * 40)
    raw = {"data": {"dataset": "text", "path": str(text), "context": 8},
           "model": {"arch": "gpt", "width": 8, "depth": 1, "heads": 2}, "train": {"steps": 2}}
    base = experiment_from_dict(raw, "t").cells()[0]
    assert base.values["threads"] == 1 and len(base.values["data_fingerprint"]) == 16
    threads = experiment_from_dict(raw, "t", overrides=["threads=2"]).cells()[0]
    assert threads.run_id != base.run_id
    # where the data lives is not part of the id; what it contains is
    moved = tmp_path / "elsewhere.txt"
    moved.write_bytes(text.read_bytes())
    elsewhere = experiment_from_dict({**raw, "data": {**raw["data"], "path": str(moved)}}, "t").cells()[0]
    assert elsewhere.run_id == base.run_id
    # how it executes is not part of the id either: batched or alone, compiled or eager
    for how in ({"batch_cells": "off"}, {"batch_cells": "on"}, {"compile": True}):
        raw_how = {**raw, "train": {**raw.get("train", {}), **how}}
        assert experiment_from_dict(raw_how, "t").cells()[0].run_id == base.run_id
    text.write_text("a different corpus entirely, with other characters! " * 40)
    changed = experiment_from_dict(raw, "t").cells()[0]
    assert changed.run_id != base.run_id and changed.values["data_fingerprint"] != base.values["data_fingerprint"]
    # other training code: another id
    import lrtransfer.sweep.config as config
    monkeypatch.setattr(config, "code_fingerprint", lambda: "0" * 16)
    assert experiment_from_dict(raw, "t").cells()[0].run_id != changed.run_id


def test_code_fingerprint_covers_the_training_code_only():
    from lrtransfer.run import provenance
    assert provenance.TRAINING_SOURCES == ("modular", "models", "optim", "data", "run/train.py", "run/batched.py",
                                           "run/spec.py", "run/diagnostics.py")
    assert all((provenance.PACKAGE_DIR / s).exists() for s in provenance.TRAINING_SOURCES)
    # the plug-in registries decide what a name trains: they are training code too
    registries = ("optim/registry.py", "models/registry.py", "models/key.py", "data/registry.py")
    assert all(any(f == s or f.startswith(s + "/") for s in provenance.TRAINING_SOURCES) for f in registries)


def test_a_run_records_threads_and_provenance_and_refuses_other_code(tmp_path):
    from lrtransfer.run.train import execute
    from lrtransfer.errors import UserError
    cell = experiment_from_dict(tomllib.loads(TINY), "tiny").cells()[0]
    row = execute(cell.values, "cpu").row
    assert row["torch_threads"] == 1 and row["threads"] == 1
    assert row["python_version"].count(".") == 2 and row["started_at"][:2] == "20"
    assert row["git_dirty"] in (True, False, None) and row["run_id"] == cell.run_id
    with pytest.raises(UserError, match="training code"):
        execute({**cell.values, "code_fingerprint": "f" * 16}, "cpu")


@pytest.mark.parametrize("batch", ["off", "on"])
def test_jobs_1_and_jobs_2_give_bit_identical_losses(tmp_path, batch):
    """Alone or in bundles: bundles are fixed when the cells are enqueued, so two workers
    train the same bundles one worker does, and every cell gets the same bits."""
    exp = write(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    how = ("--set", f"batch_cells={batch}")
    assert invoke("sweep", exp, "--results", one, "--jobs", "1", "--quiet", *how).exit_code == 0
    assert invoke("sweep", exp, "--results", two, "--jobs", "2", "--quiet", *how).exit_code == 0
    a = pd.read_parquet(one / "runs.parquet").set_index("run_id").sort_index()
    b = pd.read_parquet(two / "runs.parquet").set_index("run_id").sort_index()
    assert list(a.index) == list(b.index) and len(a) == 8
    assert (a["bundle_size"] > 1).all() == (batch == "on") and (a["bundle_size"] == b["bundle_size"]).all()
    for col in ("final_train_loss", "final_test_loss", "first_train_loss"):
        assert (a[col].to_numpy() == b[col].to_numpy()).all(), col  # bit for bit, not approx
    ca = pd.read_parquet(one / "curves.parquet").sort_values(["run_id", "step"])
    cb = pd.read_parquet(two / "curves.parquet").sort_values(["run_id", "step"])
    assert (ca["train_loss"].to_numpy() == cb["train_loss"].to_numpy()).all()


def test_changed_data_makes_old_runs_stale_and_they_are_moved_not_lost(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be, that is the question. " * 40)
    exp = write(tmp_path, """
[data]
dataset = "text"
path = "corpus.txt"
context = 8
[model]
arch = "gpt"
width = 8
depth = 1
heads = 2
[train]
steps = 3
batch_size = 4
log_every = 1
final_k = 1
eval_examples = 16
lr = 0.01
""")
    res = tmp_path / "res"
    assert invoke("sweep", exp, "--results", res, "--jobs", "1", "--quiet").exit_code == 0
    first = pd.read_parquet(res / "runs.parquet")
    text.write_text("quite another text, so the old numbers describe other data. " * 40)
    r = invoke("sweep", exp, "--results", res, "--jobs", "1", "--quiet")
    assert r.exit_code == 0
    second = pd.read_parquet(res / "runs.parquet")
    assert len(second) == 1 and set(second["run_id"]).isdisjoint(first["run_id"])
    assert (res / "stale" / "runs" / f"{first['run_id'].iloc[0]}.parquet").exists()


def test_relative_data_path_is_read_from_the_experiment_folder(tmp_path, monkeypatch):
    sub = tmp_path / "exp"
    sub.mkdir()
    (sub / "corpus.txt").write_text("abcdefgh " * 200)
    path = write(sub, '[data]\ndataset = "text"\npath = "corpus.txt"\ncontext = 8\n'
                      '[model]\narch = "gpt"\nwidth = 8\ndepth = 1\nheads = 2\n')
    monkeypatch.chdir(tmp_path)  # the command runs elsewhere
    exp = load_experiment(Path("exp") / path.name)
    assert exp.data["path"] == str((sub / "corpus.txt").resolve())
    r = invoke("sweep", Path("exp") / path.name, "--results", tmp_path / "res", "--dry-run")
    assert r.exit_code == 0, r.output


# -- results directories that cannot mix or break ---------------------------------------------
def test_a_different_experiment_is_refused_and_nothing_is_written(tmp_path):
    exp = write(tmp_path)
    res = tmp_path / "res"
    assert invoke("sweep", exp, "--results", res, "--jobs", "1", "--quiet").exit_code == 0
    before = listing(res)
    other = write(tmp_path, TINY.replace('dataset = "mnist1d"\nsamples = 600',
                                         'dataset = "shakespeare"\ncontext = 8').replace('arch = "mlp"', 'arch = "gpt"\nheads = 2').replace("block_depth = 1\n", ""),
                  name="other.toml")
    r = invoke("sweep", other, "--results", res, "--jobs", "1")
    assert r.exit_code == 2
    assert "'tiny' (mnist1d, mlp)" in r.output and "'other' (shakespeare, gpt)" in r.output
    assert listing(res) == before
    # a grown grid of the same experiment extends the directory
    grown = write(tmp_path, TINY.replace("width = [8, 16]", "width = [8, 16, 32]"))
    r = invoke("sweep", grown, "--results", res, "--jobs", "1", "--quiet")
    assert r.exit_code == 0 and len(pd.read_parquet(res / "runs.parquet")) == 12


def test_a_corrupt_run_file_is_moved_aside_reported_once_and_run_again(tmp_path):
    exp = write(tmp_path)
    res = tmp_path / "res"
    assert invoke("sweep", exp, "--results", res, "--jobs", "1", "--quiet").exit_code == 0
    victim = sorted((res / "runs").glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated
    r = invoke("report", res)  # a reader survives it
    assert r.exit_code == 0 and r.output.count("moved to") <= 1
    assert (victim.parent / (victim.name + ".corrupt")).exists() and not victim.exists()
    r = invoke("sweep", exp, "--results", res, "--jobs", "1", "--quiet")
    assert r.exit_code == 0 and victim.exists()
    assert pd.read_parquet(victim)["status"].iloc[0] == "done"


def test_a_corrupt_file_found_by_the_sweep_is_reported_once(tmp_path):
    exp = write(tmp_path)
    res = tmp_path / "res"
    assert invoke("sweep", exp, "--results", res, "--jobs", "1", "--quiet").exit_code == 0
    (res / "runs.parquet").unlink()
    victim = sorted((res / "runs").glob("*.parquet"))[0]
    victim.write_bytes(b"not parquet at all")
    r = invoke("sweep", exp, "--results", res, "--jobs", "1", "--quiet")
    assert r.exit_code == 0
    assert r.output.count(victim.name + ".corrupt") == 1
    assert pd.read_parquet(victim)["status"].iloc[0] == "done"


def test_a_damaged_journal_names_the_recovery(tmp_path):
    exp = write(tmp_path)
    res = tmp_path / "res"
    assert invoke("sweep", exp, "--results", res, "--jobs", "1", "--quiet").exit_code == 0
    journal = res / "queue.journal"
    data = journal.read_bytes()
    journal.write_bytes(data[:60] + b"\x01garbage\n" + data[60:])
    r = invoke("sweep", exp, "--results", res, "--jobs", "1")
    assert r.exit_code == 2 and "damaged" in r.output and f"mv {journal} {journal}.damaged" in r.output
    os.replace(journal, str(journal) + ".damaged")
    r = invoke("sweep", exp, "--results", res, "--jobs", "1", "--quiet")
    assert r.exit_code == 0


def test_failed_runs_exit_1_and_each_distinct_error_prints_once(tmp_path, monkeypatch):
    from lrtransfer.sweep import worker as worker_module
    real = worker_module.execute

    def failing(values, *args, **kwargs):
        if values["lr"] == 0.01:
            raise RuntimeError("CUDA out of memory [simulated]")
        return real(values, *args, **kwargs)

    monkeypatch.setattr(worker_module, "execute", failing)
    exp = write(tmp_path)
    res = tmp_path / "res"
    r = invoke("sweep", exp, "--results", res, "--jobs", "1", "--retries", "0", "--quiet", "--set", "batch_cells=off")
    assert r.exit_code == 1
    assert "4 runs failed" in r.output
    assert r.output.count("CUDA out of memory [simulated]") == 1  # brackets printed literally
    r = invoke("status", res, "--errors")
    assert r.exit_code == 0 and "4x RuntimeError: CUDA out of memory [simulated]" in r.output


def test_rerun_runs_finished_cells_again(tmp_path):
    exp = write(tmp_path)
    res = tmp_path / "res"
    assert invoke("sweep", exp, "--results", res, "--jobs", "1", "--quiet").exit_code == 0
    assert "0 to run" in invoke("sweep", exp, "--results", res, "--dry-run").output
    assert "8 to run" in invoke("sweep", exp, "--results", res, "--dry-run", "--rerun").output
    assert invoke("sweep", exp, "--results", res, "--jobs", "1", "--rerun", "--quiet").exit_code == 0
    starts = [json.loads(l) for l in (res / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "start" for e in starts) == 16


def test_unknown_series_in_set_names_the_nearest(tmp_path):
    exp = write(tmp_path)
    r = invoke("sweep", exp, "--set", "series.adma.lr=0.1", "--results", tmp_path / "res", "--dry-run")
    assert r.exit_code == 2 and "did you mean 'adam'" in r.output
    assert not (tmp_path / "res").exists()


def test_user_text_in_messages_is_printed_literally(tmp_path):
    exp = write(tmp_path)
    r = invoke("sweep", exp, "--set", "lr={log2=[3,1]}", "--dry-run")
    assert r.exit_code == 2 and "log2 needs [lo, hi] with lo <= hi" in r.output


def test_plot_that_fails_writes_nothing(tmp_path, monkeypatch):
    from lrtransfer.plots import transfer as plots
    from lrtransfer.errors import UserError
    exp = write(tmp_path)
    res = tmp_path / "res"
    assert invoke("sweep", exp, "--results", res, "--jobs", "1", "--quiet").exit_code == 0
    before = listing(res)

    def broken(*a, **k):
        raise UserError("cannot draw the transfer figure")

    monkeypatch.setattr(plots, "transfer_plot", broken)
    r = invoke("plot", res)
    assert r.exit_code == 2 and listing(res) == before


def test_status_finds_the_storage_the_sweep_used_and_writes_nothing(tmp_path):
    exp = write(tmp_path)
    res = tmp_path / "res"
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    assert invoke("sweep", exp, "--results", res, "--storage", url, "--jobs", "1", "--quiet").exit_code == 0
    before = listing(res)
    r = invoke("status", res, "--format", "json")
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)
    assert st["storage"] == url and st["totals"]["done"] == 8
    assert listing(res) == before and not (res / "queue.journal").exists()


def test_workers_write_the_merged_tables_when_the_queue_drains(tmp_path):
    exp = write(tmp_path)
    res = tmp_path / "res"
    assert invoke("sweep", exp, "--results", res, "--jobs", "0", "--quiet").exit_code == 0
    assert not (res / "runs.parquet").exists()
    r = invoke("worker", "--study", "tiny", "--results", res, "--device", "cpu", "--quiet")
    assert r.exit_code == 0
    assert len(pd.read_parquet(res / "runs.parquet")) == 8 and (res / "curves.parquet").exists()


@pytest.mark.parametrize("jobs", ["1", "2"])   # in process, and local workers released with a "go"
def test_ctrl_c_gives_claimed_cells_back_prints_one_line_and_exits_130(tmp_path, jobs):
    exp = write(tmp_path, TINY.replace("steps = 12", "steps = 4000").replace("width = [8, 16]", "width = [64]"))
    res = tmp_path / "res"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # a shell that started us in the background may ignore SIGINT, and a child inherits that:
    # give the sweep the default disposition, so Python turns SIGINT into KeyboardInterrupt
    p = subprocess.Popen([sys.executable, "-m", "lrtransfer", "sweep", str(exp), "--results", str(res),
                          "--jobs", jobs, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    events = res / "events.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (events.exists() and '"start"' in events.read_text()):
        time.sleep(0.1)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, errs = p.communicate(timeout=60)
    assert p.returncode == 130, errs
    lines = [l for l in errs.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: 0 of 4 cells finished, 4 waiting"), errs
    r = invoke("status", res, "--format", "json")
    totals = json.loads(r.output)["totals"]
    assert totals["running"] == 0 and totals["waiting"] == 4


def test_tune_that_fails_writes_nothing(tmp_path):
    exp = write(tmp_path)
    res = tmp_path / "res"
    r = invoke("tune", exp, "--results", res, "--param", "nonsense=1:2", "--device", "cpu")
    assert r.exit_code == 2 and "--param nonsense" in r.output and not res.exists()
    r = invoke("tune", exp, "--results", res, "--sampler", "bogus", "--device", "cpu")
    assert r.exit_code == 2 and "--sampler 'bogus'" in r.output and not res.exists()


def test_loaded_data_does_not_depend_on_the_thread_count_of_whoever_loads_it():
    # The sweep's own process loads the data (to check it early) on torch's default threads;
    # standardization reduces over the data, so loading on 2 threads once gave other bits.
    import torch
    from lrtransfer.run import train
    values = {"data.dataset": "mnist1d", "data.samples": 40000}  # big enough to split the mean
    before = torch.get_num_threads()
    try:
        loaded = {}
        for threads in (1, 2):
            train._DATA_CACHE.clear()
            torch.set_num_threads(threads)
            loaded[threads] = train.dataset_for(values, torch.device("cpu")).x_train.clone()
            assert torch.get_num_threads() == threads  # the caller's setting is put back
        assert torch.equal(loaded[1], loaded[2])
    finally:
        torch.set_num_threads(before)
        train._DATA_CACHE.clear()
