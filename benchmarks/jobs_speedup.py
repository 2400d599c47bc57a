"""Workers side by side: the quickstart's Adam width × LR grid with --jobs 1 and --jobs N.

Each run uses its config's thread count (1 by default), so N workers on N cores train N
cells at once instead of fighting over the cores. Goal on 2 cores: --jobs 2 takes at most
0.8× the wall time of --jobs 1. Also checks the two sweeps recorded bit-identical losses.
Both timings are taken in this one invocation, one after the other; run it on a quiet machine.

Usage: python benchmarks/jobs_speedup.py [--jobs N] [--seeds S]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lrtransfer.sweep import experiment_from_dict, run_sweep  # noqa: E402
from lrtransfer.sweep.sweep import available_cores  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=available_cores())
    p.add_argument("--seeds", type=int, default=1)
    args = p.parse_args()
    raw = tomllib.loads((ROOT / "experiments" / "quickstart.toml").read_text())
    raw["series"] = {"adam": raw["series"]["adam"]}
    raw["seeds"] = args.seeds
    exp = experiment_from_dict(raw, "quickstart_adam")
    n = len(exp.cells())
    times, losses = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in (1, args.jobs):
            start = time.perf_counter()
            runs = run_sweep(exp, Path(tmp) / f"jobs{jobs}", jobs=jobs, device="cpu", progress=False).runs
            times[jobs] = time.perf_counter() - start
            losses[jobs] = runs.set_index("run_id")["final_train_loss"].sort_index()
            print(f"--jobs {jobs}: {n} cells in {times[jobs]:.1f} s", flush=True)
    identical = losses[1].equals(losses[args.jobs])
    ratio = times[args.jobs] / times[1]
    print(f"ratio --jobs {args.jobs} / --jobs 1: {ratio:.2f} (goal <= 0.80 on 2 cores); "
          f"losses bit-identical: {identical}")


if __name__ == "__main__":
    main()
