"""Per-atom training diagnostics: how big each weight is, how far each step moves it.

At every logged step a run records, per atom, its weight and update norms (in the atom's own
norm), the angle the step turned it, its effective LR and, for a scale-invariant atom, its
effective gradient norm (plus a joint row for the scale-invariant atoms), measured without
disturbing training. Columns and method:
docs/diagnostics.md.
"""
from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F

from ..modular import Module
from ..modular.spectral import block_power_step, top_subspace

COLUMNS = ["run_id", "step", "atom", "name", "role", "scale_invariant", "weight_norm", "update_norm",
           "relative_update", "angle", "elr", "condition", "eff_grad_norm"]

_BLOCK_RANK = 4   # vectors per matrix: a cheap block; orthogonal inits start with a flat spectrum
_BATCH_LIMIT = 128 * 128   # matrices up to this many entries are batched together


def _matrices(atom, w: torch.Tensor) -> torch.Tensor | None:
    """The matrices whose largest spectral norm is the atom's norm, oriented with the smaller
    side last, or None (Embed: a row norm)."""
    matrices = getattr(atom, "_matrices", None)
    return matrices(w) if matrices is not None else None


def _name(k: int, atom) -> str:
    shape = "x".join(str(d) for d in atom.weight.shape)
    # a plain module's atom by its parameter's name (models/wrapped.py), the algebra's by its kind
    return f"{k}:{getattr(atom, 'name', None) or type(atom).__name__} {shape}"


class Diagnostics:
    """Measures a model's atoms around the steps it is asked to log."""

    def __init__(self, model: Module, log_condition: bool = False):
        self.model = model
        self.atoms = model.atoms()
        self.roles = model.roles()
        self.invariant = model.scale_invariant()
        self.log_condition = log_condition
        self.names = [_name(k, a) for k, a in enumerate(self.atoms)]
        self._blocks: dict | None = None   # batch shape -> tracking block of the matrices batched there
        self._snapshot: list[torch.Tensor] | None = None   # weights before the logged step, then −Δ
        self._before_norms: list[torch.Tensor] = []
        self._pending = False
        self.rows: list[dict] = []

    @torch.no_grad()
    def before_step(self) -> None:
        """Snapshot the weights; call right before the step that will be logged."""
        weights = [a.weight.detach() for a in self.atoms]
        if self._snapshot is None:
            self._snapshot = [torch.empty_like(w) for w in weights]
        # kept buffers, copied into: a fresh large allocation per log costs page faults
        torch._foreach_copy_(self._snapshot, weights)
        self._before_norms = torch._foreach_norm(self._snapshot)
        self._pending = True

    def _atom_norms(self, *kinds: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Each atom's own norm of each list of tensors in ``kinds`` (lists aligned with the
        atoms), as a 1-D tensor whose max is the norm (one value per kernel slice). Spectral
        norms: exact the first time (a Gram eigendecomposition), then one warm block power step
        per call on this object's own blocks, never the atoms' blocks, which ``normalize`` uses.
        """
        norms = [[None] * len(self.atoms) for _ in kinds]
        owners, ms = [], []
        for i, tensors in enumerate(kinds):
            for k, (atom, t) in enumerate(zip(self.atoms, tensors)):
                m = _matrices(atom, t)
                if m is None:   # Embed: max row ℓ2 norm, exact and cheap
                    norms[i][k] = torch.linalg.vector_norm(t.float(), dim=1).max().reshape(1)
                    continue
                m = m.float() if m.dtype not in (torch.float32, torch.float64) else m
                ms.append(m if m.dim() == 3 else m.unsqueeze(0))
                owners.append((i, k))
        for j, sigma in enumerate(self._spectral_norms(ms)):
            i, k = owners[j]
            norms[i][k] = sigma    # one per slice: the max is taken on the host, after the one sync
        return norms

    def _spectral_norms(self, ms: list[torch.Tensor]) -> list[torch.Tensor]:
        """σ₁ of every slice of each (slices, rows, cols) matrix batch in ``ms``, in order.

        Small matrices are zero-padded to one common shape (padding adds only zero singular
        values) and stepped as one batch: at small widths the per-call overhead, not the
        arithmetic, is the cost. Those over ``_BATCH_LIMIT`` entries are stepped one by one,
        uncopied (copying would cost more than the call it saves).
        """
        small = [j for j, m in enumerate(ms) if m.shape[-2] * m.shape[-1] <= _BATCH_LIMIT]
        groups = {("own", j): [j] for j, m in enumerate(ms) if j not in small}
        if small:
            groups[("padded", max(ms[j].shape[-2] for j in small), max(ms[j].shape[-1] for j in small))] = small
        if self._blocks is None or set(self._blocks) != set(groups):
            self._blocks = dict.fromkeys(groups)
        out = [None] * len(ms)
        for shape, js in groups.items():
            if shape[0] == "own":
                batch = ms[js[0]]
            else:
                batch = torch.cat([F.pad(ms[j], (0, shape[2] - ms[j].shape[-1], 0, shape[1] - ms[j].shape[-2]))
                                   for j in js])
            block = self._blocks[shape]
            if block is None or block.shape[0] != batch.shape[0]:
                sigma, block = top_subspace(batch, min(_BLOCK_RANK, min(ms[j].shape[-1] for j in js)))
            else:
                sigma, _, block = block_power_step(batch, block)
            self._blocks[shape] = block
            for j, sj in zip(js, torch.nan_to_num(sigma, nan=0.0).split([ms[j].shape[0] for j in js])):
                out[j] = sj
        return out

    def _conditions(self) -> list[torch.Tensor]:
        """σ_max/σ_min of each atom's forward matrix, by SVD."""
        conds = []
        for atom in self.atoms:
            w = atom.effective_weight() if hasattr(atom, "effective_weight") else atom.weight
            s = torch.linalg.svdvals(w.detach().float().flatten(1))
            conds.append(s[0] / s[-1])
        return conds

    @torch.no_grad()
    def after_step(self, run_id: str, step: int, lr: float, lr_mults: list[float]) -> None:
        """Record the rows of logged step ``step`` (the step just applied with base LR ``lr``;
        atom k's LR is lr · lr_mults[k])."""
        if not self._pending:
            raise RuntimeError("Diagnostics.after_step without before_step")
        after = [a.weight.detach() for a in self.atoms]
        # the gradient the step just used: still on the atoms after it (set by backward, or by the
        # batched loop per cell); where it is not (a fused batched update), NaN
        grads = [torch.linalg.vector_norm(a.weight.grad.detach().float()).reshape(1) if a.weight.grad is not None
                 else torch.full((1,), math.nan, device=w.device) for a, w in zip(self.atoms, after)]
        # the snapshot becomes w_before − w_after = −Δ in place (norms do not see the sign)
        torch._foreach_sub_(self._snapshot, after)
        deltas = self._snapshot
        columns = self._atom_norms(after, deltas) + \
            [self._before_norms, torch._foreach_norm(after), torch._foreach_norm(deltas), grads]
        if self.log_condition:
            columns.append(self._conditions())
        pieces = [t.reshape(-1).float() for col in columns for t in col]
        flat = torch.cat(pieces).tolist()   # the one host sync
        values, start = [], 0
        for t in pieces:
            values.append(max(flat[start:start + t.numel()]))
            start += t.numel()
        n = len(self.atoms)
        self._pending = False
        self._record(run_id, step, lr, lr_mults, [[values[c * n + k] for c in range(len(columns))] for k in range(n)])

    def _record(self, run_id: str, step: int, lr: float, lr_mults: list[float], table: list[list[float]]) -> None:
        """The rows of one logged step from each atom's (weight norm, update norm, ‖w0‖, ‖w1‖,
        ‖Δ‖, ‖g‖[, condition]), plus the scale-invariant atoms' joint row. The effective gradient
        norm of a scale-invariant weight is ‖w0‖·‖g‖: its gradient were it rescaled to norm 1
        (the gradient of a scale-invariant loss scales as 1/‖w‖), the quantity Kodryan et al. plot."""
        joint = [0.0, 0.0, 0.0, 0.0]   # SI atoms together: ‖w0‖², ‖w1‖², ‖Δ‖², ‖g‖²
        for k, values in enumerate(table):
            wn, un, n0, n1, dn, gn = values[:6]
            si = self.invariant[k]
            self.rows.append(dict(run_id=run_id, step=step, atom=k, name=self.names[k], role=self.roles[k],
                                  scale_invariant=si, weight_norm=wn, update_norm=un,
                                  relative_update=un / wn if wn > 0 else math.nan,
                                  angle=_angle(n0, n1, dn),
                                  elr=lr * lr_mults[k] / n1 ** 2 if si and n1 > 0 else math.nan,
                                  condition=values[6] if self.log_condition else math.nan,
                                  eff_grad_norm=n0 * gn if si else math.nan))
            if si and lr_mults[k] != 0:
                joint = [a + b * b for a, b in zip(joint, (n0, n1, dn, gn))]
        if any(self.invariant):
            n0, n1, dn, gn = (math.sqrt(v) for v in joint)
            self.rows.append(dict(run_id=run_id, step=step, atom=-1, name="all scale-invariant",
                                  role="scale_invariant", scale_invariant=True, weight_norm=n1,
                                  update_norm=dn, relative_update=dn / n1 if n1 else math.nan,
                                  angle=_angle(n0, n1, dn), elr=lr / n1 ** 2 if n1 > 0 else math.nan,
                                  condition=math.nan, eff_grad_norm=n0 * gn))

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)


def _angle(n0: float, n1: float, dn: float) -> float:
    """The angle between w0 and w1 from ‖w0‖, ‖w1‖ and ‖w1 − w0‖, without a cosine near 1:
    ‖ŵ1 − ŵ0‖² = (‖Δ‖² − (‖w1‖ − ‖w0‖)²)/(‖w0‖‖w1‖), and the angle is 2·asin(‖ŵ1 − ŵ0‖/2),
    so small angles keep float32's relative precision of ‖Δ‖ (a cosine would lose it)."""
    if n0 <= 0 or n1 <= 0:
        return math.nan
    chord = math.sqrt(max(0.0, (dn * dn - (n1 - n0) ** 2) / (n0 * n1)))
    return 2.0 * math.asin(min(1.0, chord / 2.0))
