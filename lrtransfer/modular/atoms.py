"""Atoms: the modules that carry weights (SCIENCE.md §1, "Atoms").

Each atom puts its width-dependent scale in the forward pass, is initialised so that its
atom norm is 1, and knows how to rescale an update to a given atom norm.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .module import Atom
from .spectral import exact_spectral_norm, power_step


def _positive_int(value, name: str, owner: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def _inverse(sigma: torch.Tensor) -> torch.Tensor:
    """1/sigma where sigma > 0, else 0 (a zero update stays zero)."""
    return torch.where(sigma > 0, sigma.reciprocal(), 0.0)  # NaN (0/0 of a zero update) is not > 0


class Linear(Atom):
    """y = sqrt(d_out/d_in) · W x, W (d_out, d_in) orthogonal at init; norm ‖W‖₂ (RMS→RMS)."""

    def __init__(self, d_out: int, d_in: int):
        super().__init__()
        self.d_out = _positive_int(d_out, "d_out", "Linear")
        self.d_in = _positive_int(d_in, "d_in", "Linear")
        self.scale = math.sqrt(d_out / d_in)
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self.register_buffer("_power_v", torch.empty(d_in), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.orthogonal_(self.weight)
            v = torch.randn(self.d_in, device=self.weight.device)
            self._power_v.copy_(v / v.norm())

    def forward(self, x):
        return F.linear(x, self.weight) * self.scale

    def _sigma(self, w, exact):
        """Spectral norm: SVD, or one warm power step (NaN for a zero matrix)."""
        if exact:
            return exact_spectral_norm(w)
        sigma, v = power_step(w, self._power_v)
        self._power_v.copy_(v)
        return sigma

    def atom_norm(self, w, exact=True):
        return torch.nan_to_num(self._sigma(w, exact), nan=0.0)

    def unit_scale(self, u, exact=False):
        return _inverse(self._sigma(u, exact))

    def extra_repr(self):
        return f"d_out={self.d_out}, d_in={self.d_in}, mass={self.mass:g}"


class Embed(Atom):
    """y = sqrt(d) · W[x], W (vocab, d) with unit-ℓ2 rows at init; norm = max row ℓ2 norm.

    An update is normalized row by row, so tokens absent from the batch (zero gradient
    rows) stay exactly zero.
    """

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

    def unit_scale(self, u, exact=False):
        return _inverse(torch.linalg.vector_norm(u.float(), dim=1, keepdim=True))

    def extra_repr(self):
        return f"vocab={self.vocab}, d={self.d}, mass={self.mass:g}"


class Conv2D(Atom):
    """y = (sqrt(c_out/c_in)/k²) · conv(x, W), each k×k position's slice W[:,:,i,j] orthogonal.

    Norm: max over positions of the slice's spectral norm; an update is normalized slice by
    slice. Padding keeps the spatial size ("same" for odd k).
    """

    def __init__(self, c_out: int, c_in: int, k: int = 3):
        super().__init__()
        self.c_out = _positive_int(c_out, "c_out", "Conv2D")
        self.c_in = _positive_int(c_in, "c_in", "Conv2D")
        self.k = _positive_int(k, "k", "Conv2D")
        self.scale = math.sqrt(c_out / c_in) / k**2
        self.weight = nn.Parameter(torch.empty(c_out, c_in, k, k))
        self.register_buffer("_power_v", torch.empty(k * k, c_in), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for i in range(self.k):
                for j in range(self.k):
                    self.weight[:, :, i, j] = nn.init.orthogonal_(torch.empty(self.c_out, self.c_in))
            v = torch.randn(self.k * self.k, self.c_in, device=self.weight.device)
            self._power_v.copy_(v / v.norm(dim=1, keepdim=True))

    def forward(self, x):
        return F.conv2d(x, self.weight, padding=self.k // 2) * self.scale

    def _slices(self, w):
        """(k·k, c_out, c_in): one matrix per kernel position, row-major over (i, j)."""
        return w.permute(2, 3, 0, 1).reshape(self.k * self.k, self.c_out, self.c_in)

    def position_norms(self, w, exact=True) -> torch.Tensor:
        """Spectral norm of each kernel position's slice, shape (k, k)."""
        if exact:
            sigma = exact_spectral_norm(self._slices(w))
        else:
            sigma, v = power_step(self._slices(w), self._power_v)
            self._power_v.copy_(v)
        return sigma.reshape(self.k, self.k)

    def atom_norm(self, w, exact=True):
        return torch.nan_to_num(self.position_norms(w, exact=exact), nan=0.0).max()

    def unit_scale(self, u, exact=False):
        return _inverse(self.position_norms(u, exact=exact)).reshape(1, 1, self.k, self.k)

    def extra_repr(self):
        return f"c_out={self.c_out}, c_in={self.c_in}, k={self.k}, mass={self.mass:g}"
