"""Cost of a normalized step vs a plain Adam step (target: <= 1.05x at width >= 256).

Times whole training steps (forward, backward, optimizer) of a ResMLP on random data,
interleaving the variants so machine noise hits them alike, and prints median ratios
measured in this one run. Usage: python benchmarks/normalize_overhead.py [--device cuda]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lrtransfer.models import build
from lrtransfer.optim import make_optimizer


def step_time(model, opt, x, y, sync) -> float:
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sync()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--widths", default="256,512,1024")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"device {dev}, ResMLP depth {args.depth}, batch {args.batch}, {args.repeats} interleaved steps per variant")
    print(f"{'width':>6} {'adam ms':>9} {'normed ms':>10} {'exact ms':>9} {'normed/adam':>12} {'exact/adam':>11}")
    for width in map(int, args.widths.split(",")):
        torch.manual_seed(0)
        x = torch.randn(args.batch, 256, device=dev)
        y = torch.randint(0, 10, (args.batch,), device=dev)
        variants = {}
        for name, normalize, exact in (("adam", False, False), ("normed", True, False), ("exact", True, True)):
            model = build("mlp", width, args.depth, input_dim=256, output_dim=10).to(dev)
            opt = make_optimizer(model, "adam", 1e-3 if not normalize else 0.1, normalize=normalize,
                                 schedule="constant", exact=exact)
            for _ in range(3):
                step_time(model, opt, x, y, sync)  # warm up
            variants[name] = (model, opt, [])
        for _ in range(args.repeats):
            for model, opt, times in variants.values():
                times.append(step_time(model, opt, x, y, sync))
        med = {k: statistics.median(v[2]) * 1e3 for k, v in variants.items()}
        print(f"{width:>6} {med['adam']:>9.2f} {med['normed']:>10.2f} {med['exact']:>9.2f} "
              f"{med['normed'] / med['adam']:>12.3f} {med['exact'] / med['adam']:>11.3f}")


if __name__ == "__main__":
    main()
