"""Whole sweeps, timed: the `--dry-run` estimate against the wall time, batched cells on and off.

For every (experiment, --jobs, batch_cells) asked for, in this one invocation and one after
another: the dry run's estimate (``plan``), then the sweep itself into a fresh temporary
directory, timed from the call to its return (enqueue, probes, workers and the merged tables).
Prints estimate, wall time and error per sweep, and the wall-time ratio of batch_cells off to
auto where both ran.

Writes ``results/benchmarks/sweep_times.json`` (the README's speed section is made from it).

Usage: python benchmarks/sweep_times.py [--experiments quickstart resnet_width_cifar10]
           [--jobs 1 2] [--batch auto off] [--out PATH] [--append]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lrtransfer.results.store import write_json  # noqa: E402
from lrtransfer.sweep import load_experiment, plan, run_sweep  # noqa: E402


def timed_sweep(name: str, jobs: int, batch: str) -> dict:
    exp = load_experiment(ROOT / "experiments" / f"{name}.toml", overrides=[f"batch_cells={batch}"])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / name
        estimate = plan(exp, root, device="cpu", jobs=jobs).estimate_seconds
        start = time.perf_counter()
        result = run_sweep(exp, root, jobs=jobs, device="cpu", progress=False)
        wall = time.perf_counter() - start
        runs = result.runs
    bundled = int((runs["bundle_size"] > 1).sum()) if "bundle_size" in runs else 0
    return {"experiment": name, "jobs": jobs, "batch_cells": batch, "runs": len(runs), "bundled_runs": bundled,
            "estimate_seconds": round(estimate, 1), "wall_seconds": round(wall, 1),
            "error": round((estimate - wall) / wall, 3)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", nargs="+", default=["quickstart", "resnet_width_cifar10"])
    p.add_argument("--jobs", nargs="+", type=int, default=[2, 1])
    p.add_argument("--batch", nargs="+", default=["auto"], choices=["auto", "on", "off"])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "sweep_times.json")
    p.add_argument("--append", action="store_true", help="add these sweeps' rows to those already in --out")
    args = p.parse_args()
    earlier = json.loads(args.out.read_text())["rows"] if args.append and args.out.exists() else []
    rows = []
    for name in args.experiments:
        for jobs in args.jobs:
            for batch in args.batch:
                row = timed_sweep(name, jobs, batch)
                rows.append(row)
                print(f"{name:24s} --jobs {jobs} batch_cells={batch:4s}: {row['runs']} runs ({row['bundled_runs']} "
                      f"bundled), estimated {row['estimate_seconds']:.0f} s, took {row['wall_seconds']:.0f} s "
                      f"({100 * row['error']:+.0f}%)", flush=True)
    for name in args.experiments:
        for jobs in args.jobs:
            walls = {r["batch_cells"]: r["wall_seconds"] for r in rows if r["experiment"] == name and r["jobs"] == jobs}
            if "auto" in walls and "off" in walls:
                print(f"{name} --jobs {jobs}: batch_cells off / auto = {walls['off'] / walls['auto']:.2f}x")
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json({"rows": earlier + [{**r, "measured_at": stamp} for r in rows]}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
