"""What each update geometry costs per training step, against a plain Adam step.

Times whole training steps (forward, backward, optimizer) of a ResMLP on random data, with
the variants interleaved so that machine noise hits them alike, and prints median times and
ratios to plain Adam measured in this one run. Variants (``--variants``):

* ``adam``      plain Adam (the denominator);
* ``normed``    Adam normalized in the modular norm, tracked spectral norms (the default);
* ``exact``     the same with SVD spectral norms;
* ``dualized``  Adam's direction dualized (quintic Newton–Schulz, 13 steps);
* ``muon``      the Muon recipe.

Goals: normalized ≤ 1.05× plain Adam at width ≥ 256 (issue 8); the dualized cost is reported
at widths 256 and 1024 (issue 9). Run on demand: python benchmarks/step_cost.py
[--widths 256,1024] [--variants adam,normed,dualized] [--device cuda]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lrtransfer.models import build
from lrtransfer.optim import make_optimizer

VARIANTS = {  # name: (optimizer, update, lr, extra make_optimizer options)
    "adam": ("adam", "plain", 1e-3, {}),
    "normed": ("adam", "normalize", 0.1, {}),
    "exact": ("adam", "normalize", 0.1, {"exact": True}),
    "dualized": ("adam", "dualize", 0.1, {"ns": "quintic"}),  # 13 steps (the default)
    "muon": ("muon", "plain", 0.02, {}),
}


def step_time(model, opt, x, y, sync) -> float:
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sync()
    return time.perf_counter() - t0


def measure(width: int, names: list[str], repeats: int, depth: int, batch: int, device) -> dict[str, float]:
    """Median milliseconds per step of each variant at ``width``, interleaved."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    x = torch.randn(batch, 256, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    variants = {}
    for name in names:
        optimizer, update, lr, extra = VARIANTS[name]
        model = build("mlp", width, depth, input_dim=256, output_dim=10).to(device)
        opt = make_optimizer(model, optimizer, lr, update=update, schedule="constant", **extra)
        for _ in range(3):
            step_time(model, opt, x, y, sync)  # warm up (and the cold start of the tracking)
        variants[name] = (model, opt, [])
    for _ in range(repeats):
        for model, opt, times in variants.values():
            times.append(step_time(model, opt, x, y, sync))
    return {name: statistics.median(v[2]) * 1e3 for name, v in variants.items()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--widths", default="256,512,1024")
    p.add_argument("--variants", default="adam,normed,dualized,muon,exact")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    names = args.variants.split(",")
    unknown = set(names) - set(VARIANTS)
    if unknown or "adam" not in names:
        p.error(f"--variants: must include adam; allowed: {', '.join(VARIANTS)}")
    dev = torch.device(args.device)
    print(f"device {dev}, ResMLP depth {args.depth}, batch {args.batch}, {args.repeats} interleaved steps per variant")
    print(f"{'width':>6} " + " ".join(f"{n + ' ms':>12}" for n in names)
          + " " + " ".join(f"{n + '/adam':>14}" for n in names if n != "adam"))
    for width in map(int, args.widths.split(",")):
        ms = measure(width, names, args.repeats, args.depth, args.batch, dev)
        print(f"{width:>6} " + " ".join(f"{ms[n]:>12.2f}" for n in names)
              + " " + " ".join(f"{ms[n] / ms['adam']:>14.3f}" for n in names if n != "adam"), flush=True)


if __name__ == "__main__":
    main()
