"""Each Newton–Schulz method against its source's polynomial: fixed points, default step
counts (recomputed from the scalar map) and what the default steps leave of a matrix of
condition number 1e4 (newton_schulz.py)."""
import numpy as np
import pytest
import torch

from lrtransfer.modular.newton_schulz import COEFFICIENTS, DEFAULT_STEPS, METHODS, orthogonalize

# the sources' coefficients, written as they give them
SOURCE = {"cubic": (3 / 2, -1 / 2, 0.0),          # Björck & Bowie 1971
          "quintic": (3.0, -16 / 5, 6 / 5),       # Modular Duality (arXiv 2410.21265), modula docs
          "taylor5": (15 / 8, -10 / 8, 3 / 8),    # the degree-5 Taylor member
          "muon": (3.4445, -4.7750, 2.0315)}      # Muon (Jordan et al. 2024)
SLOPE_AT_ONE = {"cubic": 0.0, "quintic": -0.6, "taylor5": 0.0}


def _p(method, s):
    a, b, c = COEFFICIENTS[method]
    return a * s + b * s ** 3 + c * s ** 5


def test_the_names_are_their_sources_coefficients():
    assert set(METHODS) == set(SOURCE) | {"svd"}
    for name, coefficients in SOURCE.items():
        assert COEFFICIENTS[name] == pytest.approx(coefficients, abs=1e-15), name


@pytest.mark.parametrize("method", sorted(SLOPE_AT_ONE))
def test_one_is_a_fixed_point_with_the_stated_slope(method):
    a, b, c = COEFFICIENTS[method]
    assert a + b + c == pytest.approx(1.0, abs=1e-15)
    assert a + 3 * b + 5 * c == pytest.approx(SLOPE_AT_ONE[method], abs=1e-12)
    # on a matrix: a rank-1 u vᵀ (σ = 1 = ‖·‖_F) is left where it is by any number of steps
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(12, 1, generator=g, dtype=torch.float64), torch.randn(7, 1, generator=g, dtype=torch.float64)
    uv = (u / u.norm()) @ (v / v.norm()).T
    # (the zero σ's hold float64 rounding, ~1e-16, which grows by p'(0) = a per step: 3^10·1e-16)
    for steps in (1, 3, DEFAULT_STEPS[method]):
        torch.testing.assert_close(orthogonalize(uv, method, steps), uv, rtol=0, atol=1e-10)


def test_muon_has_no_fixed_point_at_one():
    assert sum(COEFFICIENTS["muon"]) == pytest.approx(0.701, abs=1e-12)   # p(1) ≠ 1: it does not converge


@pytest.mark.parametrize("method,tolerance", [("cubic", 1e-3), ("taylor5", 1e-3), ("quintic", 0.02)])
def test_default_steps_are_the_fewest_that_meet_the_documented_tolerance(method, tolerance):
    """Every σ ∈ [1e-3, 1]·‖G‖_F within ``tolerance`` of 1, on the scalar map."""
    s = np.logspace(-3, 0, 20001)
    errors = []
    for _ in range(40):
        s = _p(method, s)
        errors.append(np.abs(s - 1).max())
    fewest = next(k + 1 for k, e in enumerate(errors) if e <= tolerance)
    assert DEFAULT_STEPS[method] == fewest
    if method == "quintic":   # oscillating, not monotone: 2% at 10 steps, 1e-3 only at 16
        assert next(k + 1 for k, e in enumerate(errors) if e <= 1e-3) == 16


def _condition_1e4():
    g = torch.Generator().manual_seed(2)
    u, _ = torch.linalg.qr(torch.randn(96, 64, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=torch.float64))
    sigma = torch.logspace(0, -4, 64, dtype=torch.float64)    # σ_max/σ_min = 1e4 exactly
    return (u * sigma) @ v.T, sigma


@pytest.mark.parametrize("method,low,high", [
    ("quintic", 0.9, 1.2105),     # issue 23: 10 steps reach ~0.97; p never exceeds 1.2105 below it
    ("taylor5", 0.15, 1.0),       # 13 steps lift σ_min only to ~0.18 (1.875× per step)
    ("cubic", 0.15, 1.0),         # 20 steps: ~0.17
])
def test_default_steps_on_a_condition_1e4_matrix(method, low, high):
    m, sigma = _condition_1e4()
    out = torch.linalg.svdvals(orthogonalize(m, method))
    # the matrix iteration is the scalar map on the scaled singular values, to float64 rounding
    s = (sigma / sigma.norm()).numpy()
    for _ in range(DEFAULT_STEPS[method]):
        s = _p(method, s)
    np.testing.assert_allclose(np.sort(out.numpy()), np.sort(s), rtol=0, atol=1e-9)
    assert low <= float(out.min()) and float(out.max()) <= high + 1e-9, (method, float(out.min()), float(out.max()))
    if method != "quintic":
        assert float(out.min()) < 0.25   # the documented gap: the paper's quintic is far ahead
