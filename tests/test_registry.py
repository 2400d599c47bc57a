"""A plug-in registered from a test file alone is usable everywhere: sweeps, μP, batching, the keys table."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import invoke
from lrtransfer.errors import ConfigError
from lrtransfer.models import FAMILIES, Key, ModelFamily
from lrtransfer.models import register as register_family
from lrtransfer.modular import Flatten, Linear, ScaledReLU
from lrtransfer.optim import OPTIMIZERS, OptimizerEntry, register
from lrtransfer.run import spec
from lrtransfer.sweep import experiment_from_dict, run_sweep

TRAIN = {"steps": 6, "batch_size": 16, "log_every": 2, "final_k": 1, "eval_examples": 32, "diagnostics": False}
DATA = {"dataset": "mnist1d", "samples": 400}


class ScaledSGD:
    """A toy elementwise rule: direction = scale · g."""

    name = "toy_sgd"

    def __init__(self, scale: float):
        self.scale = scale

    def direction(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        return [g * self.scale for g in grads]

    def state_dict(self) -> dict:
        return {}


@pytest.fixture
def toy_optimizer():
    scale = Key("toy_scale", float, 0.5, "toy_sgd: gradient multiplier", "optim", positive=True)
    entry = register(OptimizerEntry("toy_sgd", lambda model, o: ScaledSGD(o["toy_scale"]), keys=(scale,),
                                    note="a test's scaled SGD", mup="sgd", elementwise=True))
    yield entry
    del OPTIMIZERS["toy_sgd"]


def two_layers(width: int, depth: int, input_dim: int, output_dim: int, hidden: int = 1):
    """A toy family: ``hidden`` + 1 Linears of ``width`` (depth ignored)."""
    net = ScaledReLU() @ Linear(width, input_dim) @ Flatten()
    for _ in range(hidden):
        net = ScaledReLU() @ Linear(width, width) @ net
    return Linear(output_dim, width) @ net


@pytest.fixture
def toy_family():
    hidden = Key("hidden", int, 1, "toy: hidden Linears", "models", "model", positive=True)
    family = register_family(ModelFamily("toy", two_layers, (hidden,)))
    yield family
    del FAMILIES["toy"]


def _sweep(tmp_path, model: dict, series: dict, **train):
    raw = {"data": DATA, "model": {"depth": 1, **model}, "train": {**TRAIN, **train},
           "grid": {"width": [16, 32], "seed": [0, 1]}, "series": series}
    exp = experiment_from_dict(raw, "registry")
    return run_sweep(exp, tmp_path, device="cpu", jobs=1, progress=False).runs


def test_a_registered_optimizer_is_listed_as_a_run_key(toy_optimizer):
    records = {r["name"]: r for r in spec.as_records()}
    assert "toy_sgd" in records["optimizer"]["choices"] and "a test's scaled SGD" in records["optimizer"]["help"]
    assert records["toy_scale"]["default"] == 0.5 and records["toy_scale"]["positive"]
    listed = json.loads(invoke("keys", "--format", "json").stdout)
    assert {"toy_scale", "optimizer"} <= {r["name"] for r in listed}
    assert "`toy_scale`" in invoke("keys").stdout


def test_a_registered_optimizer_is_gone_after_its_fixture():
    assert "toy_sgd" not in OPTIMIZERS and "toy_scale" not in {k.name for k in spec.KEYS}


@pytest.mark.parametrize("param", ["modular", "mup"])
def test_a_registered_optimizer_trains_in_a_batched_sweep(tmp_path, toy_optimizer, param):
    runs = _sweep(tmp_path, {"param": param, "block_depth": 1},
                  {"toy": {"optimizer": "toy_sgd", "lr": [0.05, 0.1], "toy_scale": 0.5}}, batch_cells="on")
    assert len(runs) == 8 and runs["status"].eq("done").all()
    assert runs["bundle_size"].gt(1).all()   # elementwise: its cells were stacked
    if param == "mup":
        assert runs["base_width"].eq(16).all()


def test_a_registered_optimizer_is_checked_like_a_built_in(toy_optimizer):
    raw = {"data": DATA, "model": {}, "train": {"optimizer": "toy_sgd", "toy_scale": -1.0}}
    with pytest.raises(ConfigError, match="toy_scale: must be positive"):
        experiment_from_dict(raw, "registry")


def test_a_registered_model_family_builds_and_trains(tmp_path, toy_family):
    assert "toy" in next(r for r in spec.as_records() if r["name"] == "arch")["choices"]
    assert any(r["name"] == "hidden" and "toy:" in r["help"] for r in spec.as_records())
    runs = _sweep(tmp_path, {"arch": "toy", "hidden": 2}, {"adam": {"lr": [1e-3]}})
    assert len(runs) == 4 and runs["status"].eq("done").all() and runs["hidden"].eq(2).all()
