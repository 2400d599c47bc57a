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
    """One power-iteration step on ``m`` (…, rows, cols) from unit right vectors ``v`` (…, cols).

    Returns (sigma estimate (…), new unit right vectors (…, cols)). A zero matrix gives
    sigma NaN (0/0: callers treat "not > 0" as "nothing to scale") and keeps ``v``; so does a
    NaN matrix, so a bad update never poisons the kept vector. Kept to a handful of kernels:
    this runs once per atom per optimizer step.
    """
    mf = m if m.dtype in (torch.float32, torch.float64) else m.float()
    if mf.dim() == 2:
        w = torch.mv(mf, v)                       # M v
        u = torch.mv(mf.t(), w)                   # Mᵀ M v
    else:
        w = torch.bmm(mf, v.unsqueeze(-1))
        u = torch.bmm(mf.transpose(-1, -2), w).squeeze(-1)
        w = w.squeeze(-1)
    w_norm = torch.linalg.vector_norm(w, dim=-1)
    u_norm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    new_v = torch.where(u_norm > 0, u / u_norm, v)
    return u_norm.squeeze(-1) / w_norm, new_v
