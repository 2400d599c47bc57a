"""The methods of the source papers: Newton–Schulz, modular duality, sign descent, Muon, and
the run keys that select them (issue: every method side by side)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from lrtransfer.errors import ConfigError
from lrtransfer.models import build
from lrtransfer.modular import Conv2D, Embed, Linear
from lrtransfer.modular.newton_schulz import orthogonalize
from lrtransfer.optim import Adam, Optimizer, Sign, make_optimizer
from lrtransfer.sweep import experiment_from_dict


def _matrices():
    g = torch.Generator().manual_seed(0)
    yield "random", torch.randn(64, 32, generator=g, dtype=torch.float64)
    u, _ = torch.linalg.qr(torch.randn(48, 48, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -3, 32, dtype=torch.float64)                    # condition number 1000
    yield "ill-conditioned", (u[:, :32] * s) @ v.T
    yield "low-rank", (torch.randn(40, 5, generator=g, dtype=torch.float64)
                       @ torch.randn(5, 30, generator=g, dtype=torch.float64))   # rank 5 of 30
    yield "wide", torch.randn(16, 50, generator=g, dtype=torch.float64)


# quintic: 18 steps bring it within 1e-3 (its error shrinks 0.6× per step); many more would
# grow the float64 rounding in the zero σ's (3× per step) past the 1e-6 checked below
@pytest.mark.parametrize("method,steps", [("cubic", 40), ("quintic", 18), ("taylor5", 24), ("svd", None)])
@pytest.mark.parametrize("name,m", list(_matrices()))
def test_newton_schulz_sets_every_nonzero_singular_value_to_one_and_keeps_zeros(method, steps, name, m):
    s_in = torch.linalg.svdvals(m)
    nonzero = s_in > 1e-8 * s_in[0]
    s_out = torch.linalg.svdvals(orthogonalize(m, method, steps))
    assert (s_out[nonzero] - 1).abs().max() < 1e-3, (name, s_out[nonzero])
    if (~nonzero).any():
        assert s_out[~nonzero].max() < 1e-6, name   # a zero singular value stays zero
    # and the singular vectors are kept: the result is U Vᵀ of the input
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    r = int(nonzero.sum())
    assert torch.allclose(orthogonalize(m, method, steps), u[:, :r] @ vh[:r], atol=2e-3)


def _muon_range(m: torch.Tensor, floor: float = 2e-3) -> tuple[float, float]:
    """Output singular values of Muon's 5 steps, over the input ones above floor·‖m‖_F (its
    tuned polynomial grows a small σ 3.4× per step, so 5 steps lift σ ≥ 2e-3·‖m‖_F)."""
    m = m.double()
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    o = orthogonalize(m, "muon", 5)
    out = torch.linalg.svdvals(o)  # o = U p(Σ) Vᵀ: its σ's are p(σ) in the same order
    keep = s >= floor * torch.linalg.matrix_norm(m)
    return float(out[keep].min()), float(out[keep].max())


def test_muon_coefficients_land_near_one_in_five_steps():
    g = torch.Generator().manual_seed(1)
    for shape in [(64, 32), (128, 128), (30, 90)]:
        lo, hi = _muon_range(torch.randn(*shape, generator=g))
        assert 0.6 <= lo and hi <= 1.25, (shape, lo, hi)


def test_orthogonalize_rejects_unknown_methods_and_leaves_its_input_alone():
    m = torch.randn(8, 4)
    before = m.clone()
    orthogonalize(m, "quintic")
    assert torch.equal(m, before)
    with pytest.raises(ValueError, match="allowed: cubic, quintic, taylor5, muon, svd"):
        orthogonalize(m, "halley")


def test_dualized_atoms_are_at_their_target():
    torch.manual_seed(0)
    lin = Linear(40, 24)
    u = torch.randn(40, 24)
    d = lin.dualize(u, 0.3, ns="svd")
    assert torch.allclose(torch.linalg.svdvals(d), torch.full((24,), 0.3, dtype=d.dtype), atol=1e-5)
    conv = Conv2D(12, 6, 3)
    w = torch.randn(12, 6, 3, 3)
    d = conv.dualize(w, 0.5, ns="quintic")
    for i in range(3):
        for j in range(3):
            s = torch.linalg.svdvals(d[:, :, i, j])
            assert (s - 0.5).abs().max() < 5e-3
    emb = Embed(10, 8)
    g = torch.randn(10, 8)
    g[3] = 0  # a token absent from the batch
    d = emb.dualize(g, 0.7)
    norms = d.norm(dim=1)
    assert torch.equal(d[3], torch.zeros(8))
    assert torch.allclose(norms[torch.arange(10) != 3], torch.full((9,), 0.7), atol=1e-6)


@pytest.mark.parametrize("arch,kw", [("mlp", dict(input_dim=6, output_dim=4)),
                                     ("resnet", dict(in_channels=3, output_dim=4, downsample=1)),
                                     ("gpt", dict(vocab_size=11, context=5))])
def test_model_dualize_has_modular_norm_target_and_leaves_inputs_untouched(arch, kw):
    torch.manual_seed(0)
    model = build(arch, 8, 2, **kw)
    updates = [torch.randn_like(a.weight) for a in model.atoms()]
    before = [u.clone() for u in updates]
    out = model.dualize(updates, 0.25, ns="svd")
    assert all(torch.equal(a, b) for a, b in zip(updates, before))
    assert abs(float(model.norm(out, exact=True)) - 0.25) < 1e-5
    for atom, o, share in zip(model.atoms(), out, model.targets(0.25)):
        assert abs(float(atom.atom_norm(o, exact=True)) - share) < 1e-5 * max(1, share)


def test_sign_equals_adam_without_averages_step_for_step():
    torch.manual_seed(0)
    a = build("mlp", 16, 2, input_dim=6, output_dim=4)
    b = copy.deepcopy(a)
    opt_a = Optimizer(a, Sign(), lr=0.01)
    opt_b = Optimizer(b, Adam(betas=(0.0, 0.0), eps=0.0), lr=0.01)
    x, y = torch.randn(32, 6), torch.randint(0, 4, (32,))
    for _ in range(5):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)


@pytest.mark.parametrize("update", ["normalize", "dualize"])
def test_optimizer_step_is_what_the_module_map_returns(update):
    torch.manual_seed(0)
    model = build("mlp", 16, 2, input_dim=6, output_dim=4)
    x, y = torch.randn(32, 6), torch.randint(0, 4, (32,))
    opt = make_optimizer(model, "sgd", 0.2, update=update, momentum=0.0, schedule="constant")
    for _ in range(3):  # a few steps, so tracked norms are warm
        twin = copy.deepcopy(model)  # same weights and same tracked state
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads = [a.weight.grad.clone() for a in model.atoms()]
        expected = (twin.normalize(grads, 0.2) if update == "normalize"
                    else twin.dualize(grads, 0.2, ns="quintic"))
        before = [a.weight.detach().clone() for a in model.atoms()]
        opt.step()
        for w0, a, e in zip(before, model.atoms(), expected):
            assert torch.allclose(w0 - a.weight.detach(), e, atol=1e-6)


def test_muon_orthogonalizes_hidden_weights_and_runs_adam_elsewhere():
    torch.manual_seed(0)
    model = build("mlp", 32, 2, input_dim=6, output_dim=4)
    roles = model.roles()
    assert roles[0] == "input" and roles[-1] == "output" and set(roles[1:-1]) == {"hidden"}
    opt = make_optimizer(model, "muon", 0.1, schedule="constant", muon_adam_ratio=0.01)
    x, y = torch.randn(64, 6), torch.randint(0, 4, (64,))
    F.cross_entropy(model(x), y).backward()
    grads = [a.weight.grad.clone() for a in model.atoms()]
    before = [a.weight.detach().clone() for a in model.atoms()]
    opt.step()
    for role, g, w0, atom in zip(roles, grads, before, model.atoms()):
        step = w0 - atom.weight.detach()
        if role == "hidden":  # 5 Muon NS steps of the Nesterov momentum (0.05·g at step 1): σ in [0.6, 1.25] × lr
            assert torch.allclose(step, 0.1 * orthogonalize(0.05 * g + 0.95 * 0.05 * g, "muon", 5), atol=1e-6)
            lo, hi = _muon_range(g)
            assert 0.6 <= lo and hi <= 1.25
        else:  # Adam's first step is lr·ratio·g/(|g| + eps): sign(g) where g is not tiny
            big = g.abs() > 1e-4
            assert torch.allclose(step[big], 0.001 * torch.sign(g[big]), rtol=1e-3)


TOML = dict(name="m", data=dict(dataset="mnist1d", samples=600), model=dict(arch="mlp", width=16, depth=1),
            train=dict(steps=5))


def _exp(**series):
    return experiment_from_dict({**TOML, "series": series}, "m")


def test_normalize_true_is_update_normalize_with_the_same_run_id():
    a = _exp(s=dict(normalize=True)).cells()[0]
    b = _exp(s=dict(update="normalize")).cells()[0]
    assert a.values["update"] == "normalize" and a.run_id == b.run_id


@pytest.mark.parametrize("series,message", [
    (dict(update="dualize", param="sp"), "needs param = \"modular\""),
    (dict(normalize=True, param="mup"), "needs param = \"modular\""),
    (dict(optimizer="muon", update="dualize"), "muon"),
    (dict(normalize=True, update="dualize"), "contradicts"),
    (dict(ns="halley"), "allowed: cubic, quintic, taylor5, muon, svd"),
])
def test_combinations_that_make_no_sense_are_rejected_with_the_reason(series, message):
    with pytest.raises(ConfigError, match=message):
        _exp(s=series).cells()


def test_mup_base_width_is_the_experiments_smallest_width():
    exp = experiment_from_dict({**TOML, "grid": {"width": [32, 8, 16]},
                                "series": {"mup": {"param": "mup"}, "modular": {}}}, "m")
    cells = exp.cells()
    assert {c.values["base_width"] for c in cells if c.series == "mup"} == {8}
    assert {c.values["base_width"] for c in cells if c.series == "modular"} == {0}
