"""Weight conditioning (arXiv 2409.03424): the row-equilibrated weight g·E·W of Linear and
Conv2D, with no width-dependent gain at the modular init (issue 23, item 4)."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from lrtransfer.analysis.dynamics import condition_table
from lrtransfer.models import build
from lrtransfer.modular.atoms import Conv2D, Linear
from lrtransfer.report.dynamics import condition_report, condition_summary

MLP = dict(input_dim=40, output_dim=10, block_depth=2)   # MNIST-1D's input dim, as in the experiment


def kappa(m: torch.Tensor) -> float:
    s = torch.linalg.svdvals(m.double().flatten(1))
    return float(s[0] / s[-1])


def conditioned(atom):
    atom.condition = True
    return atom.effective_weight().detach()


def reference(w: torch.Tensor, gain: float) -> torch.Tensor:
    """g · diag(1/‖W_i,:‖₂) · W in float64, rows of the (out, everything else) matrix."""
    w64 = w.double()
    return gain * w64 / w64.flatten(1).norm(dim=1).reshape(-1, *([1] * (w.dim() - 1)))


@pytest.mark.parametrize("shape", [(32, 32), (24, 48), (32, 40), (1, 17), (512, 512)])
def test_square_and_wide_orthogonal_inits_are_left_exactly_as_they_are(shape):
    torch.manual_seed(0)
    lin = Linear(*shape)
    w = lin.weight.detach().clone()
    assert lin.condition_gain() == 1.0
    assert torch.allclose(conditioned(lin), w, atol=1e-6, rtol=0)


@pytest.mark.parametrize("c_out, c_in", [(4, 4), (4, 6)])
def test_a_convolution_with_orthogonal_slices_is_left_as_it_is(c_out, c_in):
    # the flattened (c_out, c_in·k·k) rows have norm k, not 1: unit rows would divide the layer by k
    torch.manual_seed(0)
    conv = Conv2D(c_out, c_in, 3)
    w = conv.weight.detach().clone()
    assert conv.condition_gain() == 3.0
    assert torch.allclose(conditioned(conv), w, atol=1e-6, rtol=0)


@pytest.mark.parametrize("width", [32, 128, 512])
def test_the_input_layer_keeps_its_gain_at_every_width(width):
    # 40 → width: wide at 32, tall at 128 and 512, where unit rows gave 1.79× and 3.58× the output
    torch.manual_seed(width)
    model = build("mlp", width, 2, **MLP)
    layer = model.atoms()[0]
    assert tuple(layer.weight.shape) == (width, 40)
    w = layer.weight.detach().clone()
    x = torch.randn(4096, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y_plain = layer(x)
        layer.condition = True
        y_cond = layer(x)
    wc = layer.effective_weight().detach()
    assert float(wc.norm()) == pytest.approx(float(w.norm()), rel=1e-5)      # ‖E·W‖_F = ‖W‖_F
    # every row at the init's RMS row norm sqrt(min(r, c)/r): equal rows, the same total
    assert torch.allclose(wc.norm(dim=1), torch.full((width,), math.sqrt(min(width, 40) / width)), rtol=1e-5)
    assert float(y_cond.norm() / y_plain.norm()) == pytest.approx(1.0, abs=0.02)


def test_a_tall_convolution_keeps_its_frobenius_norm():
    torch.manual_seed(0)
    conv = Conv2D(12, 4, 3)
    w = conv.weight.detach().clone()
    assert float(conditioned(conv).norm()) == pytest.approx(float(w.norm()), rel=1e-5)


def _ill_conditioned(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Gaussian rows scaled over four decades: ill-conditioned by its row scaling."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 2, rows)[torch.randperm(rows, generator=g)]
    return torch.randn(rows, cols, generator=g) * scales.unsqueeze(1)


@pytest.mark.parametrize("shape", [(24, 48), (48, 24), (32, 32)])
def test_the_conditioned_weight_is_row_equilibration_times_the_init_gain(shape):
    lin = Linear(*shape)
    w = _ill_conditioned(*shape, seed=3)
    with torch.no_grad():
        lin.weight.copy_(w)
    wc = conditioned(lin)
    gain = math.sqrt(min(shape) / shape[0])
    assert lin.condition_gain() == pytest.approx(gain, rel=1e-12)
    assert torch.allclose(wc.double(), reference(w, gain), rtol=1e-5, atol=1e-7)
    assert torch.allclose(wc.norm(dim=1), torch.full((shape[0],), gain), rtol=1e-5)   # equal rows
    # the layer computes scale · (g·E·W) x
    x = torch.randn(5, shape[1], generator=torch.Generator().manual_seed(4))
    expected = (x.double() @ reference(w, gain).T) * math.sqrt(shape[0] / shape[1])
    assert torch.allclose(lin(x).double(), expected, atol=1e-4, rtol=1e-5)
    conv = Conv2D(6, 4, 3)
    with torch.no_grad():
        conv.weight.mul_(torch.logspace(-2, 2, 6).reshape(6, 1, 1, 1))
    w = conv.weight.detach().clone()
    assert torch.allclose(conditioned(conv).double(), reference(w, 3 * math.sqrt(4 / 6)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("c", [1e-3, 0.5, 7.0])
def test_a_conditioned_atom_is_scale_invariant(c):
    for atom in (Linear(48, 24), Linear(24, 48), Conv2D(6, 4, 3)):
        atom.condition = True
        before = atom.effective_weight().detach().clone()
        with torch.no_grad():
            atom.weight.mul_(c)
        assert torch.allclose(atom.effective_weight(), before, rtol=1e-5, atol=1e-7)


def test_gradients_flow_through_the_conditioner():
    # E is recomputed from W in the forward pass, not a constant: the output ignores each row's
    # scale, so the gradient of any loss is orthogonal to every row (it would not be with E detached)
    torch.manual_seed(0)
    lin = Linear(48, 24)
    with torch.no_grad():
        lin.weight.copy_(_ill_conditioned(48, 24, seed=5))
    lin.condition = True
    lin(torch.randn(16, 24)).pow(2).sum().backward()
    w, grad = lin.weight.detach(), lin.weight.grad
    cos = (grad * w).sum(dim=1) / (grad.norm(dim=1) * w.norm(dim=1))
    assert cos.abs().max() < 1e-4


@pytest.mark.parametrize("seed", range(4))
def test_equilibration_is_within_sqrt_rows_of_any_diagonal_scaling(seed):
    # van der Sluis: for full row rank, κ₂(E·W) ≤ √rows · κ₂(D·W) for every positive diagonal D
    rows, cols = 24, 48
    w = _ill_conditioned(rows, cols, seed)
    lin = Linear(rows, cols)
    with torch.no_grad():
        lin.weight.copy_(w)
    k_eq = kappa(conditioned(lin))
    assert k_eq < kappa(w) / 100                                   # the row scaling was the problem
    g = torch.Generator().manual_seed(100 + seed)
    for d in [torch.ones(rows), *(torch.exp(3 * torch.randn(rows, generator=g)) for _ in range(20))]:
        assert k_eq <= math.sqrt(rows) * kappa(d.unsqueeze(1) * w) * (1 + 1e-9)


# ----------------------------------------------------------------------------- the report's table

def _condition_tables(first_step: int):
    """Two series (modular plain, sp conditioned) × widths 32, 128 × LRs × seeds 0, 1; every
    matrix's κ = base × (1 + seed) × (100 at the first logged step, 1 at the last) × 2 for sp."""
    runs = pd.DataFrame([
        {"run_id": f"{s}-{w}-{lr}-{seed}", "series": s, "param": param, "condition": cond, "width": w,
         "lr": lr, "seed": seed, "status": "done", "final_train_loss": loss + 0.01 * seed + (0.1 if w == 128 else 0)}
        for s, param, cond in (("adam", "modular", False), ("sp_conditioned_adam", "sp", True))
        for w in (32, 128) for lr, loss in ((2.0 ** -4, 1.0), (2.0 ** -6, 0.5), (2.0 ** -8, 0.7)) for seed in (0, 1)])
    rows = []
    for r in runs.to_dict("records"):
        for step in (first_step, 150, 300):
            boost = {first_step: 100.0, 150: 10.0, 300: 1.0}[step] * (1 + r["seed"]) * (2 if r["param"] == "sp" else 1)
            for atom, role, k in ((0, "input", 2.0), (1, "hidden", 3.0), (2, "hidden", 7.0), (3, "hidden", 4.0),
                                  (4, "output", 5.0)):
                rows.append({"run_id": r["run_id"], "step": step, "atom": atom, "role": role, "condition": k * boost})
            rows.append({"run_id": r["run_id"], "step": step, "atom": -1, "role": "scale_invariant",
                         "condition": math.nan})
    return runs, pd.DataFrame(rows)


def test_condition_table_gives_each_parametrization_first_and_last_condition_numbers():
    runs, diags = _condition_tables(first_step=0)
    t = condition_table(runs, diags).set_index(["series", "width"])
    assert len(t) == 4 and set(t["param"]) == {"modular", "sp"}
    a = t.loc[("adam", 128)]
    assert a["lr"] == 2.0 ** -6 and a["loss"] == pytest.approx(0.605) and a["first_step"] == 0
    # hidden (3, 7, 4): median 4, max 7; × (1 + seed) averaged over seeds 0, 1 = × 1.5; × 100 at step 0
    assert a["median"] == pytest.approx(6.0) and a["max"] == pytest.approx(10.5)
    assert a["median_first"] == pytest.approx(600.0) and a["input_first"] == pytest.approx(300.0)
    assert a["input"] == pytest.approx(3.0) and a["output"] == pytest.approx(7.5)
    assert t.loc[("sp_conditioned_adam", 32), "median_first"] == pytest.approx(1200.0)
    # a parametrization varying inside one series is its own row
    mixed = runs.assign(series="one")
    t2 = condition_table(mixed, diags)
    assert sorted(zip(t2["param"], t2["width"])) == [("modular", 32), ("modular", 128), ("sp", 32), ("sp", 128)]


@pytest.mark.parametrize("first_step, says", [(0, "the init (step 0)"), (10, "after 10 updates")])
def test_condition_report_renders_first_and_last_per_series_and_width(first_step, says):
    runs, diags = _condition_tables(first_step)
    summary = condition_summary(runs, diags)
    assert summary["axis"] == "width" and len(summary["rows"]) == 4
    text = condition_report(summary, labels={"adam": "Adam"})
    assert says in text
    row = next(line for line in text.splitlines() if line.startswith("| Adam | modular | False | 128 |"))
    # best lr, loss, hidden median first/last, hidden max, input first/last, head
    assert row.split(" | ")[4:] == ["2^-6", "0.605", "600.0", "6.0", "10.5", "300.0", "3.0", "7.5 |"]
    assert "| sp_conditioned_adam | sp | True | 32 |" in text
