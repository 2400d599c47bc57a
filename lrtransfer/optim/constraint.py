"""Training on the sphere (Kodryan, Lobacheva, Nakhodnov & Vetrov 2022, "Training
scale-invariant neural networks on the sphere can happen in three regimes"; SCIENCE.md §5).

A weight is scale-invariant (SI) when the network's output ignores its scale
(``Module.scale_invariant``). Gradient steps on SI weights only turn them, and how far a step
of size lr turns them depends on their norm: the effective learning rate is

    ELR = lr / ρ²,   ρ = ‖(w_1, …, w_k)‖₂ over all SI weights together,

the LR the same network would have with its SI weights scaled to the unit sphere. Following
the paper, ``Sphere`` fixes ρ at its initial value ρ₀ by projecting the concatenated SI
weights back onto the sphere of radius ρ₀ after every step, so the ELR stays at lr/ρ₀² for
the whole run, and keeps every other weight (the head) frozen at its initialisation, so the
whole trainable network lives on the sphere. ``lr_for_elr`` inverts the relation.
"""
from __future__ import annotations

import math

import torch

from ..modular import Module

CONSTRAINTS = ("none", "sphere")


def scale_invariant_atoms(model: Module) -> list:
    """The model's scale-invariant atoms; a clear error when it has none."""
    atoms = [a for a, si in zip(model.atoms(), model.scale_invariant()) if si]
    if not atoms:
        raise ValueError("the model has no scale-invariant weights (a weight followed by a "
                         "normalization): use a post-norm model (mlp/resnet option norm = \"post\") "
                         "or condition = true")
    return atoms


def sphere_radius(model: Module) -> float:
    """ρ: the ℓ2 norm of all scale-invariant weights together, as they are now."""
    with torch.no_grad():
        return math.sqrt(sum(float(a.weight.double().pow(2).sum()) for a in scale_invariant_atoms(model)))


def lr_for_elr(model: Module, elr: float) -> float:
    """The LR whose ELR is ``elr`` at the model's current SI radius: lr = elr · ρ²."""
    return elr * sphere_radius(model) ** 2


def elr_for_lr(model: Module, lr: float) -> float:
    """The ELR of ``lr`` at the model's current SI radius: lr / ρ²."""
    return lr / sphere_radius(model) ** 2


class Sphere:
    """Keeps the scale-invariant weights on the sphere of their initial joint radius."""

    def __init__(self, model: Module):
        flags = model.scale_invariant()
        self.atoms = scale_invariant_atoms(model)
        self.frozen = [not f for f in flags]     # aligned with model.atoms(): not trained
        self.params = [a.weight for a in self.atoms]
        self.radius = sphere_radius(model)

    @torch.no_grad()
    def project(self) -> None:
        """Rescale the SI weights jointly back to norm ``radius`` (on the device: no host sync)."""
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.params)))
        torch._foreach_mul_(self.params, (self.radius / norm).to(self.params[0].dtype))
