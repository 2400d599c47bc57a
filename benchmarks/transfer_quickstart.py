"""docs/science.md §6 fact 7, as a benchmark: on the quickstart's power-of-two LR grid the normed
Adam optimum stays within ±1 octave across width (verdict `transfers`), plain Adam's moves
several octaves (`drifts`), each judged on the 90% CI over seeds.

Runs (or resumes) the quickstart sweep and prints the verdict per series. ~4 min on 2 cores.
Usage: python benchmarks/transfer_quickstart.py [--results DIR] [--set key=value ...]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lrtransfer.analysis import transfer as analysis
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
    v = analysis.verdict_table(runs, metric=args.metric)
    print(v[["series", "axis", "verdict", "drift", "drift_ci_lo", "drift_ci_hi", "slope", "regret",
             "flags"]].to_string(index=False))
    d = dict(zip(v["series"], v["verdict"]))
    holds = d.get("normed_adam") == "transfers" and d.get("adam") == "drifts"
    print(f"normed Adam: {d.get('normed_adam')}, Adam: {d.get('adam')}: "
          f"{'transfer holds' if holds else 'NOT as expected'}")


if __name__ == "__main__":
    main()
