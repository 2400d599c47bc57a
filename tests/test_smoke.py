"""CI smoke experiments on the real offline data: the shipped CIFAR-10 MLP and Shakespeare GPT
experiment files, shrunk with --set, through the CLI (sweep, report, plot)."""
import json
import math
from pathlib import Path

import pandas as pd

from conftest import invoke, need_shared_data

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def run(*args):
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    return r.output


def smoke(tmp_path, experiment, overrides, chance_loss):
    res = tmp_path / "res"
    sets = [x for o in overrides for x in ("--set", o)]
    run("sweep", EXPERIMENTS / experiment, "--results", res, "--device", "cpu", "--quiet", *sets)
    runs = pd.read_parquet(res / "runs.parquet")
    assert len(runs) and set(runs["status"]) <= {"done", "diverged"}
    done = runs[runs["status"] == "done"]
    # every series learned something: its best run ends well below the loss at chance
    for series, g in done.groupby("series"):
        assert g["final_train_loss"].min() < 0.9 * chance_loss, (series, g["final_train_loss"].min())
    report = json.loads(run("report", res, "--format", "json"))
    assert {d["series"] for d in report["drift"]} == set(runs["series"])
    run("plot", res, "--out", tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 5000
    return runs


def test_cifar10_mlp_width_grid(tmp_path, monkeypatch):
    need_shared_data("cifar10-jpeg.tar.gz")
    monkeypatch.setenv("LRTRANSFER_DATA", str(need_shared_data("cifar10-jpeg.tar.gz").parent))
    runs = smoke(tmp_path, "mlp_width_cifar10.toml",
                 ["width=[16,32]", "steps=60", "data.train_subset=2000", "data.test_subset=500",
                  "series.adam.lr={log2=[-11,-5],step=3}", "series.normed_adam.lr={log2=[-4,0],step=2}",
                  "seeds=1"],
                 chance_loss=math.log(10))
    assert len(runs) == 2 * 6 and runs["data.dataset"].eq("cifar10").all()


def test_shakespeare_gpt_width_grid(tmp_path, monkeypatch):
    monkeypatch.setenv("LRTRANSFER_DATA", str(need_shared_data("tinyshakespeare.txt").parent))
    runs = smoke(tmp_path, "gpt_width_shakespeare.toml",
                 ["width=[16,32]", "steps=60", "data.context=32", "eval_examples=64",
                  "series.adam.lr={log2=[-10,-4],step=3}", "series.normed_adam.lr={log2=[-3,1],step=2}",
                  "seeds=1"],
                 chance_loss=math.log(65))
    assert len(runs) == 2 * 6
