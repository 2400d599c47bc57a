"""The anchor: the quickstart's Adam width × LR grid with the suite, and as a hand-written sweep.

Runs the same grid two ways in this one invocation, one after the other, on the same cores:

* **suite**: ``run_sweep`` with its default workers (one per core), diagnostics and all, and
  its default ``batch_cells = "auto"`` (narrow cells trained together);
* **by hand**: the loop researchers write — for every cell a fresh ``python`` process running
  the script below (an ``nn.Module`` ResMLP of ``nn.Sequential`` blocks, ``torch.optim.Adam``,
  a shuffling ``DataLoader`` over the same MNIST-1D arrays, the same steps, batch size, LR
  schedule and final evaluation), ``--parallel`` processes at a time (default: as many as the
  suite's workers, so the comparison is of the machinery, not of the parallelism).

Prints both wall times and the ratio. Goal (issue: speed): the suite ≥ 3× faster. With
``--repeats N`` the two ways alternate N times (suite, by hand, suite, …), so that the host's
slow and fast spells (±20% here from one minute to the next) fall on both alike; the ratio
reported is the median over the N pairs, with every pair's times beside it.

Writes ``results/benchmarks/grid_vs_naive.json`` (the README's speed table is made from it).

Usage: python benchmarks/grid_vs_naive.py [--seeds 1] [--parallel N] [--steps 300] [--repeats 3] [--out PATH]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import datetime, timezone
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lrtransfer.run import batched  # noqa: E402
from lrtransfer.results.store import write_json  # noqa: E402
from lrtransfer.sweep import experiment_from_dict, run_sweep  # noqa: E402
from lrtransfer.sweep.sweep import available_cores  # noqa: E402

# One cell of a hand-written sweep, as researchers write it (run as `python -c SCRIPT args`).
CELL = r'''
import sys, json, math, torch, torch.nn as nn, torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from lrtransfer.data import load
width, depth, lr, steps, batch, seed, samples = (int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]),
                                                  int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]))
torch.set_num_threads(1)
torch.manual_seed(seed)
ds = load("mnist1d", samples=samples)
xtr, ytr, xte, yte = ds.x_train, ds.y_train, ds.x_test, ds.y_test

class Block(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, w), nn.ReLU(), nn.LayerNorm(w), nn.Linear(w, w), nn.ReLU())
    def forward(self, x):
        return x + self.body(x) / depth

model = nn.Sequential(nn.Flatten(), nn.Linear(xtr[0].numel(), width), *[Block(width) for _ in range(depth)],
                      nn.LayerNorm(width), nn.Linear(width, 10))
opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / steps)
loader = DataLoader(TensorDataset(xtr, ytr), batch_size=batch, shuffle=True, drop_last=True)
step, losses = 0, []
while step < steps:
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        losses.append(loss.item()); step += 1
        if step == steps or not math.isfinite(losses[-1]):
            break
    if losses and not math.isfinite(losses[-1]):
        break
with torch.no_grad():
    test = F.cross_entropy(model(xte[:2048]), yte[:2048]).item()
print(json.dumps({"width": width, "lr": lr, "final_train_loss": sum(losses[-50:]) / len(losses[-50:]), "test": test}))
'''


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--parallel", type=int, default=available_cores())
    p.add_argument("--steps", type=int, default=None, help="default: the quickstart's")
    p.add_argument("--repeats", type=int, default=3, help="alternating pairs, odd (the median pair is reported)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "grid_vs_naive.json")
    args = p.parse_args()
    if args.repeats < 1 or args.repeats % 2 == 0:
        p.error(f"--repeats {args.repeats}: must be a positive odd number (the median pair is reported)")
    raw = tomllib.loads((ROOT / "experiments" / "quickstart.toml").read_text())
    raw["series"] = {"adam": raw["series"]["adam"]}
    raw["seeds"] = args.seeds
    if args.steps:
        raw["train"]["steps"] = args.steps
    exp = experiment_from_dict(raw, "quickstart_adam")
    cells = [c.values for c in exp.cells()]

    def suite() -> float:
        batched.forget_probes()   # each sweep probes afresh, as a new process would
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run_sweep(exp, Path(tmp) / "suite", jobs=args.parallel, device="cpu", progress=False)
            return time.perf_counter() - start

    def by_hand(v):
        cmd = [sys.executable, "-c", CELL, str(v["width"]), str(v["depth"]), repr(v["lr"]), str(v["steps"]),
               str(v["batch_size"]), str(v["seed"]), str(v["data.samples"])]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout

    def naive() -> float:
        start = time.perf_counter()
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(by_hand, cells))
        return time.perf_counter() - start

    print(f"{len(cells)} cells ({raw['train']['steps']} steps, batch {raw['train']['batch_size']}), "
          f"{args.parallel} at a time")
    pairs = []
    for i in range(args.repeats):
        s_time, n_time = suite(), naive()
        pairs.append({"suite_seconds": round(s_time, 1), "by_hand_seconds": round(n_time, 1),
                      "ratio": round(n_time / s_time, 2)})
        print(f"pair {i + 1}: suite {s_time:6.1f} s, by hand {n_time:6.1f} s "
              f"(a fresh python per cell, nn.Sequential, torch.optim.Adam, DataLoader): {n_time / s_time:.2f}x")
    middle = sorted(pairs, key=lambda p: p["ratio"])[len(pairs) // 2]   # the median pair (odd N)
    print(f"ratio     {middle['ratio']:7.2f}x  median of {len(pairs)} (by hand / suite; goal >= 3); "
          f"range {min(p['ratio'] for p in pairs):.2f}-{max(p['ratio'] for p in pairs):.2f}x")
    report = {"cells": len(cells), "steps": raw["train"]["steps"], "batch_size": raw["train"]["batch_size"],
              "parallel": args.parallel, "seeds": args.seeds, "repeats": len(pairs),
              "suite_seconds": middle["suite_seconds"], "by_hand_seconds": middle["by_hand_seconds"],
              "ratio": middle["ratio"], "pairs": pairs, "torch": torch.__version__,
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json(report, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
