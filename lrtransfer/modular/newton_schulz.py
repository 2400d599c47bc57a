"""Orthogonalization: the dual map of the spectral norm (science.md §2).

Steepest descent under the spectral norm steps along U Vᵀ for a gradient G = U Σ Vᵀ: every
non-zero singular value set to 1, zero ones left at 0. Newton–Schulz iterations get there
with matrix products only. Scale X = G / ‖G‖_F (so every σ ≤ 1), then repeat

    X ← a·X + b·(X Xᵀ) X + c·(X Xᵀ)² X,

which maps each singular value σ to p(σ) = aσ + bσ³ + cσ⁵ and leaves the singular vectors
alone. An odd polynomial sends 0 to 0, so a rank-deficient G stays rank-deficient (up to its
rounding, which grows by p'(0) = a per step: 3^10 ≈ 6e4 for quintic's default steps).

* ``cubic``: p(σ) = (3σ − σ³)/2, the classic iteration (Björck & Bowie 1971). Fixed point 1
  with p'(1) = 0; a small σ grows by 1.5× per step.
* ``quintic``: p(σ) = 3σ − (16/5)σ³ + (6/5)σ⁵, the quintic of Modular Duality (Bernstein &
  Newhouse 2024, arXiv 2410.21265; the modula docs' "quintic iteration"). Fixed point 1 with
  p'(1) = −0.6: it converges by oscillating around 1 (the error × −0.6 per step), overshooting
  to at most 1.21 on the way; a small σ grows by 3× per step.
* ``taylor5``: p(σ) = (15σ − 10σ³ + 3σ⁵)/8, the degree-5 member of the Taylor (Newton–Schulz)
  family the cubic heads (p'(1) = p''(1) = 0): never above 1, a small σ grows by 1.875× per step.
* ``muon``: Muon's coefficients (3.4445, −4.7750, 2.0315), tuned to grow small σ fast
  (3.4× per step) at the price of not converging: after 5 steps every σ ≥ 2e-3·‖G‖_F lands
  in [0.68, 1.21] instead of at 1 (scalar map; tests check [0.6, 1.25] on matrices).
* ``svd``: U Vᵀ from an SVD, exact (singular values below a relative 1e-6·σ₁ count as 0).

``steps=None`` takes ``DEFAULT_STEPS[method]``, computed on the scalar map for every
σ ∈ [1e-3, 1]·‖G‖_F: for cubic (20) and taylor5 (13) the fewest steps that bring each within
1e-3 of 1; for quintic (10) the fewest that bring each within 2% of 1 (it lands in
[0.990, 1.018]; each further decade of accuracy costs it about 4.5 steps, 16 reach 1e-3). A
smaller σ needs about log(‖G‖_F/σ)/log(growth) steps more; gradients often have such
directions. On a matrix of condition number 1e4 (σ from 1 to 1e-4, geometrically) the
default steps leave σ_min at about 0.97 for quintic but 0.18 for taylor5 and 0.17 for cubic
(tests/test_newton_schulz.py).
"""
from __future__ import annotations

import torch

COEFFICIENTS = {
    "cubic": (1.5, -0.5, 0.0),
    "quintic": (3.0, -16 / 5, 6 / 5),
    "taylor5": (15 / 8, -10 / 8, 3 / 8),
    "muon": (3.4445, -4.7750, 2.0315),
}
METHODS = ("cubic", "quintic", "taylor5", "muon", "svd")
DEFAULT_STEPS = {"cubic": 20, "quintic": 10, "taylor5": 13, "muon": 5, "svd": 0}

_EPS = 1e-12


def orthogonalize(g: torch.Tensor, method: str = "quintic", steps: int | None = None) -> torch.Tensor:
    """U Vᵀ of ``g`` (or of each matrix in a batch ``(…, rows, cols)``), approximately.

    Returns a new tensor in ``g``'s dtype (computed in float32 at least); ``g`` is untouched.
    A zero matrix maps to zero.
    """
    if method not in METHODS:
        raise ValueError(f"ns: unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if g.ndim < 2:
        raise ValueError(f"orthogonalize: needs a matrix (…, rows, cols), got shape {tuple(g.shape)}")
    steps = DEFAULT_STEPS[method] if steps is None or steps == 0 else steps
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"ns_steps: must be a non-negative int, got {steps!r}")
    x = g if g.dtype in (torch.float32, torch.float64) else g.float()
    if method == "svd":
        return _svd_polar(x).to(g.dtype)
    # Work on the short side: X Xᵀ is then the smaller Gram matrix.
    wide = x.shape[-2] > x.shape[-1]
    if wide:
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + _EPS)
    a, b, c = COEFFICIENTS[method]
    for _ in range(steps):
        gram = x @ x.mT
        poly = b * gram + c * (gram @ gram) if c else b * gram
        x = a * x + poly @ x
    if wide:
        x = x.mT
    return x.to(g.dtype)


def _svd_polar(x: torch.Tensor) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    keep = s > 1e-6 * s.amax(dim=-1, keepdim=True).clamp_min(_EPS)
    return (u * keep.unsqueeze(-2).to(u.dtype)) @ vh
