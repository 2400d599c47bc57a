"""Spectral norms of (batches of) matrices: exact by SVD, or tracked by warm block power iteration.

What is exact and what is an estimate:

* ``exact_spectral_norm`` — SVD; exact.
* ``top_subspace`` (cold start) — an eigendecomposition of the Gram matrix; σ₁ to about 1e-5
  relative in float32, plus the top-r right singular vectors.
* ``block_power_step`` (every later call) — one step of subspace iteration on a kept block
  of r vectors. It returns a Ritz-type **lower bound** of σ₁: the largest ‖MᵀMx‖/‖Mx‖ over
  x in the block's span, which is <= σ₁ for every x. It is exact when the span contains the
  top right singular vector, and stays close while the matrices change slowly. A block
  (rather than one vector) is kept because, in training, a new top singular direction
  often appears *orthogonal* to the old top one. A single vector has almost no component
  along that direction, so it stays on the old one for many steps (the estimate was up to
  2× low on the MNIST-1D quickstart). The block keeps the next r−1 directions, one of
  which usually becomes the new top.
* ``power_step`` — one step of single-vector power iteration, the block step with r = 1.

``block_power_step`` also returns an alignment measure: a/b, where a = ‖Mx‖ (the Ritz value)
and b = ‖MᵀMx‖/‖Mx‖ for the best x. Both are lower bounds of σ₁ and a <= b, with equality
when x is a singular vector. A low value means the block is cold for this matrix, e.g. after
an abrupt change of direction; the caller then runs more steps. A value near 1 does not
prove the estimate is exact (a large new direction orthogonal to the whole block cannot be
seen), so the result remains an estimate, not a bound from above.
"""
from __future__ import annotations

import torch

_TINY = 1e-30
# Gram eigenvalues below this fraction of the largest are rounding noise in float32 (σ ratio
# ~3e-3): such directions are dropped from the whitening instead of being divided by noise.
_REL_EIG_FLOOR = 1e-5


def exact_spectral_norm(m: torch.Tensor) -> torch.Tensor:
    """Largest singular value of each matrix in ``m`` (…, rows, cols), by SVD, in float32+."""
    dtype = m.dtype if m.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.linalg.matrix_norm(m.to(dtype), ord=2)


def _work(m: torch.Tensor) -> torch.Tensor:
    return m if m.dtype in (torch.float32, torch.float64) else m.float()


def power_step(m: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One power-iteration step on ``m`` (…, rows, cols) from unit right vectors ``v`` (…, cols).

    Returns (sigma estimate (…), new unit right vectors (…, cols)). A zero matrix gives
    sigma NaN (0/0: callers treat "not > 0" as "nothing to scale") and keeps ``v``; so does a
    NaN matrix, so a bad update never poisons the kept vector.
    """
    mf = _work(m)
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


def top_subspace(m: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cold start: (σ₁ (…), top-r right singular vectors as rows (…, r, cols)) of ``m`` (…, rows, cols).

    From the eigendecomposition of the Gram matrix MᵀM (cols×cols). This is cheaper than an
    SVD and gives σ₁ to about 1e-5 relative in float32. A zero matrix gives σ₁ 0. It may
    sync with the host (a CUDA eigh checks its result), but it runs only on cold atoms.
    """
    mf = _work(m)
    d, vecs = torch.linalg.eigh(mf.mT @ mf)
    return d[..., -1].clamp_min(0).sqrt(), vecs[..., -r:].flip(-1).mT.contiguous()


def block_products(m: torch.Tensor, qt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The O(rows·cols·r) part of a block step: (Uᵀ, P = BᵀB, S = UᵀU) with B = Mq, U = MᵀB.

    ``m`` (…, rows, cols). The block is kept transposed, ``qt`` (…, r, cols), because this CPU's
    BLAS computes M·qtᵀ and Bᵀ·M (outputs of r rows) about 2× faster than M·q and Mᵀ·B. P and S
    (…, r, r) are all that ``block_ritz`` needs, so the small linear algebra of many atoms can
    be done as one batch.
    """
    mf = _work(m)
    b = mf @ qt.to(mf.dtype).mT                   # (…, rows, r)
    ut = b.mT @ mf                                # (…, r, cols) = (MᵀMq)ᵀ
    return ut, b.mT @ b, ut @ ut.mT


def block_ritz(p: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The small part of a block step, batched over the leading dim: (sigma, align, T, kept).

    For x = qc, b(x)² = cᵀSc / cᵀPc. W whitens P, and the top eigenvalue of K = WᵀSW is the
    largest b², so ``sigma`` = sqrt(λ_max(K)) <= σ₁. ``align`` = sqrt(λ_max(P)) / sigma is a/b
    (module doc). With E the eigenvectors of K, the columns of U·T, where T = W E λ^{-1/2},
    are orthonormal and span U: the next block, in ascending order of Ritz value. ``kept`` (…, r) marks
    the columns that are real directions; the others are zero, and the caller keeps the old
    vector there. A non-finite or zero P or S gives sigma and align NaN and kept all False,
    and eigh is never handed a NaN.
    """
    finite = torch.isfinite(p.sum((-2, -1)) + s.sum((-2, -1)))[..., None, None]
    p = torch.where(finite, p, 0.0)
    s = torch.where(finite, s, 0.0)
    d, vecs = torch.linalg.eigh(p)
    p_top = d[..., -1:]
    w = vecs * torch.where(d > _REL_EIG_FLOOR * p_top, d.clamp_min(_TINY).rsqrt(), 0.0).unsqueeze(-2)
    lam, e = torch.linalg.eigh(w.mT @ s @ w)
    lam_top = lam[..., -1:]
    kept = lam > _REL_EIG_FLOOR * lam_top
    t = (w @ e) * torch.where(kept, lam.clamp_min(_TINY).rsqrt(), 0.0).unsqueeze(-2)
    good = lam_top > 0
    sigma = torch.where(good, lam_top.clamp_min(0).sqrt(), float("nan")).squeeze(-1)
    align = torch.where(good, (p_top / lam_top.clamp_min(_TINY)).clamp(0, 1).sqrt(), float("nan")).squeeze(-1)
    return sigma, align, t, kept


def block_update(qt: torch.Tensor, ut: torch.Tensor, t: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The next block (rows of ``qt``): the rows of (U·T)ᵀ where ``kept``, the old rows elsewhere."""
    return torch.where(kept.unsqueeze(-1), (t.mT @ ut).to(qt.dtype), qt)


def block_power_step(m: torch.Tensor, qt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One warm subspace-iteration step on ``m`` (…, rows, cols) from the block ``qt`` (…, r, cols).

    The block's vectors are the rows of ``qt``. Returns (sigma (…), alignment (…), new block
    (…, r, cols)); see ``block_ritz``. sigma is
    a lower bound of σ₁. A zero or non-finite matrix gives NaN for both and keeps ``q``, so a
    bad update never poisons the kept block. No host sync.
    """
    ut, p, s = block_products(m, qt)
    sigma, align, t, kept = block_ritz(p, s)
    return sigma, align, block_update(qt, ut, t, kept)
