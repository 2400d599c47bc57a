"""Experiment files: grids, series, LR ranges, overrides, and every bad-input case."""
import math

import pytest

from lrtransfer.errors import ConfigError
from lrtransfer.sweep import experiment_from_dict, load_experiment
from lrtransfer.sweep.config import expand_values, parse_override

BASE = {"data": {"dataset": "mnist1d", "samples": 400},
        "model": {"arch": "mlp", "depth": 1},
        "train": {"steps": 5},
        "grid": {"width": [8, 16]},
        "series": {"adam": {"lr": {"log2": [-3, -1], "step": 1}},
                   "normed": {"normalize": True, "lr": [0.5, 1.0]}}}


def exp(**changes):
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for dotted, value in changes.items():
        sect, key = dotted.split("__")
        raw[sect][key] = value
    return experiment_from_dict(raw, "t")


def test_grid_times_series():
    cells = exp().cells()
    assert len(cells) == 2 * 3 + 2 * 2
    adam = [c.values for c in cells if c.series == "adam"]
    assert sorted({v["lr"] for v in adam}) == [0.125, 0.25, 0.5]
    assert all(v["normalize"] is False for v in adam)
    assert all(c.values["normalize"] for c in cells if c.series == "normed")
    assert len({c.run_id for c in cells}) == len(cells)
    assert cells[0].values["data.samples"] == 400


def test_run_id_is_a_pure_function_of_config():
    a, b = exp().cells(), exp().cells()
    assert [c.run_id for c in a] == [c.run_id for c in b]
    c = experiment_from_dict(BASE, "t", overrides=["steps=6"]).cells()
    assert a[0].run_id != c[0].run_id


def test_log2_range():
    assert expand_values("lr", {"log2": [-2, 0], "step": 0.5}, "grid") == pytest.approx(
        [2 ** -2, 2 ** -1.5, 2 ** -1, 2 ** -0.5, 1.0])


def test_overrides():
    e = experiment_from_dict(BASE, "t", overrides=["lr=0.01", "width=[4]", "data.samples=300",
                                                    "series.normed.lr={log2=[0,1],step=1}"])
    assert {c.values["width"] for c in e.cells()} == {4}
    assert {c.values["lr"] for c in e.cells() if c.series == "normed"} == {1.0, 2.0}
    assert e.data["samples"] == 300
    assert parse_override("schedule=cosine") == ("schedule", "cosine")


@pytest.mark.parametrize("change,message", [
    (dict(train__colour=1), r"train.colour: unknown key; allowed:"),
    (dict(model__widht=3), r"model.widht: unknown key"),
    (dict(train__steps=0), r"train.steps: must be positive, got 0"),
    (dict(train__steps=2.5), r"train.steps: must be an integer"),
    (dict(train__lr=-1.0), r"train.lr: must be positive"),
    (dict(train__normalize="yes"), r"train.normalize: must be true or false"),
    (dict(train__optimizer="lion"), r"train.optimizer: 'lion' is not allowed; allowed: sgd, adam, sign, muon"),
    (dict(model__arch="vit"), r"model.arch: 'vit' is not allowed"),
    (dict(grid__width=[]), r"grid.width: empty list"),
    (dict(grid__width=[8, -2]), r"grid.width: must be positive, got -2"),
    (dict(grid__lr={"log2": [0, -2]}), r"grid.lr: log2 needs \[lo, hi\] with lo <= hi"),
    (dict(data__dataset="imagenet"), r"data.dataset: unknown dataset 'imagenet'; allowed:"),
])
def test_bad_input_names_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        exp(**change)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="experiment file not found"):
        load_experiment(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_experiment(bad)
    with pytest.raises(ConfigError, match="--set nonsense: unknown key"):
        experiment_from_dict(BASE, "t", overrides=["nonsense=1"])


def test_shipped_experiments_parse():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "experiments").glob("*.toml")) + sorted((root / "examples").glob("*.toml"))
    assert files, "experiments/ ships TOML files"
    for f in files:
        e = load_experiment(f)
        # a transfer experiment sweeps a scale; a dynamics one the effective LR or the weight decay
        swept = {k for k in ("elr", "weight_decay") if len({c.values[k] for c in e.cells()}) > 1}
        assert e.cells() and (e.scale_axes() or swept), f
        assert all(math.isfinite(c.values["lr"]) for c in e.cells())


def test_other_tools_names_for_a_key_are_suggested():
    """`learning_rate` is no misspelling of `lr`, but it is what a user of another tool types."""
    from lrtransfer.sweep.config import ConfigError, experiment_from_dict
    raw = {"data": {"dataset": "mnist1d", "samples": 600}, "model": {"arch": "mlp"}}
    for given, meant in (("learning_rate", "lr"), ("num_steps", "steps"), ("hidden_size", "width")):
        section = "model" if meant == "width" else "train"
        with pytest.raises(ConfigError, match=rf"{section}\.{given}: unknown key \(did you mean '{meant}'\?\)"):
            experiment_from_dict({**raw, section: {**raw.get(section, {}), given: 1}}, "t")
