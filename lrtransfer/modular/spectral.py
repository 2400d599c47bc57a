"""Spectral norms of (batches of) matrices: exact by SVD, or one warm-started power step.

The power step keeps a right-singular-vector estimate per matrix between calls, so on a
slowly changing sequence of matrices (successive optimizer updates) one O(mn) step per call
tracks the top singular value. It returns ‖Mᵀ M v‖ / ‖M v‖, a lower bound of ‖M‖₂ that is
at least as good as ‖M v‖.
"""
from __future__ import annotations

import torch

_TINY = 1e-30


def exact_spectral_norm(m: torch.Tensor) -> torch.Tensor:
    """Largest singular value of each matrix in ``m`` (…, rows, cols), by SVD, in float32+."""
    dtype = m.dtype if m.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.linalg.matrix_norm(m.to(dtype), ord=2)


def power_step(m: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One power-iteration step on ``m`` (…, rows, cols) from right vectors ``v`` (…, cols).

    Returns (sigma estimate (…), new unit right vectors (…, cols)). A zero matrix gives
    sigma 0 and keeps ``v``; a non-finite matrix gives a non-finite sigma and keeps ``v``.
    """
    mf = m.float()
    w = (mf @ v.unsqueeze(-1)).squeeze(-1)                     # M v
    u = (mf.transpose(-1, -2) @ w.unsqueeze(-1)).squeeze(-1)   # Mᵀ M v
    w_norm = torch.linalg.vector_norm(w, dim=-1)
    u_norm = torch.linalg.vector_norm(u, dim=-1)
    sigma = u_norm / w_norm.clamp_min(_TINY)
    sigma = torch.where(w_norm > 0, sigma, w_norm)  # 0 for a zero matrix; nan/inf propagate
    fresh = u / u_norm.clamp_min(_TINY).unsqueeze(-1)
    keep = (u_norm > 0) & torch.isfinite(u_norm)
    new_v = torch.where(keep.unsqueeze(-1), fresh, v)
    return sigma, new_v
