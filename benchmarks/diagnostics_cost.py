"""What the per-run diagnostics cost: training steps with and without them, one run.

Trains the quickstart's ResMLP (2 blocks of 2 Linears, batch 128, MNIST-1D-sized random
inputs) with Adam, plain and normalized, and times blocks of ``log_every`` steps two ways,
interleaved so machine noise hits both alike: without diagnostics, and with them (a weight
snapshot before the logged step, the measurements after it, as ``train.execute`` does).
Prints the median milliseconds per block and the ratio. Goal (issue: dynamics): ≤ 1.03 at
the default ``log_every`` = 10.

Run on demand: python benchmarks/diagnostics_cost.py [--widths 32,128,512] [--log-every 10]
[--condition] (adds the exact condition numbers of ``log_condition = true``)
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lrtransfer.run.diagnostics import Diagnostics
from lrtransfer.models import build
from lrtransfer.optim import make_optimizer


def block_time(model, opt, diag, x, y, log_every: int) -> float:
    t0 = time.perf_counter()
    for i in range(log_every):
        loss = F.cross_entropy(model(x), y)
        loss.item()   # the training loop reads every loss (divergence check)
        opt.zero_grad()
        loss.backward()
        last = i == log_every - 1
        if last and diag is not None:
            diag.before_step()
        opt.step()
        if last and diag is not None:
            diag.after_step("bench", opt.t, opt.current_lr(), opt.lr_mults)
    return time.perf_counter() - t0


def measure(width: int, update: str, log_every: int, blocks: int, condition: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build("mlp", width, 2, input_dim=40, output_dim=10)
    opt = make_optimizer(model, "adam", lr=0.1 if update == "normalize" else 1e-3, update=update,
                         schedule="constant")
    diag = Diagnostics(model, log_condition=condition)
    x, y = torch.randn(128, 40), torch.randint(0, 10, (128,))
    for _ in range(3):   # warm-up: allocator, tracking blocks, first (exact) diagnostics
        block_time(model, opt, diag, x, y, log_every)
        block_time(model, opt, None, x, y, log_every)
    off, on = [], []
    for _ in range(blocks):
        off.append(block_time(model, opt, None, x, y, log_every))
        on.append(block_time(model, opt, diag, x, y, log_every))
    return statistics.median(off) * 1e3, statistics.median(on) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="32,128,512")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--blocks", type=int, default=60)
    ap.add_argument("--condition", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"ms per block of {args.log_every} steps (median of {args.blocks}); ratio = with / without diagnostics")
    print(f"{'width':>6} {'update':>10} {'without':>9} {'with':>9} {'ratio':>7}")
    for width in (int(w) for w in args.widths.split(",")):
        for update in ("plain", "normalize"):
            off, on = measure(width, update, args.log_every, args.blocks, args.condition)
            print(f"{width:>6} {update:>10} {off:>9.2f} {on:>9.2f} {on / off:>7.3f}")


if __name__ == "__main__":
    main()
