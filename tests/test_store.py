"""Results on disk: all-or-nothing writes, what counts as finished, and the merged tables."""
import os
import stat

import pandas as pd
import pyarrow.parquet as pq
import pytest

from lrtransfer.errors import UserError
from lrtransfer.results.store import ResultStore, atomic_write, load_results, write_json, write_table


def curve(rid, n=3):
    return pd.DataFrame({"run_id": [rid] * n, "step": range(n), "train_loss": [2.0, 1.5, 1.2][:n],
                         "test_loss": [2.1, 1.6, 1.3][:n], "lr": [0.1] * n})


def row(rid, status="done", series="adam", width=8, lr=0.1):
    return {"run_id": rid, "series": series, "width": width, "lr": lr, "seed": 0, "status": status,
            "final_train_loss": 1.2 if status == "done" else float("nan")}


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(pd.DataFrame({"a": [1, 2]}), path)

    def crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"PAR1 half a file")
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert pq.read_table(path).to_pandas()["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json({"x": 1}, tmp_path / "e.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "e.json").stat().st_mode) == 0o644  # not mkstemp's 0600


def test_finished_ids_are_done_and_diverged_and_see_a_failed_run_rerun(tmp_path):
    store = ResultStore(tmp_path)
    assert store.finished_ids() == set()
    for rid, status in [("a", "done"), ("b", "diverged"), ("c", "failed")]:
        store.write(row(rid, status), curve(rid))
    assert store.finished_ids() == {"a", "b"}
    store.write(row("c", "done"), curve("c"))  # the failed run ran again (status cached per file)
    assert store.finished_ids() == {"a", "b", "c"}
    assert store.row("c")["status"] == "done" and store.row("zzz") is None


def test_runs_follow_the_experiments_series_order_and_merge_on_read(tmp_path):
    store = ResultStore(tmp_path)
    write_json({"series": {"sgd": {}, "adam": {}}}, tmp_path / "experiment.json")
    store.write(row("r1", series="adam", width=16), curve("r1"))
    store.write(row("r2", series="sgd", width=16), curve("r2", n=2))
    store.write(row("r3", series="adam", width=8), curve("r3"))
    runs = store.consolidate()
    assert list(zip(runs["series"], runs["width"])) == [("sgd", 16), ("adam", 8), ("adam", 16)]
    merged_runs, merged_curves = load_results(tmp_path)
    assert len(merged_runs) == 3 and len(merged_curves) == 3 + 2 + 3
    assert pd.read_parquet(tmp_path / "runs.parquet")["run_id"].tolist() == ["r2", "r3", "r1"]


def test_load_results_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match="no such results directory"):
        load_results(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no runs recorded here"):
        load_results(tmp_path / "empty")
