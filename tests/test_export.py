"""`lrtransfer export`: runs read back with TensorBoard's event reader and MLflow's client."""
import builtins
import math

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


@pytest.mark.parametrize("target,module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
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
