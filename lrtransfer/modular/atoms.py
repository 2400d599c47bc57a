"""Atoms: the modules that carry weights (science.md §1, "Atoms").

Each atom puts its width-dependent scale in the forward pass, is initialised so that its
atom norm is 1, and knows how to rescale an update to a given atom norm.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .module import Atom
from .newton_schulz import orthogonalize
from .spectral import block_products, block_power_step, block_ritz, block_update, exact_spectral_norm, top_subspace


def _positive_int(value, name: str, owner: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def _inverse(sigma: torch.Tensor) -> torch.Tensor:
    """1/sigma where sigma > 0, else 0 (a zero update stays zero)."""
    return torch.where(sigma > 0, sigma.reciprocal(), 0.0)  # NaN (0/0 of a zero update) is not > 0


class Tracked(Atom):
    """An atom whose norm is a spectral norm (of the weight, or of each kernel slice).

    Exact mode uses SVDs. Otherwise a block of ``block_rank`` vectors per matrix is kept as
    the rows of ``_power_q`` (on the smaller side of the matrix) and tracks the top singular
    directions of successive updates (spectral.py):

    * cold (fresh, or after ``reset_parameters``): the first call takes σ₁ and the block
      from an eigendecomposition, so it is exact (about 1e-5 relative);
    * warm: one block power step per call, a lower bound of σ₁. If its alignment is below
      ``align_floor`` (the block is cold for this matrix, e.g. after an abrupt change of
      direction), ``extra_steps`` more steps are run before the estimate is used.

    On the MNIST-1D quickstart the applied update stays within 1.017 of its target by SVD norm
    (benchmarks/normalize_accuracy.py). It is not a guarantee: a large new direction
    orthogonal to the whole block is missed until power steps bring it in.
    """

    homogeneous = True   # y = s·W x: a scaled input gives a scaled output
    # Weight conditioning (``condition = True``; Saratchandran, Wang & Lucey 2024, arXiv
    # 2409.03424, their definition of the weight-conditioned matrix W̄ = E·W with E the
    # row-equilibration preconditioner): E = diag(1/‖W_i,:‖₂) on the left, each row of W (of the
    # (out, in·k·k) matrix for a convolution) rescaled to unit ℓ2 norm. Row equilibration is
    # within √rows of the best diagonal left scaling in condition number (van der Sluis) for
    # a matrix of full row rank. W is the trained parameter; E is recomputed in every forward
    # pass and gradients flow through it, so the atom is scale-invariant: W̄(c·W) = W̄(W).
    # One change to the paper: W̄ = g·E·W with g = ``condition_gain()``, the RMS row norm of
    # this atom's orthogonal init. Unit rows alone rescale a tall matrix's output by √(rows/cols)
    # (the input layer of a width sweep by 1.79 at 128 / 3.58 at 512), so conditioning would
    # change the layer's gain with width as well as its spectrum. With g, an orthogonal init
    # with unit rows (square, wide) is left exactly as it is, and a tall one keeps ‖W̄‖_F = ‖W‖_F
    # (W̄ ≠ W there: its rows had unequal norms, which is what E changes). Under param = "sp"
    # (kaiming-uniform rows of norm ≈ 1/√3) E also changes the gain, as in the paper.
    condition = False

    block_rank = 8       # vectors per matrix; in a simulation, r = 4 (no refinement) let the quickstart ratio reach 1.25
    align_floor = 0.97   # unrelated Gaussian matrices give 0.77-0.97; on the quickstart 10-16% of atom-steps refine
    extra_steps = 3      # from ~0.85 alignment, 3 more steps bring a Gaussian matrix within ~1%

    def _matrices(self, w: torch.Tensor) -> torch.Tensor:
        """(…, rows, cols) views of ``w`` with cols the smaller side (the block's side)."""
        raise NotImplementedError

    def _reset_tracking(self, batch: tuple, small: int) -> None:
        self._power_q = torch.zeros(*batch, min(self.block_rank, small), small, device=self.weight.device)
        self._power_warm = False

    def tracking_state(self):
        # the block is replaced, never written in place, so holding the reference is a copy
        return self._power_q, self._power_warm

    def restore_tracking(self, state) -> None:
        self._power_q, self._power_warm = state

    @property
    def linear_in_weight(self) -> bool:
        return not self.condition

    def scale_invariant(self) -> list[bool]:
        return [bool(self.condition)]

    def condition_gain(self) -> float:
        """g of the conditioned weight g·E·W: the RMS row norm of this shape's orthogonal init,
        sqrt(matrices · min(rows, cols) / rows), rows and cols those of one ``_slices`` matrix."""
        *batch, rows, cols = self._slices(self.weight).shape
        return math.sqrt(math.prod(batch) * min(rows, cols) / rows)

    def effective_weight(self) -> torch.Tensor:
        """The matrix the forward pass uses: W, or with ``condition`` the row-equilibrated
        g·E·W (arXiv 2409.03424, E = diag(1/‖W_i,:‖₂); g = ``condition_gain()``)."""
        w = self.weight
        if not self.condition:
            return w
        rows = torch.linalg.vector_norm(w.flatten(1), dim=1).clamp_min(1e-12)
        return w * (self.condition_gain() / rows).reshape(-1, *([1] * (w.dim() - 1)))

    def _cold_start(self, m: torch.Tensor) -> torch.Tensor:
        """Exact σ₁ and block for a cold atom; stays cold on a zero or non-finite update.

        Cold path only, so its host syncs (the finiteness and zero checks) cost nothing per step.
        """
        sigma, q = cold_start(m, self._power_q.shape[-2])
        if q is not None:
            self._power_q = q.to(self._power_q.dtype)
            self._power_warm = True
        return sigma

    def _refine(self, m: torch.Tensor) -> torch.Tensor:
        """``extra_steps`` more block steps on ``m`` (no host sync); returns the last sigma."""
        sigma, self._power_q = refine(m, self._power_q, self.extra_steps)
        return sigma

    def tracked_sigma(self, u: torch.Tensor) -> torch.Tensor:
        """Spectral norm estimate(s) of ``u`` on their own (not batched with other atoms).

        Shape of ``_matrices(u)`` minus the last two dims; NaN for a zero matrix. Syncs once
        with the host, for the alignment check. ``Module.normalize`` uses
        ``spectral_estimates`` instead, with one sync for all atoms together.
        """
        return spectral_estimates([self], [u])[0]

    def spectral_norms(self, u: torch.Tensor, exact: bool = True) -> torch.Tensor:
        """Spectral norm of each matrix of ``u`` (one, or one per kernel position): SVD, or
        the tracked estimate (NaN for a zero matrix)."""
        return exact_spectral_norm(self._slices(u)) if exact else self.tracked_sigma(u)

    def _slices(self, w: torch.Tensor) -> torch.Tensor:
        """The matrices the norm is taken over, in the weight's own orientation."""
        raise NotImplementedError

    def _unslice(self, m: torch.Tensor) -> torch.Tensor:
        """Inverse of ``_slices``: back to the weight's shape."""
        raise NotImplementedError

    def atom_norm(self, w, exact=True):
        return torch.nan_to_num(self.spectral_norms(w, exact=exact), nan=0.0).max()

    @staticmethod
    def estimate_norms(atoms, updates):
        return spectral_estimates(atoms, updates)

    def normalize_scale(self, u, target, exact=False, norms=None):
        """target / ‖matrix‖₂ for every matrix of ``u`` (0 for a zero one), shaped to broadcast.

        ``norms``: the matrices' spectral norms when already known (``Module.normalize_scales``
        estimates all atoms' together)."""
        norms = self.spectral_norms(u, exact=exact) if norms is None else norms
        return (_inverse(norms) * target).reshape(self._scale_shape)

    def dualize_update(self, u, target, ns="quintic", steps=None):
        """The steepest-descent step of size ``target`` under this atom's norm: every matrix
        orthogonalized (Newton–Schulz ``ns``, see newton_schulz.py), times ``target``."""
        return self._unslice(orthogonalize(self._slices(u), ns, steps)) * target


def cold_start(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A tracking block's exact start on matrices ``m`` (…, rows, cols): σ₁ of each (NaN where
    zero or non-finite) and the rank-``rank`` block to go on from, or None when any matrix is
    zero or non-finite (the block stays cold). Host syncs: two, on the cold path only."""
    mf = m if m.dtype in (torch.float32, torch.float64) else m.float()
    if not bool(torch.isfinite(mf).all()):
        return torch.full(mf.shape[:-2], float("nan"), device=mf.device), None
    sigma, q = top_subspace(mf, rank)
    if bool((sigma > 0).all()):
        return sigma, q
    return torch.where(sigma > 0, sigma, float("nan")), None


def refine(m: torch.Tensor, q: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` (≥ 1) more block power steps of block ``q`` on ``m``: the last σ and the block."""
    for _ in range(steps):
        sigma, _, q = block_power_step(m, q)
    return sigma, q


def spectral_estimates(atoms, updates) -> list[torch.Tensor]:
    """Tracked spectral norm estimates for several atoms with one host sync.

    The warm estimates need no sync; their alignments are read back together, and only
    then are the atoms whose alignment is below ``align_floor`` refined (more block steps).
    Non-finite updates give NaN estimates and keep their blocks.
    """
    sigmas, aligns, colds = tracked_estimates(atoms, updates)
    if not aligns:
        return sigmas
    flat = torch.cat([a.reshape(-1).float() for a in aligns]).tolist()  # the one host sync
    start = 0
    for k, (atom, u) in enumerate(zip(atoms, updates)):
        n = aligns[k].numel()
        if not colds[k] and min(flat[start:start + n]) < atom.align_floor:  # NaN is not < floor
            sigmas[k] = atom._refine(atom._matrices(u))
        start += n
    return sigmas


def tracked_estimates(atoms, updates):
    """(sigmas, aligns, colds) for tracked atoms and their updates, without host syncs on warm atoms.

    Each atom's block products are its own; the small eigenproblems of all warm atoms are
    solved as one batch, since at small widths per-call overhead is the cost. Cold atoms
    get their exact cold start (and alignment 1). ``colds[k]`` says atom k was cold.
    """
    sigmas, aligns, colds = [None] * len(atoms), [None] * len(atoms), [False] * len(atoms)
    groups: dict = {}
    for k, (atom, u) in enumerate(zip(atoms, updates)):
        m = atom._matrices(u)
        if not atom._power_warm:
            sigmas[k] = atom._cold_start(m)
            aligns[k] = torch.ones_like(sigmas[k])
            colds[k] = True
            continue
        uu, p, s = block_products(m, atom._power_q)
        batch = p.shape[:-2]
        key = (p.shape[-1], p.dtype, p.device)
        groups.setdefault(key, []).append((k, uu, p.reshape(-1, *p.shape[-2:]), s.reshape(-1, *s.shape[-2:]), batch))
    for items in groups.values():
        if len(items) == 1:
            p, s = items[0][2], items[0][3]
        else:
            p, s = torch.cat([it[2] for it in items]), torch.cat([it[3] for it in items])
        sigma, align, t, kept = block_ritz(p, s)
        start = 0
        for k, uu, pk, _, batch in items:
            n = pk.shape[0]
            sl = slice(start, start + n)
            start += n
            atom = atoms[k]
            atom._power_q = block_update(atom._power_q, uu, t[sl].reshape(*batch, *t.shape[-2:]),
                                         kept[sl].reshape(*batch, kept.shape[-1]))
            sigmas[k], aligns[k] = sigma[sl].reshape(batch), align[sl].reshape(batch)
    return sigmas, aligns, colds



class Linear(Tracked):
    """y = sqrt(d_out/d_in) · W x, W (d_out, d_in) orthogonal at init; norm ‖W‖₂ (RMS→RMS).

    ``normalize`` with ``exact=False`` divides by a tracked estimate of ‖update‖₂ (see
    ``Tracked``). On a cold atom (first update, or after ``reset_parameters``) the estimate
    is exact to about 1e-5. After that it is a lower bound, close to the SVD norm on
    the quickstart (1.017 at most) but not guaranteed. ``exact=True`` uses an SVD.
    """

    def __init__(self, d_out: int, d_in: int):
        super().__init__()
        self.d_out = _positive_int(d_out, "d_out", "Linear")
        self.d_in = _positive_int(d_in, "d_in", "Linear")
        self.scale = math.sqrt(d_out / d_in)
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self._scale_shape = ()
        self.register_buffer("_power_q", None, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.orthogonal_(self.weight)
            # Drawn and discarded: a seed's global random stream, and so every later atom's
            # initial weights, stay what the recorded runs of that seed were trained from.
            torch.randn(self.d_in, device=self.weight.device)
        self._reset_tracking((), min(self.d_out, self.d_in))

    def forward(self, x):
        y = F.linear(x, self.effective_weight())
        # a square matrix's scale is exactly 1: skipping the multiply skips an autograd node
        # and two passes over the activations, and changes no bit
        return y if self.scale == 1.0 else y * self.scale

    def _slices(self, w):
        return w

    def _unslice(self, m):
        return m

    def _matrices(self, w):
        return w if self.d_out >= self.d_in else w.mT

    def extra_repr(self):
        return f"d_out={self.d_out}, d_in={self.d_in}, mass={self.mass:g}" + (", condition" if self.condition else "")


class Embed(Atom):
    """y = sqrt(d) · W[x], W (vocab, d) with unit-ℓ2 rows at init; norm = max row ℓ2 norm.

    An update is normalized row by row, so tokens absent from the batch (zero gradient
    rows) stay exactly zero.
    """

    embedding = True

    def __init__(self, vocab: int, d: int):
        super().__init__()
        self.vocab = _positive_int(vocab, "vocab", "Embed")
        self.d = _positive_int(d, "d", "Embed")
        self.scale = math.sqrt(d)
        self.weight = nn.Parameter(torch.empty(vocab, d))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.weight)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True))

    def forward(self, x):
        return F.embedding(x, self.weight) * self.scale

    def atom_norm(self, w, exact=True):
        return torch.linalg.vector_norm(w.float(), dim=1).max()

    def normalize_scale(self, u, target, exact=False, norms=None):
        """target / ‖row‖₂ for every row of ``u`` (absent tokens' zero rows stay zero), (vocab, 1)."""
        return _inverse(torch.linalg.vector_norm(u.float(), dim=1, keepdim=True)) * target

    def dualize_update(self, u, target, ns="quintic", steps=None):
        """The dual of the max-row-ℓ2 norm is row-wise: the same map as ``normalize``."""
        return self.normalize_update(u, target)

    def extra_repr(self):
        return f"vocab={self.vocab}, d={self.d}, mass={self.mass:g}"


class Conv2D(Tracked):
    """y = (sqrt(c_out/c_in)/k²) · conv(x, W), each k×k position's slice W[:,:,i,j] orthogonal.

    Norm: max over positions of the slice's spectral norm; an update is normalized slice by
    slice. Padding keeps the spatial size ("same" for odd k). With ``exact=False`` each
    slice's norm is tracked like Linear's (``Tracked``): exact on a cold atom, then a lower
    bound that is not guaranteed.
    """

    def __init__(self, c_out: int, c_in: int, k: int = 3):
        super().__init__()
        self.c_out = _positive_int(c_out, "c_out", "Conv2D")
        self.c_in = _positive_int(c_in, "c_in", "Conv2D")
        self.k = _positive_int(k, "k", "Conv2D")
        self.scale = math.sqrt(c_out / c_in) / k**2
        self.weight = nn.Parameter(torch.empty(c_out, c_in, k, k))
        self._scale_shape = (1, 1, k, k)
        self.register_buffer("_power_q", None, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for i in range(self.k):
                for j in range(self.k):
                    self.weight[:, :, i, j] = nn.init.orthogonal_(torch.empty(self.c_out, self.c_in))
            # Drawn and discarded, as in Linear: the seed's random stream stays the recorded one.
            torch.randn(self.k * self.k, self.c_in, device=self.weight.device)
        self._reset_tracking((self.k * self.k,), min(self.c_out, self.c_in))

    def forward(self, x):
        return F.conv2d(x, self.effective_weight(), padding=self.k // 2) * self.scale

    def _slices(self, w):
        """(k·k, c_out, c_in): one matrix per kernel position, row-major over (i, j)."""
        return w.permute(2, 3, 0, 1).reshape(self.k * self.k, self.c_out, self.c_in)

    def _unslice(self, m):
        return m.reshape(self.k, self.k, self.c_out, self.c_in).permute(2, 3, 0, 1)

    def _matrices(self, w):
        m = self._slices(w)
        return m if self.c_out >= self.c_in else m.mT

    def position_norms(self, w, exact=True) -> torch.Tensor:
        """Spectral norm of each kernel position's slice, shape (k, k)."""
        return self.spectral_norms(w, exact=exact).reshape(self.k, self.k)

    def extra_repr(self):
        return (f"c_out={self.c_out}, c_in={self.c_in}, k={self.k}, mass={self.mass:g}"
                + (", condition" if self.condition else ""))
