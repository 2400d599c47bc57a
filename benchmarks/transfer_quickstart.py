"""SCIENCE.md §6 fact 7, as a benchmark: on the quickstart's power-of-two LR grid the normed
Adam optimum moves at most one grid point across width, plain Adam's several.

Runs (or resumes) the quickstart sweep and prints the drift per series. ~3 min on 2 cores.
Usage: python benchmarks/transfer_quickstart.py [--results DIR] [--set key=value ...]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lrtransfer import analysis
from lrtransfer.sweep import load_experiment, run_sweep

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--results", default=str(ROOT / "results" / "quickstart"))
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--metric", default="train_loss")
    args = p.parse_args()
    exp = load_experiment(ROOT / "experiments" / "quickstart.toml", args.overrides)
    runs = run_sweep(exp, args.results).runs
    drift = analysis.drift_table(analysis.transfer_table(runs, metric=args.metric))
    print(drift[["series", "axis", "drift_octaves", "drift_octaves_fit", "max_regret", "flags"]].to_string(index=False))
    d = dict(zip(drift["series"], drift["drift_octaves"]))
    verdict = d.get("normed_adam", 99) <= 1 and d.get("adam", 0) >= 2
    print(f"normed Adam drift {d.get('normed_adam')} octaves, Adam drift {d.get('adam')} octaves: "
          f"{'transfer holds' if verdict else 'NOT as expected'}")


if __name__ == "__main__":
    main()
