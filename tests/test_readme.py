"""The README and the committed reference results agree, and the results are current."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need_shared_data
from lrtransfer.sweep import load_experiment, plan

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.toml")) + sorted((ROOT / "examples").glob("*.toml"))
COMMITTED = ("runs.parquet", "curves.parquet", "REPORT.md", "reference.json")


def figures(exp) -> tuple[str, ...]:
    """The figures (and tables beyond COMMITTED) a results directory keeps, by what its experiment
    sweeps (scripts/reference.py)."""
    values = [c.values for c in exp.cells()]
    if any(v.get("elr") for v in values) or any(v.get("constraint") == "sphere" for v in values):
        stems = ("regimes", "loss_steps")
    elif len({v.get("weight_decay") for v in values}) > 1:
        stems = ("lrwd", "lrwd_curves")
    else:
        stems = ("lr_curves", "transfer")
    # the diagnostics table is kept where the report reads it: the regime rule, the condition numbers
    reads_diagnostics = stems[0] == "regimes" or any(v.get("log_condition") for v in values)
    return tuple(f"{s}.{ext}" for s in stems for ext in ("png", "svg")) + \
        (("diagnostics.parquet",) if reads_diagnostics else ())


def test_readme_tables_are_generated_from_results():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "reference.py"), "--check"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr + r.stdout


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_shipped_experiment_has_current_committed_results(path, monkeypatch):
    need_shared_data("cifar10-jpeg.tar.gz")
    monkeypatch.setenv("LRTRANSFER_DATA", str(need_shared_data("tinyshakespeare.txt").parent))
    root = ROOT / "results" / path.stem
    exp = load_experiment(path)
    missing = [f for f in COMMITTED + figures(exp) if not (root / f).exists()]
    assert not missing, f"{root}: missing {missing}; run `make reference`"
    p = plan(exp, root, estimate=False)
    assert p.todo == 0, f"{path.stem}: {p.todo} of {p.total} cells are not current; run `make reference`"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_shipped_lr_grids_are_one_octave(path):
    """The README calls them one-octave grids: consecutive powers of two, one octave apart (the
    swept rate: the effective LR where the experiment sets one, else the LR)."""
    exp = load_experiment(path)
    for series in {c.series for c in exp.cells()}:
        rate = "elr" if any(c.values.get("elr") for c in exp.cells()) else "lr"
        lrs = sorted({c.values[rate] for c in exp.cells() if c.series == series})
        steps = {round(math.log2(b) - math.log2(a), 9) for a, b in zip(lrs, lrs[1:])}
        assert steps == {1.0}, (path.stem, series, steps)
        assert all(float(math.log2(lr)).is_integer() for lr in lrs)
