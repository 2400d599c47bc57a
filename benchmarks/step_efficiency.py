"""How close a training step comes to the machine: the suite's step, a hand-written torch step
of the same shapes, and both as a fraction of measured matmul throughput.

For the quickstart's ResMLP (2 blocks of 2 Linears, batch 128, 40 inputs, 10 classes) at each
width, times (medians over interleaved repeats, one run, one thread):

* **suite**: ``lrtransfer.models.build`` + ``make_optimizer("adam")``: forward, loss, the
  loss read back (the divergence check), backward, step;
* **torch**: the same shapes as ``nn.Linear`` / ``nn.LayerNorm`` modules with
  ``torch.optim.Adam(foreach=True)``, the same loop;
* **matmul**: the throughput of this machine's float32 GEMM at the model's largest shapes
  (FLOP/s), and from it the step's **efficiency**: the step's matmul FLOPs (forward 2, backward
  4 per multiply-add: 6 · batch · weights) over (step time × throughput).

Usage: python benchmarks/step_efficiency.py [--widths 32,128,512] [--repeats 200]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lrtransfer.models import build  # noqa: E402
from lrtransfer.optim import make_optimizer  # noqa: E402

BATCH, INPUTS, CLASSES, BLOCKS, LAYERS = 128, 40, 10, 2, 2


class Block(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        self.body = nn.Sequential(*[m for _ in range(LAYERS) for m in (nn.LayerNorm(w, elementwise_affine=False),
                                                                     nn.Linear(w, w, bias=False), nn.ReLU())])

    def forward(self, x):
        return x + self.body(x) / BLOCKS


def torch_model(w: int) -> nn.Module:
    return nn.Sequential(nn.Linear(INPUTS, w, bias=False), *[Block(w) for _ in range(BLOCKS)],
                         nn.LayerNorm(w, elementwise_affine=False), nn.Linear(w, CLASSES, bias=False))


def step_fn(model, opt, x, y):
    def step():
        loss = F.cross_entropy(model(x), y)
        loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def matmul_flops(w: int, repeats: int) -> float:
    """float32 GEMM throughput (FLOP/s) at the step's largest multiply: (batch × w) · (w × w)."""
    a, b = torch.randn(BATCH, w), torch.randn(w, w)
    for _ in range(10):
        a @ b
    ms = median_ms(lambda: a @ b, repeats * 5)
    return 2 * BATCH * w * w / (ms / 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="32,128,512")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y = torch.randn(BATCH, INPUTS), torch.randint(0, CLASSES, (BATCH,))
    print(f"{'width':>6} {'suite ms':>9} {'torch ms':>9} {'suite/torch':>12} {'GEMM GFLOP/s':>13} "
          f"{'suite eff.':>11} {'torch eff.':>11}")
    for w in (int(v) for v in args.widths.split(",")):
        torch.manual_seed(0)
        suite_model = build("mlp", w, BLOCKS, input_dim=INPUTS, output_dim=CLASSES, block_depth=LAYERS)
        suite = step_fn(suite_model, make_optimizer(suite_model, "adam", lr=1e-3, schedule="constant"), x, y)
        ref_model = torch_model(w)
        ref = step_fn(ref_model, torch.optim.Adam(ref_model.parameters(), lr=1e-3, foreach=True), x, y)
        for _ in range(10):
            suite(), ref()
        s_ms, t_ms = [], []
        for _ in range(5):   # interleaved blocks: noise hits both alike
            s_ms.append(median_ms(suite, args.repeats // 5))
            t_ms.append(median_ms(ref, args.repeats // 5))
        s, t = statistics.median(s_ms), statistics.median(t_ms)
        weights = sum(p.numel() for p in ref_model.parameters())
        flops = 6 * BATCH * weights
        peak = matmul_flops(w, args.repeats)
        print(f"{w:>6} {s:>9.3f} {t:>9.3f} {s / t:>12.2f} {peak / 1e9:>13.1f} "
              f"{flops / (s / 1e3) / peak:>10.1%} {flops / (t / 1e3) / peak:>10.1%}")


if __name__ == "__main__":
    main()
