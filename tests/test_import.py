"""``lrtransfer import``: runs from another tool's table (CSV, parquet, a W&B runs-table export,
MLflow) become a results directory that report, plot and compare read like a sweep's."""
import csv
import json
import math
import random

import pandas as pd
import pytest

from conftest import invoke

WIDTHS = (32, 128, 512)
LOG2_LRS = range(-10, -1)   # 9 LRs, one octave apart, around every optimum below
# the optimum's law each series was generated with: log2 η* = -6 - drift·log2(width / 32)
DRIFTS = {"adamw": 0.5, "normed": 0.0}


def true_loss(log2_lr: float, width: int, drift: float) -> float:
    return (log2_lr - (-6 - drift * math.log2(width / 32))) ** 2 + 0.5


def write_sweep_csv(path, seeds=3, extra_rows=()):
    """A CSV as a training script of one's own would log it: its own column names, one row per run."""
    rng = random.Random(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["optimizer", "n_embd", "learning_rate", "seed", "val_loss", "notes"])
        for opt, drift in DRIFTS.items():
            for width in WIDTHS:
                for seed in range(seeds):
                    for k in LOG2_LRS:
                        w.writerow([opt, width, 2.0 ** k, seed, true_loss(k, width, drift) + rng.gauss(0, 0.01),
                                    "ok"])
        for row in extra_rows:
            w.writerow(row)


MAP = ["--map", "lr=learning_rate", "--map", "width=n_embd", "--map", "loss=val_loss"]


def test_csv_import_reports_the_known_optima(tmp_path):
    src = tmp_path / "sweep.csv"
    write_sweep_csv(src)
    out = tmp_path / "imported"
    r = invoke("import", src, *MAP, "--series", "optimizer", "--seed", "seed", "--results", out)
    assert r.exit_code == 0, r.output
    assert "162 runs imported (162 done; 2 series)" in r.stdout
    runs = pd.read_parquet(out / "runs.parquet")
    assert set(runs.columns) >= {"run_id", "series", "lr", "width", "seed", "status", "final_train_loss", "source"}
    assert runs["run_id"].is_unique and (runs["source"] == "imported from sweep.csv").all()
    assert runs["width"].dtype == "int64" and sorted(runs["seed"].unique()) == [0, 1, 2]
    meta = json.loads((out / "experiment.json").read_text())
    assert meta["source"] == "imported from sweep.csv" and meta["imported"]["map"]["lr"] == "learning_rate"
    assert pd.read_csv(out / "import_skipped.csv").empty

    r = invoke("report", out, "--format", "json", "--n-boot", "300")
    assert r.exit_code == 0, r.output
    drift = {d["series"]: d for d in json.loads(r.stdout)["drift"]}
    # the optimum moves -0.5 octaves per octave of width: -2 octaves over 32 -> 512
    assert drift["adamw"]["verdict"] == "drifts"
    assert drift["adamw"]["slope_ci"][0] <= -0.5 <= drift["adamw"]["slope_ci"][1]
    assert drift["adamw"]["slope"] == pytest.approx(-0.5, abs=0.03)
    assert drift["normed"]["verdict"] == "transfers"
    assert drift["normed"]["slope"] == pytest.approx(0.0, abs=0.03)
    # the regret of the base LR at width 512 is the loss 2 octaves off the optimum: 2² = 4 nats
    assert drift["adamw"]["regret"] == pytest.approx(4.0, abs=0.1)

    # compare and the LR-curve figure read it like any results directory
    again = tmp_path / "again"
    assert invoke("import", src, *MAP, "--series", "optimizer", "--seed", "seed", "--results", again).exit_code == 0
    r = invoke("compare", out, again, "--format", "json")
    assert r.exit_code == 0, r.output
    verdicts = {(v["results"], v["series"]): v["verdict"] for v in json.loads(r.stdout)["verdicts"]}
    assert verdicts == {("imported", "adamw"): "drifts", ("imported", "normed"): "transfers",
                        ("again", "adamw"): "drifts", ("again", "normed"): "transfers"}
    assert invoke("plot", out, "--out", tmp_path / "curves.png").exit_code == 0
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_without_seed_the_runs_of_a_cell_are_numbered_and_one_series(tmp_path):
    src = tmp_path / "sweep.csv"
    write_sweep_csv(src, seeds=2)
    out = tmp_path / "imported"
    r = invoke("import", src, *MAP, "--results", out)
    assert r.exit_code == 0, r.output
    runs = pd.read_parquet(out / "runs.parquet")
    assert set(runs["series"]) == {"imported"}
    # each cell (width, lr) has 2 optimizers x 2 seeds = 4 rows, numbered 0..3 in file order
    assert all(sorted(seeds) == [0, 1, 2, 3] for _, seeds in runs.groupby(["width", "lr"])["seed"])


def write_long_csv(path):
    """One row per logged step: a run's loss falls towards its final value, one run blows up."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "width", "lr", "step", "loss"])
        for width in WIDTHS:
            for k in LOG2_LRS:
                final = true_loss(k, width, 0.5)
                for step in range(0, 100, 10):
                    loss = final + 2.0 * math.exp(-step / 30)
                    if width == 512 and k == -2 and step >= 50:
                        loss = float("nan")
                    w.writerow([f"w{width}-lr{k}", width, 2.0 ** k, step, loss])


def test_a_long_table_gives_curves_and_final_values(tmp_path):
    src = tmp_path / "log.csv"
    write_long_csv(src)
    out = tmp_path / "curves"
    r = invoke("import", src, "--map", "lr=lr", "--map", "width=width", "--map", "loss=loss", "--results", out)
    assert r.exit_code == 0, r.output
    assert "27 runs imported (26 done, 1 diverged" in r.stdout and "one row per logged step" in r.stdout
    runs = pd.read_parquet(out / "runs.parquet")
    curves = pd.read_parquet(out / "curves.parquet")
    assert len(curves) == 26 * 10 + 5   # the diverged run keeps its finite points
    done = runs[runs["status"] == "done"].iloc[0]
    # the final value is the loss at the last logged step (90)
    expected = true_loss(math.log2(done["lr"]), done["width"], 0.5) + 2.0 * math.exp(-90 / 30)
    assert done["final_train_loss"] == pytest.approx(expected, rel=1e-12)
    diverged = runs[runs["status"] == "diverged"].iloc[0]
    assert diverged["width"] == 512 and diverged["diverged_at_step"] == 50
    assert math.isnan(diverged["final_train_loss"])
    c = curves[curves["run_id"] == done["run_id"]].sort_values("step")
    assert list(c["step"]) == list(range(0, 100, 10)) and c["train_loss"].is_monotonic_decreasing
    r = invoke("plot", out, "--steps", "--out", tmp_path / "steps.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "steps.png").stat().st_size > 0


def test_a_wandb_runs_table_export(tmp_path):
    src = tmp_path / "wandb_export.csv"
    rows = [["Name", "State", "Notes", "Created", "Runtime", "learning_rate", "width", "seed", "train/loss",
             "_step"]]
    for width in (64, 256):
        for k in LOG2_LRS:
            rows.append([f"run-{width}-{k}", "finished", "-", "2026-01-01T00:00:00.000Z", "60", 2.0 ** k, width, 0,
                         true_loss(k, width, 0.0), 1000])
    rows[3][1] = "crashed"                 # a crashed run: failed
    rows[3][8] = ""
    rows[8][8] = "NaN"                     # a finished run whose loss is NaN: diverged
    rows[6][1] = "running"                 # still running: no result, listed as skipped
    with open(src, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "wb"
    r = invoke("import", src, "--map", "lr=learning_rate", "--map", "width=width", "--map", "loss=train/loss",
               "--seed", "seed", "--results", out)
    assert r.exit_code == 0, r.output
    assert "(wandb, one row per run)" in r.stdout and "15 done, 1 diverged, 1 failed" in r.stdout
    assert "row 6: status 'running' (column State) is not a finished run" in r.stdout
    runs = pd.read_parquet(out / "runs.parquet").set_index("lr")
    assert runs.loc[2.0 ** -8, "status"].tolist() == ["failed", "done"]
    assert runs.loc[2.0 ** -3, "status"].tolist() == ["diverged", "done"]
    # the varying Created/Name columns are not imported, so they split nothing
    assert "Created" not in runs and "Name" not in runs
    r = invoke("report", out, "--format", "json", "--n-boot", "100")
    assert r.exit_code == 0, r.output
    table = pd.DataFrame(json.loads(r.stdout)["transfer"])
    assert table["opt_log2_lr"].tolist() == [-6.0, -6.0]
    assert table["n_diverged"].tolist() == [1, 0]


def test_an_mlflow_experiment(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("sweep")
    for width in (32, 128):
        for k in (-8, -6, -4):
            run = client.create_run(exp, run_name=f"w{width} lr{k}")
            final = true_loss(k, width, 0.5)
            history = [Metric("loss", final + 1.0 / (1 + s), 0, s) for s in range(0, 50, 10)]
            if (width, k) == (32, -4):   # blew up at step 30
                history[3:] = [Metric("loss", float("nan"), 0, s) for s in (30, 40)]
            client.log_batch(run.info.run_id, metrics=history,
                             params=[Param("lr", repr(2.0 ** k)), Param("width", str(width))])
            client.set_terminated(run.info.run_id, "FAILED" if (width, k) == (128, -4) else "FINISHED")
    out = tmp_path / "mlf"
    r = invoke("import", "--from", "mlflow", "--uri", uri, "--experiment", "sweep", "--map", "lr=lr",
               "--map", "width=width", "--map", "loss=loss", "--results", out)
    assert r.exit_code == 0, r.output
    assert "6 runs imported (4 done, 1 diverged, 1 failed" in r.stdout
    runs = pd.read_parquet(out / "runs.parquet")
    curves = pd.read_parquet(out / "curves.parquet")
    row = runs[(runs["width"] == 32) & (runs["lr"] == 2.0 ** -6)].iloc[0]
    assert row["final_train_loss"] == pytest.approx(true_loss(-6, 32, 0.5) + 1.0 / 41)
    c = curves[curves["run_id"] == row["run_id"]].sort_values("step")
    assert list(c["step"]) == [0, 10, 20, 30, 40]
    assert c["train_loss"].iloc[0] == pytest.approx(true_loss(-6, 32, 0.5) + 1.0)
    assert runs.loc[runs["status"] == "failed", ["width", "lr"]].values.tolist() == [[128, 2.0 ** -4]]
    blown = runs[runs["status"] == "diverged"].iloc[0]
    assert (blown["width"], blown["lr"], blown["diverged_at_step"]) == (32, 2.0 ** -4, 30)
    assert curves.loc[curves["run_id"] == blown["run_id"], "step"].tolist() == [0, 10, 20]
    assert json.loads((out / "experiment.json").read_text())["name"] == "sweep"


def _nothing_written(tmp_path, out):
    return not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize("args,message", [
    (["--map", "lr=learning_rate", "--map", "width=width_px", "--map", "loss=val_loss"],
     "--map width=width_px: sweep.csv has no column 'width_px'"),
    (["--map", "learning_rate=learning_rate", "--map", "width=n_embd", "--map", "loss=val_loss"],
     "--map lr=COLUMN is required"),
    (["--map", "lr=learning_rate", "--map", "loss=val_loss"], "no scale key mapped"),
    (["--map", "lr=learning_rate", "--map", "width=n_embd"], "no metric mapped"),
    (["--map", "lr", "--map", "width=n_embd", "--map", "loss=val_loss"], "--map 'lr': expected KEY=COLUMN"),
    (["--map", "lr=learning_rate", "--map", "width=n_embd", "--map", "loss=val_loss", "--map", "run_id=notes"],
     "'run_id' is not a key a column can be mapped to"),
    (["--map", "lr=notes", "--map", "width=n_embd", "--map", "loss=val_loss"], "no row could be imported"),
])
def test_bad_input_is_refused_and_nothing_is_written(tmp_path, args, message):
    src = tmp_path / "sweep.csv"
    write_sweep_csv(src, seeds=1)
    out = tmp_path / "out"
    r = invoke("import", src, *args, "--results", out)
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.stderr.split())
    assert _nothing_written(tmp_path, out)


def test_an_unknown_column_lists_the_files_columns(tmp_path):
    src = tmp_path / "sweep.csv"
    write_sweep_csv(src, seeds=1)
    r = invoke("import", src, "--map", "lr=learning_rte", "--map", "width=n_embd", "--map", "loss=val_loss",
               "--results", tmp_path / "out")
    assert r.exit_code == 2
    text = " ".join(r.stderr.split())
    assert "(did you mean 'learning_rate'?)" in text
    assert "its columns: optimizer, n_embd, learning_rate, seed, val_loss, notes" in text


def test_rows_that_cannot_be_mapped_are_listed_not_dropped(tmp_path):
    src = tmp_path / "sweep.csv"
    write_sweep_csv(src, seeds=1, extra_rows=[["adamw", 32, "abc", 5, 0.7, ""],
                                              ["adamw", "", 0.01, 5, 0.7, ""],
                                              ["adamw", 32, -1, 5, 0.7, ""],
                                              ["adamw", 32, 2.0 ** -6, 0, 0.9, ""],     # seed 0 of that cell again
                                              ["adamw", 32, 2.0 ** -7, 6, "", ""]])
    out = tmp_path / "out"
    r = invoke("import", src, *MAP, "--series", "optimizer", "--seed", "seed", "--results", out)
    assert r.exit_code == 0, r.output
    assert "54 runs imported" in r.stdout and "5 rows skipped" in r.stdout
    text = " ".join(r.stdout.split())
    assert "row 55: lr 'abc' (column learning_rate) is not a number" in text
    assert "row 56: width missing (column n_embd empty)" in text
    assert "row 57: lr -1 (column learning_rate) is not a finite number > 0" in text
    assert "row 58: same series, width, lr and seed as row 5" in text
    assert "row 59: no metric value (column val_loss empty)" in text
    skipped = pd.read_csv(out / "import_skipped.csv")
    assert skipped["row"].tolist() == [55, 56, 57, 58, 59]
    assert skipped["reason"].iloc[0] == "lr 'abc' (column learning_rate) is not a number"


def test_an_existing_directory_is_replaced_only_with_replace(tmp_path):
    src = tmp_path / "sweep.csv"
    write_sweep_csv(src, seeds=1)
    out = tmp_path / "out"
    assert invoke("import", src, *MAP, "--results", out).exit_code == 0
    before = (out / "runs.parquet").read_bytes()
    r = invoke("import", src, *MAP, "--series", "optimizer", "--results", out)
    assert r.exit_code == 2 and "--results" in r.stderr and "--replace" in r.stderr
    assert (out / "runs.parquet").read_bytes() == before
    r = invoke("import", src, *MAP, "--series", "optimizer", "--results", out, "--replace")
    assert r.exit_code == 0, r.output
    assert set(pd.read_parquet(out / "runs.parquet")["series"]) == set(DRIFTS)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # --replace never deletes a directory that holds something other than results
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    r = invoke("import", src, *MAP, "--results", other, "--replace")
    assert r.exit_code == 2 and "is not a results directory" in " ".join(r.stderr.split())
    assert (other / "notes.txt").read_text() == "mine"


def test_parquet_keeps_missing_apart_from_nan(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    src = tmp_path / "runs.parquet"
    # written as pyarrow (or polars) writes it: NaN is a value, null a missing one
    pq.write_table(pa.table({"lr": [0.1, 0.01, 0.001, 0.1], "width": [8, 8, 8, 16],
                             "loss": pa.array([float("nan"), 1.0, 2.0, None], from_pandas=False)}), src)
    out = tmp_path / "out"
    r = invoke("import", src, "--map", "lr=lr", "--map", "width=width", "--map", "loss=loss", "--results", out)
    assert r.exit_code == 0, r.output
    runs = pd.read_parquet(out / "runs.parquet")
    assert runs["status"].tolist() == ["diverged", "done", "done"]
    assert "row 4: no metric value (column loss empty)" in r.stdout


def test_a_long_table_sorted_by_step_with_two_runs_per_cell(tmp_path):
    """Rows ordered by step across runs; a cell's second run (no seed column) starts where its
    step stops rising."""
    rows = []
    for repeat in range(2):
        for it in (1, 2, 3):
            for lr in (0.1, 0.01):
                rows.append({"iter": it, "lr": lr, "d": 16, "train": 10.0 * lr + it + repeat / 10})
    src = tmp_path / "log.parquet"
    pd.DataFrame(rows).to_parquet(src)
    out = tmp_path / "out"
    r = invoke("import", src, "--map", "lr=lr", "--map", "d_model=d", "--map", "train_loss=train", "--step", "iter",
               "--results", out)
    assert r.exit_code == 0, r.output
    runs = pd.read_parquet(out / "runs.parquet").sort_values(["lr", "seed"])
    assert runs["seed"].tolist() == [0, 1, 0, 1]
    assert runs["final_train_loss"].tolist() == pytest.approx([3.1, 3.2, 4.0, 4.1])
    assert pd.read_parquet(out / "curves.parquet").groupby("run_id").size().tolist() == [3, 3, 3, 3]
