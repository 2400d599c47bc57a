"""How close a normalized update is to its target (its cost: benchmarks/step_cost.py).

Accuracy: the quickstart configuration (ResMLP depth 2, block_depth 2, MNIST-1D with 40,000
samples, batch 128, Adam normalized with the default tracked spectral norms, lr 2^-2, linear
decay, 300 steps). At every step, for every Linear atom, the ratio (SVD spectral norm of the
update actually applied) / (the atom's target share × the current lr) is computed. With weight
decay 0 the applied update is w_before − w_after. Ratio 1 is exact; above 1 the step is
larger than the README's "modular norm lr". Per width, the table gives the ratio at step 0
(max over atoms), the max after step 0, the mean, and the fraction of atom-steps above 1.05.

Run on demand (not a test): python benchmarks/normalize_accuracy.py [--steps 300]
[--widths 32,128,512] [--device cpu]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from lrtransfer import data
from lrtransfer.models import build
from lrtransfer.modular import Linear, exact_spectral_norm
from lrtransfer.optim import make_optimizer


def accuracy(width: int, steps: int, ds, device, seed: int = 0) -> dict:
    torch.manual_seed(seed)  # as a sweep run: the model (and its tracking state) from the seed
    model = build("mlp", width, 2, block_depth=2, input_dim=40, output_dim=10).to(device)
    opt = make_optimizer(model, "adam", 2.0 ** -2, update="normalize", schedule="linear", steps=steps,
                         beta1=0.9, beta2=0.99)
    atoms = model.atoms()
    linear = [k for k, a in enumerate(atoms) if isinstance(a, Linear)]
    shares = model.targets(1.0)
    batches = torch.Generator().manual_seed(seed)
    ratios = []  # (steps, linear atoms)
    for _ in range(steps):
        x, y = ds.sample("train", 128, batches)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        before = [atoms[k].weight.detach().clone() for k in linear]
        lr = opt.step()
        with torch.no_grad():
            row = [float(exact_spectral_norm(w - atoms[k].weight)) / (shares[k] * lr)
                   for w, k in zip(before, linear)]
        ratios.append(row)
    r = torch.tensor(ratios)
    later = r[1:]
    return {"width": width, "step0": float(r[0].max()), "max_after0": float(later.max()),
            "mean": float(r.mean()), "frac_above_1.05": float((later > 1.05).float().mean()),
            "final_loss": loss.item()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--widths", default="32,128,512")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    ds = data.load("mnist1d", samples=40000).to(device)
    print(f"accuracy: ResMLP depth 2 on MNIST-1D, normed Adam lr 2^-2, linear decay, {args.steps} steps, "
          f"ratio = SVD norm of applied update / target, over every Linear atom")
    print(f"{'width':>6} {'step 0':>8} {'max >0':>8} {'mean':>8} {'>1.05':>8} {'loss':>7}")
    for width in map(int, args.widths.split(",")):
        r = accuracy(width, args.steps, ds, device)
        print(f"{width:>6} {r['step0']:>8.4f} {r['max_after0']:>8.4f} {r['mean']:>8.4f} "
              f"{r['frac_above_1.05']:>8.4f} {r['final_loss']:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
