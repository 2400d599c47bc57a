"""`lrtransfer export`: runs read back with TensorBoard's event reader, MLflow's client and,
for W&B, the offline run files decoded record by record with wandb's own protobuf messages."""
import builtins
import json
import math
import struct
import zlib

import pandas as pd
import pytest

from conftest import invoke
from lrtransfer.results.export import folder_names, run_name
from lrtransfer.results.store import write_table

SERIES, WIDTHS, LOG2_LRS, STEPS = ("adam", "normed"), (32, 128), (-6, -4), (10, 20, 30)


def _loss(series: str, width: int, x: int, step: int) -> float:
    return 2.0 - step / 100 + width / 1000 + x / 100 + (0.5 if series == "normed" else 0.0)


@pytest.fixture
def results(tmp_path):
    """8 runs (one diverged at its second log) with known curves, as a sweep leaves them."""
    rows, points = [], []
    for s in SERIES:
        for w in WIDTHS:
            for x in LOG2_LRS:
                rid = f"{s}-{w}-{-x}"
                diverged = (s, w, x) == ("adam", 128, -4)
                rows.append({"run_id": rid, "series": s, "width": w, "depth": 2, "lr": 2.0 ** x, "seed": 0,
                             "optimizer": "adam", "normalize": s == "normed", "steps": 30,
                             "status": "diverged" if diverged else "done",
                             "final_train_loss": math.nan if diverged else _loss(s, w, x, 30),
                             "final_test_loss": math.nan if diverged else _loss(s, w, x, 30) + 0.1,
                             "final_test_acc": math.nan if diverged else 0.5, "wall_seconds": 1.5,
                             "diverged_at_step": 15.0 if diverged else math.nan, "git_sha": "abc"})
                for step in STEPS[:1] if diverged else STEPS:
                    points.append({"run_id": rid, "step": step, "train_loss": _loss(s, w, x, step),
                                   "test_loss": math.nan, "lr": 2.0 ** x * (1 - step / 40)})
    root = tmp_path / "res"
    root.mkdir()
    write_table(pd.DataFrame(rows), root / "runs.parquet")
    write_table(pd.DataFrame(points), root / "curves.parquet")
    return root, pd.DataFrame(rows)


def test_tensorboard_event_files_read_back(results):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    root, runs = results
    r = invoke("export", root, "--to", "tensorboard")
    assert r.exit_code == 0, r.output
    assert "tensorboard: 8 runs written to" in r.stdout
    logdir = root / "tensorboard"
    # one directory per run, named as readably as the MLflow run
    assert sorted(p.name for p in logdir.iterdir()) == sorted(run_name(row) for row in runs.to_dict("records"))
    for row in runs.to_dict("records"):
        acc = EventAccumulator(str(logdir / run_name(row)))
        acc.Reload()
        train = [(e.step, e.value) for e in acc.Scalars("train_loss")]
        steps = STEPS[:1] if row["status"] == "diverged" else STEPS
        x = int(math.log2(row["lr"]))
        assert train == [(s, pytest.approx(_loss(row["series"], row["width"], x, s))) for s in steps]
        assert [e.step for e in acc.Scalars("lr")] == list(steps)
        assert "test_loss" not in acc.Tags()["scalars"]                       # never evaluated: not written
        if row["status"] == "done":
            (final,) = acc.Scalars("hparam/final_train_loss")
            assert final.value == pytest.approx(row["final_train_loss"])
        # the config travels as hyperparameters (HParams plugin), the series and lr among them
        from tensorboard.plugins.hparams import plugin_data_pb2
        content = acc.PluginTagToContent("hparams")
        info = [plugin_data_pb2.HParamsPluginData.FromString(c) for c in content.values()]
        hparams = next(i.session_start_info.hparams for i in info if i.HasField("session_start_info"))
        assert hparams["series"].string_value == row["series"]
        assert hparams["lr"].number_value == pytest.approx(row["lr"]) and hparams["width"].number_value == row["width"]
    # exporting again replaces the export whole: still one directory per run
    assert invoke("export", root, "--to", "tensorboard").exit_code == 0
    assert len(list(logdir.iterdir())) == 8 and not [p for p in root.iterdir() if p.name.startswith(".tensorboard")]


def test_mlflow_runs_params_and_metrics_read_back(results, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    root, runs = results
    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    r = invoke("export", root, "--to", "mlflow", "--uri", uri, "--experiment", "tiny")
    assert r.exit_code == 0, r.output
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tiny")
    found = {m.data.tags["lrtransfer.run_id"]: m for m in client.search_runs([exp.experiment_id])}
    assert sorted(found) == sorted(runs["run_id"])
    for row in runs.to_dict("records"):
        m = found[row["run_id"]]
        assert m.data.params["series"] == row["series"] and float(m.data.params["lr"]) == row["lr"]
        assert m.data.params["width"] == str(row["width"]) and m.data.tags["status"] == row["status"]
        assert "git_sha" not in m.data.params and "final_train_loss" not in m.data.params
        x = int(math.log2(row["lr"]))
        history = [(h.step, h.value) for h in client.get_metric_history(m.info.run_id, "train_loss")]
        steps = STEPS[:1] if row["status"] == "diverged" else STEPS
        assert sorted(history) == [(s, pytest.approx(_loss(row["series"], row["width"], x, s))) for s in steps]
        if row["status"] == "done":
            assert m.data.metrics["final_train_loss"] == pytest.approx(row["final_train_loss"])
            assert m.data.metrics["final_test_acc"] == 0.5
        else:
            assert "final_train_loss" not in m.data.metrics
        assert m.info.run_name == f"{row['series']} width={row['width']} depth=2 lr=2^{x} seed=0"
    # again: every run is already there, nothing is duplicated
    r = invoke("export", root, "--to", "mlflow", "--uri", uri, "--experiment", "tiny")
    assert r.exit_code == 0 and "0 runs written" in r.stdout and "(8 already there)" in r.stdout
    assert len(client.search_runs([exp.experiment_id])) == 8


def test_mlflow_default_store_is_in_the_results_directory(results):
    pytest.importorskip("mlflow")
    root, _ = results
    r = invoke("export", root, "--to", "mlflow")
    assert r.exit_code == 0 and (root / "mlflow.db").exists() and "experiment 'res'" in " ".join(r.stdout.split())


@pytest.mark.parametrize("target,module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_missing_extra_is_named_and_nothing_is_written(results, monkeypatch, target, module):
    root, _ = results
    real_import = builtins.__import__

    def no_module(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_module)
    monkeypatch.delitem(__import__("sys").modules, module, raising=False)
    before = sorted(p.name for p in root.iterdir())
    r = invoke("export", root, "--to", target)
    assert r.exit_code == 2
    assert f"--to {target}: the {module} package is not installed; install the extra: pip install " \
           f"'lrtransfer[{target}]'" in " ".join(r.output.split())
    assert sorted(p.name for p in root.iterdir()) == before


def test_export_bad_target_and_directory(results, tmp_path):
    root, _ = results
    r = invoke("export", root, "--to", "tensorbord")
    assert r.exit_code == 2 and "(did you mean 'tensorboard'?)" in r.output
    r = invoke("export", tmp_path / "nowhere", "--to", "tensorboard")
    assert r.exit_code == 2 and "no such results directory" in r.output


def test_folder_names_are_readable_and_unique():
    rows = [{"run_id": "a1", "series": "adam", "width": 64, "lr": 2.0 ** -6, "seed": 0},
            {"run_id": "b2", "series": "adam", "width": 64, "lr": 2.0 ** -6, "seed": 0},   # e.g. another batch size
            {"run_id": "c3", "series": "sgd", "width": 128, "lr": 0.5, "seed": 1}]
    assert folder_names(rows) == ["adam width=64 lr=2^-6 seed=0 run=a1", "adam width=64 lr=2^-6 seed=0 run=b2",
                                  "sgd width=128 lr=2^-1 seed=1"]


def _wandb_records(path):
    """The records of an offline ``run-<id>.wandb`` file. wandb ships no Python reader for them
    any more (its core, in Go, writes them), so this reads the LevelDB log format they are in:
    a 7-byte header, then 32 KiB blocks of chunks (CRC-32 over type and data, length, type: full,
    or first/middle/last of a record split across blocks), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2
    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    pos, pending, block = 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:   # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc
        pending += chunk
        if kind in (1, 4):   # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _wandb_run(run_dir):
    """(run record, config, history rows, summary, exit code) of one offline run directory."""
    (path,) = run_dir.glob("run-*.wandb")
    run, history, summary, exit_code = None, [], {}, None
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            history.append({".".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({".".join(u.nested_key) or u.key: json.loads(u.value_json) for u in record.summary.update})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    config = {u.key: json.loads(u.value_json) for u in run.config.update if u.key != "_wandb"}
    return run, config, history, summary, exit_code


def _add_run(root, rid):
    """One more finished run in the results directory, as a later sweep leaves it."""
    from lrtransfer.results.store import load_results
    runs, curves = load_results(root)
    row = runs.iloc[[0]].assign(run_id=rid, seed=1)
    write_table(pd.concat([runs, row], ignore_index=True), root / "runs.parquet")
    extra = curves[curves["run_id"] == runs["run_id"].iloc[0]].assign(run_id=rid)
    write_table(pd.concat([curves, extra], ignore_index=True), root / "curves.parquet")


def test_wandb_offline_runs_read_back_and_reexport_adds_only_new_runs(results):
    pytest.importorskip("wandb")
    root, runs = results
    r = invoke("export", root, "--to", "wandb")
    assert r.exit_code == 0, r.output
    # wandb's own messages are silenced: the command's one line is all it prints
    assert r.output.strip().splitlines() == [r.stdout.strip()] and r.stdout.startswith("wandb: 8 runs written to")
    assert "offline, project 'res'" in " ".join(r.stdout.split())
    local = root / "wandb"
    # one offline run directory per run, named by wandb after the run id, as `wandb sync` takes it
    dirs = {d.name.split("-", 3)[-1]: d for d in local.glob("offline-run-*")}   # offline-run-<time>-<id>
    assert sorted(dirs) == sorted(runs["run_id"])
    for row in runs.to_dict("records"):
        run, config, history, summary, exit_code = _wandb_run(dirs[row["run_id"]])
        assert run.run_id == row["run_id"] and run.project == "res"
        assert run.display_name == run_name(row) and run.run_group == row["series"]
        assert config["run_id"] == row["run_id"] and config["series"] == row["series"]
        assert config["lr"] == pytest.approx(row["lr"]) and config["width"] == row["width"]
        assert config["normalize"] is (row["series"] == "normed") and config["seed"] == 0
        assert "git_sha" not in config and "final_train_loss" not in config and "status" not in config
        # history: one row per curve step, train_loss and lr as in the curves table, no test_loss (NaN there)
        steps = STEPS[:1] if row["status"] == "diverged" else STEPS
        x = int(math.log2(row["lr"]))
        assert [h["_step"] for h in history] == list(steps)
        assert [h["train_loss"] for h in history] == [pytest.approx(_loss(row["series"], row["width"], x, s))
                                                      for s in steps]
        assert [h["lr"] for h in history] == [pytest.approx(2.0 ** x * (1 - s / 40)) for s in steps]
        assert not any("test_loss" in h for h in history)
        assert summary["status"] == row["status"] and summary["wall_seconds"] == 1.5
        if row["status"] == "done":
            assert summary["final_train_loss"] == pytest.approx(row["final_train_loss"])
            assert summary["final_test_acc"] == 0.5
        else:
            assert "final_train_loss" not in summary
        assert exit_code == 0   # a diverged run is a result, not a failed run
    assert json.loads((local / "exported.json").read_text()) == {"offline:res": sorted(runs["run_id"])}

    # again: every run is already there, nothing is written twice
    r = invoke("export", root, "--to", "wandb")
    assert r.exit_code == 0 and "0 runs written" in r.stdout and "(8 already there)" in r.stdout
    assert len(list(local.glob("offline-run-*"))) == 8
    # a run added since: only it is written
    _add_run(root, "adam-32-6-seed1")
    r = invoke("export", root, "--to", "wandb")
    assert r.exit_code == 0 and "1 runs written" in r.stdout and "(8 already there)" in r.stdout
    assert len(list(local.glob("offline-run-*"))) == 9
    assert json.loads((local / "exported.json").read_text())["offline:res"] == sorted([*runs["run_id"],
                                                                                      "adam-32-6-seed1"])


def test_wandb_export_stopped_part_way_keeps_finished_runs_only(results, monkeypatch):
    pytest.importorskip("wandb")
    from lrtransfer.results import export as export_module
    root, runs = results
    real, calls = export_module.wandb_history, []

    def fails_at_the_third_run(points):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(points)
    monkeypatch.setattr(export_module, "wandb_history", fails_at_the_third_run)
    with pytest.raises(RuntimeError, match="disk full"):
        invoke("export", root, "--to", "wandb")
    local = root / "wandb"
    # the two finished runs are recorded and on disk; the third's half-written directory is gone
    first_two = list(runs["run_id"][:2])
    assert json.loads((local / "exported.json").read_text()) == {"offline:res": sorted(first_two)}
    assert sorted(d.name.split("-", 3)[-1] for d in local.glob("offline-run-*")) == sorted(first_two)
    monkeypatch.setattr(export_module, "wandb_history", real)
    r = invoke("export", root, "--to", "wandb")
    assert r.exit_code == 0 and "6 runs written" in r.stdout and "(2 already there)" in r.stdout
    assert len(list(local.glob("offline-run-*"))) == 8


def test_wandb_online_needs_a_login(results, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    root, _ = results
    # an environment with no W&B credentials anywhere wandb looks
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / "wandb"))
    r = invoke("export", root, "--to", "wandb", "--online", "--project", "p")
    assert r.exit_code == 2
    assert "--online: not logged in to W&B; run `wandb login`" in " ".join(r.output.split())
    assert not (root / "wandb").exists()


@pytest.mark.parametrize("args,message", [
    (("--to", "mlflow", "--project", "p"), "--project: not an option of --to mlflow (it takes --uri, --experiment); "
                                           "--project is for --to wandb"),
    (("--to", "tensorboard", "--online"), "--online: not an option of --to tensorboard"),
    (("--to", "wandb", "--uri", "x"), "--uri: not an option of --to wandb (it takes --project, --entity, --online); "
                                      "--uri is for --to tensorboard / mlflow"),
    (("--to", "wandb", "--experiment", "x"), "--experiment: not an option of --to wandb"),
    (("--to", "wandb", "--project", "a/b"), "--project 'a/b': W&B names are 1-128 characters without any of"),
    (("--to", "wandb", "--entity", "team:x"), "--entity 'team:x': W&B names are"),
])
def test_wandb_bad_options(results, args, message):
    pytest.importorskip("wandb")
    root, _ = results
    r = invoke("export", root, *args)
    assert r.exit_code == 2 and message in " ".join(r.output.split())
    assert not (root / "wandb").exists()
