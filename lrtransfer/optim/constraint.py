"""Training on the sphere (Kodryan et al. 2022): the scale-invariant weights projected back to
their initial joint norm after every step, the rest frozen, so the effective LR lr/ρ₀² stays
fixed; the frozen head set once to a norm and direction every run shares (``fix_head``). The
relation and the setup: docs/optimizers.md.
"""
from __future__ import annotations

import math

import torch

from ..modular import Module

CONSTRAINTS = ("none", "sphere")
# The seed of the frozen head's direction: one constant, so every run of an experiment (every
# seed, every ELR) shares the head, as the authors' code does (its `same_last_layer`).
HEAD_SEED = 228


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


@torch.no_grad()
def fix_head(model: Module, norm: float) -> list[int]:
    """Set each frozen output atom (the head of a post-norm model) to a Gaussian direction drawn
    from ``HEAD_SEED`` (the same for every run) at Frobenius norm ``norm`` of the matrix the
    forward applies (the atom's scale times its weight); the global random stream is not
    touched. Returns the indices of the atoms set; ``norm`` 0 leaves the head as initialised.

    Why: the modular head (spectral norm 1, features of RMS 1) bounds the logits' norm by
    √classes, so cross-entropy cannot approach 0 and the converge regime cannot happen; the
    authors fix the head at Frobenius norm 10 for every run (docs/optimizers.md)."""
    if not (math.isfinite(norm) and norm >= 0):
        raise ValueError(f"head_norm = {norm!r}: allowed: a finite number >= 0 (0: keep the initial head)")
    if norm == 0:
        return []
    flags = model.scale_invariant()
    chosen = [k for k, (role, si) in enumerate(zip(model.roles(), flags)) if role == "output" and not si]
    atoms = model.atoms()
    for k in chosen:
        weight = atoms[k].weight
        scale = getattr(atoms[k], "scale", None)
        if not isinstance(scale, float):
            raise ValueError(f"head_norm: the output atom {type(atoms[k]).__name__} has no single forward scale")
        direction = torch.randn(weight.shape, generator=torch.Generator().manual_seed(HEAD_SEED),
                                dtype=torch.float64)
        weight.copy_((direction * (norm / (scale * float(direction.norm())))).to(weight.dtype))
    return chosen
