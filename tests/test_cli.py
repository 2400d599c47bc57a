"""The suite end to end through the real CLI: sweep -> parquet -> plot / report, and bad input."""
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import invoke


TINY = """
description = "tiny"
[data]
dataset = "mnist1d"
samples = 600
[model]
arch = "mlp"
depth = 1
block_depth = 1
[train]
steps = 20
batch_size = 32
log_every = 5
final_k = 2
eval_examples = 128
[grid]
width = [8, 16]
[series.adam]
lr = [0.001, 0.01, 1000.0]
[series.normed_adam]
normalize = true
lr = [0.25, 1.0]
"""

RUN_COLUMNS = {"run_id", "series", "width", "depth", "lr", "seed", "optimizer", "normalize", "steps",
               "batch_size", "weight_decay", "final_train_loss", "final_test_loss", "final_test_acc",
               "status", "diverged_at_step", "wall_seconds", "lrtransfer_version", "git_sha",
               "torch_version", "device", "data.dataset", "data.samples"}



@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    exp = tmp / "tiny.toml"
    exp.write_text(TINY)
    res = tmp / "results"
    r = invoke("sweep", exp, "--results", res, "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    return exp, res


def _starts(res):
    lines = (res / "events.jsonl").read_text().splitlines()
    return [json.loads(l) for l in lines if json.loads(l)["event"] == "start"]


def test_sweep_writes_both_tables_with_the_schema(swept):
    exp, res = swept
    runs = pd.read_parquet(res / "runs.parquet")
    curves = pd.read_parquet(res / "curves.parquet")
    assert len(runs) == 2 * 3 + 2 * 2 and runs["run_id"].is_unique
    assert RUN_COLUMNS <= set(runs.columns), RUN_COLUMNS - set(runs.columns)
    assert list(curves.columns) == ["run_id", "step", "train_loss", "test_loss", "lr"]
    done = runs[runs["status"] == "done"]
    assert len(done) == 8
    assert done["final_train_loss"].notna().all() and (done["final_test_acc"] >= 0).all()
    # final_train_loss is the mean of the last final_k logged train losses
    one = done.iloc[0]
    c = curves[curves["run_id"] == one["run_id"]].sort_values("step")
    assert list(c["step"]) == [5, 10, 15, 20]
    assert one["final_train_loss"] == pytest.approx(c["train_loss"].iloc[-2:].mean())
    # a linear decay to 0: logged LR falls
    assert c["lr"].is_monotonic_decreasing


def test_divergence_is_data(swept):
    _, res = swept
    runs = pd.read_parquet(res / "runs.parquet")
    div = runs[runs["lr"] == 1000.0]
    assert len(div) == 2 and (div["status"] == "diverged").all()
    assert div["diverged_at_step"].notna().all() and div["final_train_loss"].isna().all()


def test_second_sweep_runs_nothing_new(swept):
    exp, res = swept
    before = len(_starts(res))
    assert before == 10
    r = invoke("sweep", exp, "--results", res, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert len(_starts(res)) == before
    assert "10 already finished, 0 queued" in r.output.replace("\n", " ")


def test_dry_run_counts_and_runs_nothing(swept, tmp_path):
    exp, res = swept
    r = invoke("sweep", exp, "--results", res, "--dry-run", "--device", "cpu")
    assert r.exit_code == 0 and "10 cells" in r.output and "10 already finished, 0 to run" in r.output
    fresh = tmp_path / "fresh"
    r = invoke("sweep", exp, "--results", fresh, "--dry-run", "--device", "cpu", "--set", "width=[8,16,32]")
    assert r.exit_code == 0 and "15 cells" in r.output and "15 to run" in r.output
    assert not fresh.exists()


def test_plot_writes_png_and_svg(swept, tmp_path):
    _, res = swept
    for suffix in ("png", "svg"):
        out = tmp_path / f"curves.{suffix}"
        r = invoke("plot", res, "--out", out)
        assert r.exit_code == 0, r.output
        assert out.stat().st_size > 1000
        assert (tmp_path / f"curves_transfer.{suffix}").stat().st_size > 1000


def test_plot_one_curve_per_scale(swept):
    from lrtransfer import plots
    from lrtransfer.results.store import load_results
    runs, _ = load_results(swept[1])
    fig = plots.lr_curves(runs)
    panels = [ax for ax in fig.axes if ax.get_lines()]
    assert len(panels) == 2
    for ax in panels:
        labels = {l.get_label() for l in ax.get_lines() if l.get_label().startswith("width=")}
        assert labels == {"width=8", "width=16"}


def test_report_json(swept):
    _, res = swept
    r = invoke("report", res, "--format", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert {row["series"] for row in data["drift"]} == {"adam", "normed_adam"}


def test_report_predict_section_json_key_and_bad_targets(swept):
    _, res = swept
    r = invoke("report", res, "--predict", "width=64", "--predict", "width=16", "--n-boot", "50")
    assert r.exit_code == 0, r.output
    section = r.stdout.split("### Prediction", 1)[1]
    assert "| adam | width | 64 |" in section and "| normed_adam | width | 16 |" in section
    r = invoke("report", res, "--predict", "width=64", "--format", "json", "--n-boot", "50")
    rows = json.loads(r.stdout)["prediction"]
    assert [(row["series"], row["target"], row["octaves_beyond"]) for row in rows] == [("adam", 64, 2.0),
                                                                                      ("normed_adam", 64, 2.0)]
    assert all(len(row["pred_log2_lr_ci"]) == 2 for row in rows)
    for bad, message in (("depth=8", "--predict depth=8: 'depth' is not a scale axis the runs vary; allowed: width"),
                         ("width=0", "--predict width=0: the width must be a positive number"),
                         ("width=big", "--predict width=big: the width must be a positive number"),
                         ("width", "--predict 'width': expected KEY=VALUE")):
        r = invoke("report", res, "--predict", bad, "--n-boot", "50")
        assert r.exit_code == 2 and message in " ".join(r.output.split()), (bad, r.output)
    r = invoke("report", res, "--predict", "width=64", "--format", "csv")
    assert r.exit_code == 2 and "--predict with --format csv" in r.output


BATCH = TINY.replace("batch_size = 32\n", "").replace("width = [8, 16]", "batch_size = [16, 64]").replace(
    "[model]", "[model]\nwidth = 16")


def test_a_batch_size_sweep_is_reported_and_drawn_along_batch_size(tmp_path):
    """batch_size is a scale axis like width: a real sweep across it, end to end."""
    exp = tmp_path / "batch.toml"
    exp.write_text(BATCH)
    res = tmp_path / "results"
    r = invoke("sweep", exp, "--results", res, "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    from lrtransfer.results.store import load_results
    runs = load_results(res)[0]
    assert sorted(set(runs["batch_size"])) == [16, 64] and set(runs["width"]) == {16}
    r = invoke("status", res)
    assert r.exit_code == 0 and "batch_size=16" in r.output and "batch_size=64" in r.output, r.output
    r = invoke("report", res, "--axis", "batch_size", "--format", "json", "--n-boot", "50")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert {row["axis"] for row in doc["drift"]} == {"batch_size"} and "note" not in doc
    assert {(row["series"], row["scale"]) for row in doc["transfer"]} == {
        (s, b) for s in ("adam", "normed_adam") for b in (16, 64)}
    assert invoke("report", res, "--format", "json", "--n-boot", "50").output == r.output   # the default axis
    r = invoke("report", res, "--axis", "width")
    assert r.exit_code == 0 and r.output.startswith("--axis width does not vary in these runs (width = 16;"), r.output
    r = invoke("report", res, "--axis", "normalize")
    assert r.exit_code == 2 and "--axis 'normalize': its values" in " ".join(r.output.split()), r.output
    r = invoke("plot", res, "--axis", "batch_size")
    assert r.exit_code == 0 and (res / "transfer.png").exists(), r.output


def test_status_matches_tables(swept):
    _, res = swept
    r = invoke("status", res, "--format", "json")
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)
    runs = pd.read_parquet(res / "runs.parquet")
    assert st["totals"]["done"] == int((runs["status"] == "done").sum())
    assert st["totals"]["diverged"] == int((runs["status"] == "diverged").sum())
    assert st["totals"]["waiting"] == st["totals"]["running"] == 0


# -- bad input: exit 2, one message naming the key or path, nothing written --------------------
BAD = [  # (text in TINY, its replacement, the message)
    ("steps = 20", "steps = 20\ncolour = 1", "train.colour: unknown key"),
    ("steps = 20", 'steps = "many"', "train.steps: must be an integer"),
    ("width = [8, 16]", "width = []", "grid.width: empty list"),
    ("width = [8, 16]", "width = [8, 0]", "grid.width: must be positive, got 0"),
    ("steps = 20", "steps = -5", "train.steps: must be positive"),
    ("lr = [0.25, 1.0]", "lr = [0.0, 1.0]", "series.normed_adam.lr: must be positive"),
    ('arch = "mlp"', 'arch = "vit"', "model.arch: 'vit' is not allowed"),
    ("[series.adam]", "[series.adam]\nwidht = [3]", "series.adam.widht: unknown key"),
]


@pytest.mark.parametrize("old,new,message", BAD)
def test_bad_config_exit_2_nothing_written(tmp_path, old, new, message):
    assert old in TINY
    exp = tmp_path / "bad.toml"
    exp.write_text(TINY.replace(old, new, 1))
    res = tmp_path / "results"
    r = invoke("sweep", exp, "--results", res)
    assert r.exit_code == 2, r.output
    assert message in r.output.replace("\n", " ")
    assert not res.exists()


def test_unknown_dataset_unreadable_config_and_unwritable_output(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text(TINY.replace('dataset = "mnist1d"', 'dataset = "imagenet"'))
    r = invoke("sweep", exp, "--results", tmp_path / "r")
    assert r.exit_code == 2 and "data.dataset: unknown dataset 'imagenet'" in r.output
    r = invoke("sweep", tmp_path / "missing.toml")
    assert r.exit_code == 2 and "missing.toml: experiment file not found" in r.output
    exp.write_text("[[[")
    r = invoke("sweep", exp)
    assert r.exit_code == 2 and "not valid TOML" in r.output


def test_unwritable_output_path_is_a_file(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text(TINY)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = invoke("sweep", exp, "--results", blocker / "r")
    assert r.exit_code == 2 and "not writable" in r.output


def test_missing_dataset_fails_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setenv("LRTRANSFER_DATA", str(tmp_path / "nowhere"))
    exp = tmp_path / "e.toml"
    exp.write_text(TINY.replace('dataset = "mnist1d"\nsamples = 600', 'dataset = "text"\npath = "/nonexistent/book.txt"'))
    r = invoke("sweep", exp, "--results", tmp_path / "r")
    assert r.exit_code == 2 and "/nonexistent/book.txt" in r.output
    assert not (tmp_path / "r" / "runs").exists()


def _waiting_workers() -> list[str]:
    """Command lines of this process's children that are sweep workers waiting for their go."""
    me, found = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == me:
                cmd = (stat.parent / "cmdline").read_text().replace("\0", " ")
                if "--wait-for-go" in cmd:
                    found.append(cmd)
        except (OSError, IndexError):
            pass
    return found


def test_sweep_that_fails_before_running_leaves_no_workers(tmp_path):
    # local workers start while the sweep checks and enqueues; a failed check sends them home
    exp = tmp_path / "e.toml"
    exp.write_text(TINY.replace('dataset = "mnist1d"\nsamples = 600', 'dataset = "text"\npath = "/nonexistent/book.txt"'))
    r = invoke("sweep", exp, "--results", tmp_path / "r", "--jobs", "2")
    assert r.exit_code == 2 and "/nonexistent/book.txt" in r.output
    assert _waiting_workers() == []
    assert not (tmp_path / "r").exists()


def test_plot_and_report_bad_input(swept, tmp_path):
    _, res = swept
    r = invoke("plot", tmp_path / "nothing")
    assert r.exit_code == 2 and "no such results directory" in r.output
    r = invoke("plot", res, "--out", tmp_path / "fig.bmp")
    assert r.exit_code == 2 and "unsupported format .bmp" in r.output
    r = invoke("report", res, "--metric", "accuracy")
    assert r.exit_code == 2


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:99"])
def test_bad_device_exit_2_before_anything_runs(swept, tmp_path, device):
    exp, res = swept
    r = invoke("sweep", exp, "--results", tmp_path / "r", "--device", device)
    assert r.exit_code == 2 and device in r.output
    assert not (tmp_path / "r" / "runs").exists() and not (tmp_path / "r" / "experiment.json").exists()
    r = invoke("tune", exp, "--results", tmp_path / "t", "--device", device, "--trials", "1")
    assert r.exit_code == 2 and device in r.output
    assert not (tmp_path / "t" / "tune" / "runs").exists()
    # a worker with a bad device refuses before claiming a cell: every cell is still waiting
    assert invoke("sweep", exp, "--results", tmp_path / "w", "--jobs", "0", "--device", "cpu").exit_code == 0
    r = invoke("worker", "--study", "tiny", "--results", tmp_path / "w", "--device", device)
    assert r.exit_code == 2 and device in r.output
    r = invoke("status", tmp_path / "w", "--format", "json")
    assert json.loads(r.output)["totals"] == {"waiting": 10, "running": 0, "done": 0, "diverged": 0, "failed": 0}


def test_version_and_short_help():
    from lrtransfer import __version__
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"lrtransfer {__version__}"
    for args in (("-h",), ("sweep", "-h"), ("keys", "-h")):
        r = invoke(*args)
        assert r.exit_code == 0 and "Usage" in r.stdout, args


def test_keys_lists_every_run_key_from_the_spec():
    from lrtransfer.run import spec
    r = invoke("keys", "--format", "json")
    assert r.exit_code == 0
    names = [k["name"] for k in json.loads(r.stdout)]
    assert names == [r["name"] for r in spec.as_records()]
    assert {"update", "ns", "param", "base_width", "norm", "block_depth", "heads", "label"} <= set(names)
    assert invoke("keys", "--format", "csv").exit_code == 2


# -- help: examples, readable metavars, choices from the code ------------------------------------
def _commands():
    from typer.main import get_command
    from lrtransfer.cli import app
    return sorted(get_command(app).commands)


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")   # --help's table columns unwrapped, so phrases can be searched


def test_every_commands_help_has_an_example_and_readable_metavars(wide):
    commands = _commands()
    assert {"sweep", "worker", "status", "plot", "report", "compare", "tune", "coordcheck", "keys"} <= set(commands)
    for name in [None, *commands]:
        r = invoke(*([name] if name else []), "--help")
        text = " ".join(r.stdout.split())
        assert r.exit_code == 0, name
        assert ("Examples:" in text and "lrtransfer " in text.split("Examples:")[1]) or name is None, name
        assert "<bool>" not in text and "<list[str]>" not in text and "<str>" not in text, name


def test_help_shows_choices_from_the_code_and_describes_every_option(wide):
    from lrtransfer import plots
    from lrtransfer.analysis.transfer import METRIC_SPECS
    from lrtransfer.cli.common import DEVICES, one_of
    from lrtransfer.cli.run import STATUS_FORMATS
    from lrtransfer.cli.tune import SAMPLERS
    text = lambda *args: " ".join(invoke(*args, "--help").stdout.split())  # noqa: E731
    assert one_of(STATUS_FORMATS) in text("status")
    assert all(f"{kind}:" in text("plot") for kind in plots.KINDS)
    assert all(f"{metric} (" in text("plot") for metric in METRIC_SPECS)
    assert one_of(plots.QUANTITIES) in text("plot") and one_of(plots.COLOR_BY) in text("plot")
    assert "test_acc (maximized)" in text("report") and "scale axis to analyse" in text("report")
    for command in ("sweep", "worker", "coordcheck"):
        assert "no progress lines" in text(command), command
    for command in ("sweep", "worker", "tune", "coordcheck"):
        assert one_of(DEVICES) in text(command) and "[default: auto]" in text(command), command
    assert "NAME_transfer" in text("plot")            # --kind lr's second figure is named
    assert "KEY=VALUE" in text("sweep") and one_of(SAMPLERS) in text("tune")


def test_three_misspellings_get_suggestions(swept, tmp_path):
    exp, res = swept
    bad = tmp_path / "bad.toml"
    bad.write_text(exp.read_text().replace("steps = 20", "stpes = 20"))
    r = invoke("sweep", bad, "--results", tmp_path / "r")
    assert r.exit_code == 2 and "train.stpes: unknown key (did you mean 'steps'?)" in " ".join(r.output.split())
    r = invoke("plot", res, "--series", "normed_adma", "--out", tmp_path / "x.png")
    assert r.exit_code == 2 and "--series 'normed_adma': no such series here (did you mean 'normed_adam'?)" \
        in " ".join(r.output.split())
    r = invoke("report", res, "--metric", "test_accuracy")
    assert r.exit_code == 2 and "--metric 'test_accuracy': unknown metric (did you mean 'test_acc'?)" \
        in " ".join(r.output.split())
    r = invoke("status", res, "--format", "tabel")
    assert r.exit_code == 2 and "(did you mean 'table'?)" in r.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "x.png").exists()
