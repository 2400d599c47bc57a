"""Cells trained together against one after another, per architecture and width; and compile.

For every shape of the first series of three shipped experiments (the quickstart's ResMLP on
MNIST-1D, both its series, plain and normalized Adam; the ResCNN on CIFAR-10, the GPT on Tiny
Shakespeare) it times, warm and in this one
invocation, a training step of one cell alone and of a bundle of ``--cells`` cells trained
together (``lrtransfer.run.batched``), and prints alone / (together per cell): above 1 batching
wins. The sweep's ``batch_cells = "auto"`` makes the same comparison (``batching_pays``, fewer
steps) and bundles where it is above 1 / 0.85.

``--compile`` also times the quickstart's plain Adam step with ``compile = true`` against the
eager step, after the compile, and reports the compile time.

Writes ``results/benchmarks/batched_speedup.json`` (the README's speed table is made from it).

Usage: python benchmarks/batched_speedup.py [--cells 12] [--compile] [--out PATH]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lrtransfer.run import batched  # noqa: E402
from lrtransfer.results.store import write_json  # noqa: E402
from lrtransfer.sweep import load_experiment  # noqa: E402
from lrtransfer.run.train import execute  # noqa: E402

EXPERIMENTS = ("quickstart", "resnet_width_cifar10", "gpt_width_shakespeare")


def shapes(name: str, every_series: bool = False) -> list[dict]:
    """One cell per width of the experiment's first series (of every series with
    ``every_series``), each at its smallest LR."""
    exp = load_experiment(ROOT / "experiments" / f"{name}.toml")
    cells = [c.values for c in exp.cells()]
    first = cells[0]["series"]
    by_shape: dict = {}
    for v in cells:
        if (every_series or v["series"] == first) and v["seed"] == 0:
            by_shape.setdefault((v["series"], v["width"]), v)
    return [by_shape[k] for k in sorted(by_shape, key=lambda k: (k[0] != first, k))]


def compile_ratio(values: dict, steps: int = 60, warm: int = 20) -> dict:
    """Eager and compiled seconds per step of ``values`` (after ``warm`` steps), compile time."""
    out = {}
    for compiled in (False, True):
        marks: dict[int, float] = {}
        start = time.perf_counter()
        execute({**values, "steps": steps, "compile": compiled, "code_fingerprint": None}, "cpu",
                on_step=lambda step, total: marks.setdefault(step, time.perf_counter()))
        out["compiled" if compiled else "eager"] = (marks[steps] - marks[warm]) / (steps - warm)
        if compiled:
            out["compile_seconds"] = marks[1] - start
    torch._dynamo.reset()
    return {"width": values["width"], "eager_ms": round(1e3 * out["eager"], 3),
            "compiled_ms": round(1e3 * out["compiled"], 3), "ratio": round(out["eager"] / out["compiled"], 2),
            "compile_seconds": round(out["compile_seconds"], 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=batched.MAX_BUNDLE)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "batched_speedup.json")
    args = p.parse_args()
    rows = []
    for name in EXPERIMENTS:
        for values in shapes(name, every_series=name == "quickstart"):
            execute({**values, "steps": 2, "code_fingerprint": None}, "cpu")   # data loaded, kernels warm
            alone = batched.step_seconds([values], "cpu")
            together = batched.step_seconds([{**values, "seed": s} for s in range(args.cells)], "cpu") / args.cells
            row = {"experiment": name, "arch": values["arch"], "series": values["series"], "width": values["width"],
                   "alone_ms": round(1e3 * alone, 3), "together_ms_per_cell": round(1e3 * together, 3),
                   "speedup": round(alone / together, 2)}
            rows.append(row)
            print(f"{name:24s} {values['arch']:6s} width {values['width']:4d}: alone {row['alone_ms']:7.2f} ms/step, "
                  f"{args.cells} together {row['together_ms_per_cell']:7.2f} ms/step per cell -> {row['speedup']:.2f}x")
    report = {"cells": args.cells, "rows": rows, "torch": torch.__version__, "host": platform.node(),
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if args.compile:
        report["compile"] = [compile_ratio(v) for v in shapes("quickstart")]
        for c in report["compile"]:
            print(f"compile, quickstart width {c['width']}: eager {c['eager_ms']} ms/step, compiled "
                  f"{c['compiled_ms']} ms/step -> {c['ratio']}x after a {c['compile_seconds']} s compile")
    write_json(report, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
