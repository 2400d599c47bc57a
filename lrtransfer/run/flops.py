"""Training compute in FLOPs, counted by torch's ``FlopCounterMode`` on one batch of the run's own
model and optimizer; the first step apart from the later ones (docs/results.md, "Training FLOPs")."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

# keys that change neither the model nor the shape of a step: runs differing only here cost the same
COST_FREE = ("lr", "elr", "seed", "weight_decay", "momentum", "beta1", "beta2", "eps", "warmup", "schedule",
             "series", "run_id", "code_fingerprint", "data_fingerprint")


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer=None) -> int:
    """FLOPs of one training step on batch ``(x, y)``: forward, cross-entropy over the last
    dimension, backward and (when given) ``optimizer.step()``. The gradients are cleared after."""
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1))
        loss.backward()
        if optimizer is not None:
            optimizer.step()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def run_step_flops(values: dict, device: str = "cpu") -> tuple[int, int]:
    """FLOPs of the first and of a later (the second) training step of the run ``values``
    describes, on batches of its data."""
    from .train import dataset_for, model_for, optimizer_for
    device = torch.device(device)
    ds = dataset_for(values, device)
    with torch.random.fork_rng(devices=[]):   # the run's own weights, the caller's random stream untouched
        torch.manual_seed(values.get("seed", 0))
        model = model_for(values, ds).to(device)
    optimizer = optimizer_for(values, model)
    batches = torch.Generator().manual_seed(values.get("seed", 0))
    return tuple(step_flops(model, *ds.sample("train", values["batch_size"], batches), optimizer) for _ in range(2))


def steps_trained(row: dict) -> int:
    """Steps a recorded run trained: all of them, or those before the step it diverged at."""
    at = row.get("diverged_at_step")
    if row.get("status") == "diverged" and at is not None and math.isfinite(at):
        return int(at)
    return int(row["steps"])


class FlopCounter:
    """Training FLOPs of recorded runs, one count per distinct step shape (``COST_FREE`` keys
    ignored)."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._counts: dict[str, tuple[int, int]] = {}

    def _first_and_later(self, values: dict) -> tuple[int, int]:
        from .provenance import is_metadata  # metrics, timing and provenance change no step either
        key = repr(sorted((k, repr(v)) for k, v in values.items() if k not in COST_FREE and not is_metadata(k)))
        if key not in self._counts:
            self._counts[key] = run_step_flops(values, self.device)
        return self._counts[key]

    def per_step(self, values: dict) -> int:
        """FLOPs of one later (warm) training step of runs shaped like ``values``."""
        return self._first_and_later(values)[1]

    def steps(self, values: dict, n: int) -> int:
        """FLOPs of the first ``n`` training steps of a run shaped like ``values``."""
        first, later = self._first_and_later(values)
        return first + (n - 1) * later if n > 0 else 0

    def run(self, row: dict) -> int:
        """Training FLOPs of one recorded run (its row holds its config)."""
        return self.steps(row, steps_trained(row))
