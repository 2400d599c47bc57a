"""Per-atom training diagnostics: how big each weight is, how far each step moves it.

At every logged step (``log_every``) a run records, for each atom of the model:

* ``weight_norm`` and ``update_norm`` — the weight and the update actually applied at that
  step (``w_after − w_before``: the optimizer's step, weight decay and any projection
  together), both in the atom's own norm (spectral for Linear, max over kernel positions for
  Conv2D, max row ℓ2 for Embed), and ``relative_update`` = their ratio;
* ``angle`` — the angle between the weight before and after the step (Frobenius geometry,
  radians): how far the step turned the weight;
* ``elr`` — for a scale-invariant atom, the step's LR over its squared Frobenius norm, the
  effective LR of Kodryan et al. (2022) (constraint.py); NaN for the others;
* ``condition`` — σ_max/σ_min of the matrix the forward pass uses (the conditioned D·W with
  ``condition = true``; a convolution as its (out, in·k·k) matrix), by SVD, exact; only with
  ``log_condition = true`` (an SVD per atom per log), else NaN.

One more row per logged step, ``atom = -1``, treats all scale-invariant atoms together as one
vector (Frobenius norms): its ``weight_norm`` is the sphere radius ρ, its ``elr`` lr/ρ², and
its ``angle`` the angular step of the whole scale-invariant network — what the three-regimes
rule reads.

Measuring must not disturb training. Spectral norms here are estimated by power iteration on
vectors this object owns (two steps per log from the last log's vectors, a lower bound that
is tight while weights change slowly), never by the atoms' own tracking blocks, which
``normalize`` relies on; a test checks that logging leaves every loss unchanged. The work is
a weight snapshot before the logged step and a handful of matrix-vector products after it,
read back with one host sync (cost: benchmarks/diagnostics_cost.py).
"""
from __future__ import annotations

import math

import pandas as pd
import torch

from .modular import Module
from .modular.spectral import power_step

COLUMNS = ["run_id", "step", "atom", "name", "role", "scale_invariant", "weight_norm", "update_norm",
           "relative_update", "angle", "elr", "condition"]

_POWER_STEPS = 2


def _matrices(atom, w: torch.Tensor) -> torch.Tensor | None:
    """The matrices whose largest spectral norm is the atom's norm, or None (a row norm)."""
    slices = getattr(atom, "_slices", None)
    return slices(w) if slices is not None else None


def _name(k: int, atom) -> str:
    shape = "x".join(str(d) for d in atom.weight.shape)
    return f"{k}:{type(atom).__name__} {shape}"


class Diagnostics:
    """Measures a model's atoms around the steps it is asked to log."""

    def __init__(self, model: Module, log_condition: bool = False):
        self.model = model
        self.atoms = model.atoms()
        self.roles = model.roles()
        self.invariant = model.scale_invariant()
        self.log_condition = log_condition
        self.names = [_name(k, a) for k, a in enumerate(self.atoms)]
        self._vectors: dict = {}     # (atom index, "weight" | "update") -> unit right vectors
        self._before: list[torch.Tensor] | None = None
        self.rows: list[dict] = []

    @torch.no_grad()
    def before_step(self) -> None:
        """Snapshot the weights; call right before the step that will be logged."""
        self._before = [a.weight.detach().clone() for a in self.atoms]

    def _spectral(self, key, m: torch.Tensor) -> torch.Tensor:
        """Max spectral norm over the matrices ``m`` (…, rows, cols) by power iteration on
        this object's own vectors (warm from the previous log)."""
        m = m.float() if m.dtype not in (torch.float32, torch.float64) else m
        if m.dim() == 2:
            m = m.unsqueeze(0)
        v = self._vectors.get(key)
        if v is None or v.shape != (m.shape[0], m.shape[-1]):
            g = torch.Generator(device="cpu").manual_seed(len(self._vectors))  # never the global stream
            v = torch.randn(m.shape[0], m.shape[-1], generator=g).to(m.device, m.dtype)
            v = v / v.norm(dim=-1, keepdim=True)
        sigma = torch.zeros(m.shape[0], device=m.device, dtype=m.dtype)
        for _ in range(_POWER_STEPS):
            sigma, v = power_step(m, v)
        self._vectors[key] = v
        return torch.nan_to_num(sigma, nan=0.0).max()

    def _atom_norm(self, k: int, kind: str, w: torch.Tensor) -> torch.Tensor:
        m = _matrices(self.atoms[k], w)
        if m is None:  # Embed: max row ℓ2 norm, exact and cheap
            return torch.linalg.vector_norm(w.float(), dim=1).max()
        return self._spectral((k, kind), m)

    @torch.no_grad()
    def after_step(self, run_id: str, step: int, lr: float, lr_mults: list[float]) -> None:
        """Record the rows of logged step ``step`` (the step just applied with base LR ``lr``;
        atom k's LR is lr · lr_mults[k])."""
        if self._before is None:
            raise RuntimeError("Diagnostics.after_step without before_step")
        values = []   # per atom: weight norm, update norm, ‖w_before‖_F², ‖w_after‖_F², <w_before, w_after>, ‖Δ‖_F²
        for k, (atom, w0) in enumerate(zip(self.atoms, self._before)):
            w1 = atom.weight.detach()
            delta = w1 - w0
            # angles come from cosines near 1: sums in float64 resolve angles down to ~1e-8 rad
            a, b = w0.double(), w1.double()
            values.append(torch.stack([self._atom_norm(k, "weight", w1).double(),
                                       self._atom_norm(k, "update", delta).double(),
                                       a.pow(2).sum(), b.pow(2).sum(), (a * b).sum(), (b - a).pow(2).sum()]))
        conditions = [math.nan] * len(self.atoms)
        if self.log_condition:
            conds = []
            for atom in self.atoms:
                w = atom.effective_weight() if hasattr(atom, "effective_weight") else atom.weight
                s = torch.linalg.svdvals(w.detach().float().flatten(1))
                conds.append(s[0] / s[-1])
            conditions = torch.stack(conds).tolist()
        table = torch.stack(values).tolist()   # the one host sync
        self._before = None
        joint = [0.0, 0.0, 0.0, 0.0]   # SI atoms together: ‖w0‖², ‖w1‖², <w0, w1>, ‖Δ‖²
        for k, (wn, un, n0, n1, dot, dd) in enumerate(table):
            si = self.invariant[k]
            lr_k = lr * lr_mults[k]
            self.rows.append(dict(run_id=run_id, step=step, atom=k, name=self.names[k], role=self.roles[k],
                                  scale_invariant=si, weight_norm=wn, update_norm=un,
                                  relative_update=un / wn if wn > 0 else math.nan,
                                  angle=_angle(n0, n1, dot), elr=lr_k / n1 if si and n1 > 0 else math.nan,
                                  condition=conditions[k]))
            if si and lr_mults[k] != 0:
                joint = [a + b for a, b in zip(joint, (n0, n1, dot, dd))]
        if any(self.invariant):
            n0, n1, dot, dd = joint
            rho = math.sqrt(n1)
            self.rows.append(dict(run_id=run_id, step=step, atom=-1, name="all scale-invariant",
                                  role="scale_invariant", scale_invariant=True, weight_norm=rho,
                                  update_norm=math.sqrt(dd), relative_update=math.sqrt(dd) / rho if rho else math.nan,
                                  angle=_angle(n0, n1, dot), elr=lr / n1 if n1 > 0 else math.nan,
                                  condition=math.nan))

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)


def _angle(n0: float, n1: float, dot: float) -> float:
    if n0 <= 0 or n1 <= 0:
        return math.nan
    return math.acos(max(-1.0, min(1.0, dot / math.sqrt(n0 * n1))))
