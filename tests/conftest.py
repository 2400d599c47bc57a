import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def need_shared_data(name: str) -> Path:
    """The offline dataset file, or a skip (a failure under CI=true, where it must exist)."""
    path = SHARED_DATA / name
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing and CI=true: the offline datasets must be beside the repo")
        pytest.skip(f"offline dataset {path} not found (expected ../shared/data beside the repo)")
    return path


_runner = CliRunner()


def invoke(*args):
    """Run the CLI in-process with ``args`` (paths become strings); exceptions propagate."""
    from lrtransfer.cli import app
    return _runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


# The data and model sections of the smallest experiment a test sweeps: MNIST-1D, a 1-block MLP.
TINY_DATA_MODEL = """[data]
dataset = "mnist1d"
samples = 600
[model]
arch = "mlp"
depth = 1
block_depth = 1
"""
