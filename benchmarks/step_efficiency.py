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

Then the quickstart's **compute floors**. First, the matrix-product FLOPs of every run recorded in
``results/quickstart/runs.parquet`` (``lrtransfer.run.flops.FlopCounter``: torch's FlopCounterMode
over the first and a later step of each run shape, forward, backward and update, the first once
and the later one for every other step the run trained), over the cores this process may use
times the GEMM throughput measured here at the widest shape, against the
sweep's wall time in ``results/quickstart/reference.json``: how much of the sweep is
arithmetic that no scheduling can remove. Second, the same products at the speed they run
*inside* the suite's own step (cold caches, a step's 16 MB working set at width 512): for each
run shape of the runs the sweep trained alone (not bundled), ``train.execute`` of the shape's
smallest-LR cell with diagnostics off, the seconds spent inside aten's matrix products timed
op by op (``ProductClock``, a dispatch mode) over warm steps, beside the whole step's seconds
timed without it; times each run's steps trained, over the cores: what those runs' products
and whole steps alone take with every core busy, before the narrower bundled runs, the
start-up and everything a sweep adds.

Writes ``results/benchmarks/step_efficiency.json`` (the README's speed section is made from it).

Usage: python benchmarks/step_efficiency.py [--widths 32,128,512] [--repeats 200] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from lrtransfer.run.flops import FlopCounter, steps_trained  # noqa: E402
from lrtransfer.models import build  # noqa: E402
from lrtransfer.optim import make_optimizer  # noqa: E402
from lrtransfer.results.store import write_json  # noqa: E402
from lrtransfer.sweep.config import load_experiment  # noqa: E402
from lrtransfer.sweep.sweep import available_cores  # noqa: E402
from lrtransfer.sweep.worker import keep_freed_memory  # noqa: E402
from lrtransfer.run.train import execute  # noqa: E402

QUICKSTART = ROOT / "results" / "quickstart"

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


def quickstart_floor(recorded: pd.DataFrame, took: float, counter: FlopCounter, peak: float) -> dict:
    """The committed quickstart's training matmul FLOPs and the seconds they need at ``peak``
    FLOP/s per core on every core of this machine, beside the seconds the sweep took."""
    flops = sum(counter.run(r) for r in recorded.to_dict("records"))
    cores = available_cores()
    floor = flops / (cores * peak)
    return {"runs": len(recorded), "tflop": round(flops / 1e12, 3), "cores": cores, "gemm_gflops": round(peak / 1e9, 1),
            "floor_seconds": round(floor, 1), "sweep_seconds": took, "sweep_over_floor": round(took / floor, 2)}


_PRODUCTS = {torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default,
             torch.ops.aten.baddbmm.default}


class ProductClock(TorchDispatchMode):
    """Seconds spent inside aten's matrix products (mm, bmm, addmm, baddbmm) while active,
    each call timed on its own (a CPU op returns when done: no sync is needed)."""

    def __init__(self):
        super().__init__()
        self.seconds = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func not in _PRODUCTS:
            return func(*args, **(kwargs or {}))
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds += time.perf_counter() - t0
        return out


def product_and_step_seconds(values: dict, steps: int = 60, warm: int = 10) -> tuple[float, float, float]:
    """(the first step's product seconds, a warm step's product seconds, a warm step's whole
    seconds) of ``execute`` on ``values``, diagnostics off: the products op by op under
    ``ProductClock``, the whole step in a second run without it (the clock's Python hop on
    every op would count)."""
    values = {**values, "steps": steps, "diagnostics": False, "eval_examples": 1, "code_fingerprint": None}
    execute({**values, "steps": 3})   # data loaded, allocator and kernels warm
    clock, products, walls = ProductClock(), {}, {}
    with clock:
        execute(values, on_step=lambda step, _: products.__setitem__(step, clock.seconds))
    execute(values, on_step=lambda step, _: walls.__setitem__(step, time.perf_counter()))
    return (products[1], (products[steps] - products[warm]) / (steps - warm),
            (walls[steps] - walls[warm]) / (steps - warm))


def in_step_floor(recorded: pd.DataFrame, took: float, counter: FlopCounter) -> dict:
    """The products and whole steps of the quickstart runs the reference sweep trained alone,
    at the speed they run inside the suite's step (``product_and_step_seconds`` per run shape),
    summed over each run's steps trained (the first step's products once, as
    ``FlopCounter.steps`` counts FLOPs) and divided over this machine's cores."""
    alone = recorded[recorded["bundle_size"] == 1]
    cells = [c.values for c in load_experiment(ROOT / "experiments" / "quickstart.toml").cells()]
    rows, products, whole = [], 0.0, 0.0
    for (series, width), group in alone.groupby(["series", "width"]):
        # the shape's smallest-LR cell (it trains every step) of the experiment as it is now
        values = min((v for v in cells if v["series"] == series and v["width"] == width), key=lambda v: v["lr"])
        first, later, step = product_and_step_seconds(values)
        trained = [steps_trained(r) for r in group.to_dict("records")]
        flops = counter.per_step(values)
        products += sum(first + (n - 1) * later for n in trained if n > 0)
        whole += sum(n * step for n in trained)
        rows.append({"series": series, "width": int(width), "runs": len(group), "product_ms": round(later * 1e3, 2),
                     "step_ms": round(step * 1e3, 2), "product_share": round(later / step, 3),
                     "in_step_gflops": round(flops / later / 1e9, 1)})
        print(f"  {series} width {width}: products {later * 1e3:.2f} ms of a {step * 1e3:.2f} ms step "
              f"({flops / later / 1e9:.1f} GFLOP/s inside the step), {len(group)} runs")
    cores = available_cores()
    return {"rows": rows, "runs": len(alone), "of_runs": len(recorded), "cores": cores,
            "product_seconds": round(products / cores, 1), "step_seconds": round(whole / cores, 1),
            "sweep_seconds": took}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="32,128,512")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "step_efficiency.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()   # every step below is timed with the allocator a sweep's worker runs with
    x, y = torch.randn(BATCH, INPUTS), torch.randint(0, CLASSES, (BATCH,))
    print(f"{'width':>6} {'suite ms':>9} {'torch ms':>9} {'suite/torch':>12} {'GEMM GFLOP/s':>13} "
          f"{'suite eff.':>11} {'torch eff.':>11}")
    rows, peaks = [], {}
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
        peaks[w] = peak = matmul_flops(w, args.repeats)
        row = {"width": w, "suite_ms": round(s, 3), "torch_ms": round(t, 3), "suite_over_torch": round(s / t, 2),
               "gemm_gflops": round(peak / 1e9, 1), "suite_efficiency": round(flops / (s / 1e3) / peak, 3),
               "torch_efficiency": round(flops / (t / 1e3) / peak, 3)}
        rows.append(row)
        print(f"{w:>6} {s:>9.3f} {t:>9.3f} {row['suite_over_torch']:>12.2f} {row['gemm_gflops']:>13.1f} "
              f"{row['suite_efficiency']:>10.1%} {row['torch_efficiency']:>10.1%}")
    floor = inside = None
    runs, meta = QUICKSTART / "runs.parquet", QUICKSTART / "reference.json"
    if runs.exists() and meta.exists():
        recorded, took, counter = pd.read_parquet(runs), json.loads(meta.read_text())["wall_seconds"], FlopCounter("cpu")
        floor = quickstart_floor(recorded, took, counter, peaks[max(peaks)])   # the widest shape's GEMM rate: where the FLOPs are
        print(f"quickstart: {floor['runs']} runs, {floor['tflop']:.2f} TFLOP of matrix products; at "
              f"{floor['gemm_gflops']:.1f} GFLOP/s on each of {floor['cores']} cores that is {floor['floor_seconds']:.0f} s; "
              f"the sweep took {floor['sweep_seconds']:.0f} s ({floor['sweep_over_floor']:.2f}× the floor)")
        print("quickstart runs trained alone, at the speed their steps run here:")
        inside = in_step_floor(recorded, took, counter)
        print(f"quickstart: the {inside['runs']} runs trained alone: their matrix products take "
              f"{inside['product_seconds']:.0f} s and their whole steps {inside['step_seconds']:.0f} s on "
              f"{inside['cores']} cores, all busy; the sweep of all {inside['of_runs']} took {inside['sweep_seconds']:.0f} s")
    write_json({"measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
                "torch": torch.__version__, "threads": 1, "batch": BATCH, "rows": rows, "quickstart_floor": floor,
                "quickstart_in_step": inside},
               args.out)


if __name__ == "__main__":
    main()
