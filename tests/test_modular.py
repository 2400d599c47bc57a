"""docs/science.md §6 facts 1-3: the algebra's mass, sensitivity, targets and normalize, with SVD norms."""
import math

import pytest
import torch

from lrtransfer.modular import (Conv2D, Embed, Linear, Module, Mul, ReLU,
                                Residual, ScaledReLU, Tuple, exact_spectral_norm,
                                power_step)
from lrtransfer.modular.spectral import block_power_step, top_subspace
from lrtransfer.models import build

SVD = exact_spectral_norm


def rel(a, b):
    a, b = float(torch.as_tensor(a).detach()), float(torch.as_tensor(b).detach())
    return abs(a - b) / abs(b)


# -- fact 1: composite mass and sensitivity follow the table -----------------------------------
def test_composition_mass_and_sensitivity():
    a, b = Linear(4, 3), Linear(5, 4)
    a.mass, b.mass = 2.0, 0.5
    m = b @ ReLU() @ a
    assert m.mass == pytest.approx(2.5)
    assert m.sensitivity == pytest.approx(1 / math.sqrt(2))
    assert [x is y for x, y in zip(m.atoms(), [a, b])] == [True, True]  # a runs first


def test_tuple_scalar_power_and_add():
    a, b = Linear(4, 4), Linear(4, 4)
    t = Tuple(a, 3.0 * b)
    assert t.mass == 2 and t.sensitivity == pytest.approx(4.0)
    s = a + (-2.0) * b
    assert s.sensitivity == pytest.approx(3.0)
    x = torch.randn(2, 4)
    assert torch.allclose(s(x), a(x) - 2 * b(x), atol=1e-6)
    p = ReLU() @ Linear(4, 4)
    chain = p ** 3
    assert chain.mass == 3 and chain.sensitivity == pytest.approx(2 ** -1.5)
    ws = [at.weight for at in chain.atoms()]
    assert len(ws) == 3 and not torch.equal(ws[0], ws[1])  # independent weights


def test_residual_sensitivity_is_one_at_every_depth():
    for L in (1, 2, 7, 64):
        r = Residual(ScaledReLU() @ Linear(8, 8), L)
        assert r.sensitivity == pytest.approx(1.0)
        assert r.mass == pytest.approx(1.0)


def test_tare_reallocates_subtree_mass():
    blocks = (Linear(4, 4) @ Linear(4, 4)) ** 5
    blocks.tare(2.0)
    assert blocks.mass == pytest.approx(2.0)
    assert all(a.mass == pytest.approx(0.2) for a in blocks.atoms())
    with pytest.raises(ValueError, match="no mass"):
        ReLU().tare(1.0)


@pytest.mark.parametrize("width,depth", [(16, 1), (32, 3), (96, 8)])
def test_resmlp_mass_3_sensitivity_1(width, depth):
    m = build("mlp", width, depth, input_dim=10, output_dim=5)
    assert m.mass == pytest.approx(3.0) and m.sensitivity == pytest.approx(1.0)


@pytest.mark.parametrize("width,depth", [(16, 1), (32, 2), (64, 6)])
def test_gpt_mass_7_sensitivity_1(width, depth):
    g = build("gpt", width, depth, vocab_size=11, context=8, heads=4)
    assert g.mass == pytest.approx(7.0) and g.sensitivity == pytest.approx(1.0)


# -- fact 2: targets and normalize -------------------------------------------------------------
def _random_updates(model):
    return [torch.randn_like(a.weight) for a in model.atoms()]


def _atom_norm_exact(atom, u):
    return atom.atom_norm(u, exact=True)


def test_composition_split_by_hand():
    # M2 ∘ M1 with mu1 = 1, mu2 = 3 and a sensitivity-2 bond between: M1 gets (1/4)·eta/2
    m1, m2 = Linear(6, 5), Linear(4, 6)
    m2.mass = 3.0
    m = m2 @ Mul(2.0) @ m1
    assert m.targets(8.0) == pytest.approx([8 * (1 / 4) / 2, 8 * 3 / 4])
    t = Tuple(Linear(3, 3), Linear(3, 3))
    t.parts[1].mass = 3.0
    assert t.targets(1.0) == pytest.approx([0.25, 0.75])


@pytest.mark.parametrize("arch,kw", [
    ("mlp", dict(input_dim=12, output_dim=7, block_depth=2)),
    ("gpt", dict(vocab_size=13, context=8, heads=2)),
    ("resnet", dict(in_channels=3, output_dim=5, block_depth=1)),
])
def test_normalize_gives_every_atom_its_target(arch, kw):
    model = build(arch, 16, 3, **kw)
    updates = _random_updates(model)
    originals = [u.clone() for u in updates]
    eta = 0.37
    out = model.normalize(updates, eta, exact=True)
    for u, o in zip(updates, originals):
        assert torch.equal(u, o)  # input untouched
    for atom, u, share in zip(model.atoms(), out, model.targets(eta)):
        assert rel(_atom_norm_exact(atom, u), share) < 1e-5
    assert rel(model.norm(out, exact=True), eta) < 1e-5  # the recursive max is eta


def test_resmlp_reference_targets_independent_of_width_and_depth():
    for width, depth, bd in [(16, 1, 2), (64, 4, 2), (32, 3, 3)]:
        m = build("mlp", width, depth, input_dim=10, output_dim=4, block_depth=bd)
        t = m.targets(1.0)
        assert t[0] == pytest.approx(1 / 3) and t[-1] == pytest.approx(1 / 3)
        assert t[1:-1] == pytest.approx([1 / (3 * bd)] * (depth * bd))


def test_gpt_reference_targets_independent_of_blocks():
    m = 5.0
    for width, depth in [(16, 1), (32, 4)]:
        g = build("gpt", width, depth, vocab_size=11, context=8, heads=4, blocks_mass=m)
        t = g.targets(1.0)
        emb = 1 / (m + 2)
        assert t[:2] == pytest.approx([emb, emb]) and t[-1] == pytest.approx(emb)
        per_block = [m / (m + 2)] * 3 + [m / (3 * (m + 2))] * 3  # Q K V, out-proj, MLP in/out
        assert t[2:-1] == pytest.approx(per_block * depth)


def test_normalize_bad_input_names_the_problem():
    m = build("mlp", 8, 1, input_dim=4, output_dim=2)
    ups = _random_updates(m)
    with pytest.raises(ValueError, match="got 3 tensors for 4 atoms"):
        m.normalize(ups[:3], 1.0)
    ups[1] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"tensor 1 has shape \(3, 3\).*Linear"):
        m.normalize(ups, 1.0)
    with pytest.raises(ValueError, match="target must be a positive"):
        m.normalize(_random_updates(m), 0.0)


# -- fact 3: per-atom normalization ------------------------------------------------------------
def test_linear_normalized_update_top_singular_value():
    lin = Linear(30, 20)
    u = torch.randn(30, 20)
    out = lin.normalize(u, 0.7, exact=True)
    s = torch.linalg.svdvals(out)
    assert rel(s[0], 0.7) < 1e-5


def test_normalize_scales_are_each_share_over_each_norm():
    # what an optimizer applies in one pass (w − scale·u): share / SVD norm for a Linear,
    # per kernel position for a Conv2D, per row for an Embed (0 on a zero row)
    lin, conv, emb = Linear(12, 7), Conv2D(6, 4, 3), Embed(9, 5)
    u_lin, u_conv, u_emb = torch.randn(12, 7), torch.randn(6, 4, 3, 3), torch.randn(9, 5)
    u_emb[3] = 0
    (s,) = lin.normalize_scales([u_lin], 0.7, exact=True)
    assert rel(s, 0.7 / SVD(u_lin)) < 1e-6
    (s,) = conv.normalize_scales([u_conv], 0.5, exact=True)
    want = 0.5 / SVD(u_conv.permute(2, 3, 0, 1))
    assert torch.allclose(torch.broadcast_to(s, u_conv.shape)[0, 0], want, rtol=1e-6)
    (s,) = emb.normalize_scales([u_emb], 0.3)
    assert s.shape == (9, 1) and s[3] == 0
    assert torch.allclose(s.squeeze(1)[[0, 8]], 0.3 / u_emb[[0, 8]].norm(dim=1), rtol=1e-6)
    for atom, u in ((lin, u_lin), (conv, u_conv), (emb, u_emb)):   # normalize is exactly u · scale
        assert torch.equal(atom.normalize([u], 0.4, exact=True)[0], u * atom.normalize_scales([u], 0.4, exact=True)[0])


def test_embed_rows_normalized_zero_rows_stay_zero():
    emb = Embed(10, 6)
    u = torch.randn(10, 6)
    u[[2, 7]] = 0
    out = Module.normalize(emb, [u], 0.3)[0]
    norms = out.norm(dim=1)
    assert torch.all(norms[[2, 7]] == 0)
    keep = [i for i in range(10) if i not in (2, 7)]
    assert torch.allclose(norms[keep], torch.full((8,), 0.3), rtol=1e-5)


def test_conv_each_kernel_position_normalized():
    conv = Conv2D(8, 5, 3)
    u = torch.randn(8, 5, 3, 3)
    u[:, :, 1, 2] *= 100  # positions on very different scales
    out = conv.normalize([u], 0.5, exact=True)[0]
    per_position = SVD(out.permute(2, 3, 0, 1))
    assert torch.allclose(per_position, torch.full((3, 3), 0.5), rtol=1e-5)


def test_atoms_initialised_with_atom_norm_one():
    lin, conv, emb = Linear(12, 7), Conv2D(6, 4, 3), Embed(9, 5)
    assert rel(SVD(lin.weight), 1.0) < 1e-5
    assert torch.allclose(SVD(conv.weight.permute(2, 3, 0, 1)), torch.ones(3, 3), rtol=1e-5)
    assert torch.allclose(emb.weight.norm(dim=1), torch.ones(9), rtol=1e-5)


def test_power_iteration_is_a_lower_bound_that_converges_when_warm():
    torch.manual_seed(1)
    a = torch.randn(64, 48)
    exact = SVD(a)
    v = torch.randn(48)
    v = v / v.norm()
    sigma, v = power_step(a, v)
    assert sigma <= exact * (1 + 1e-6)
    for _ in range(50):
        sigma, v = power_step(a, v)
    assert rel(sigma, exact) < 1e-3
    zero_sigma, v2 = power_step(torch.zeros(64, 48), v)
    assert torch.isnan(zero_sigma) and torch.equal(v2, v)  # 0/0, and the kept vector survives
    lin = Linear(64, 48)
    assert lin.atom_norm(torch.zeros(64, 48), exact=False) == 0
    assert torch.equal(lin.normalize([torch.zeros(64, 48)], 1.0)[0], torch.zeros(64, 48))
    assert not lin.tracking_state()[1]  # a zero update leaves the atom cold
    nan = torch.full((64, 48), float("nan"))
    lin.normalize(torch.randn(64, 48), 1.0)
    kept = lin.tracking_state()[0].clone()
    assert torch.isnan(lin.normalize(nan, 1.0)).all()  # stays visibly non-finite (the optimizer raises)
    assert torch.equal(lin.tracking_state()[0], kept)  # a NaN update does not poison the warm block


def test_block_step_is_a_lower_bound_exact_on_its_subspace():
    torch.manual_seed(2)
    a = torch.randn(3, 40, 30)
    sigma, qt = top_subspace(a, 8)
    assert torch.allclose(sigma, SVD(a), rtol=1e-5)            # cold start: exact
    b = torch.randn(3, 40, 30)                                   # an unrelated matrix
    est, align, qt2 = block_power_step(b, qt)
    assert torch.all(est <= SVD(b) * (1 + 1e-5)) and torch.all(align < 0.95)
    for _ in range(30):
        est, align, qt2 = block_power_step(b, qt2)
    assert torch.allclose(est, SVD(b), rtol=1e-4) and torch.all(align > 0.999)
    assert torch.allclose(qt2 @ qt2.mT, torch.eye(8).expand(3, 8, 8), atol=1e-4)  # orthonormal block
    z, za, zq = block_power_step(torch.zeros(3, 40, 30), qt2)
    assert torch.isnan(z).all() and torch.equal(zq, qt2)


def _cold_step_ratios(model, grads, target):
    """SVD norm / target of every Linear/Conv2D atom's normalized update (one call per atom)."""
    out = []
    for atom, g, share in zip(model.atoms(), grads, model.targets(target)):
        if isinstance(atom, (Linear, Conv2D)):
            u = atom.normalize(g, share)
            norm = SVD(u) if isinstance(atom, Linear) else SVD(u.permute(2, 3, 0, 1)).max()
            out.append(float(norm) / share)
    return out


@pytest.mark.parametrize("arch,kw", [("mlp", dict(input_dim=6, output_dim=4)),
                                     ("resnet", dict(in_channels=3, output_dim=5))])
def test_cold_tracked_norm_is_exact_and_reset_makes_cold(arch, kw):
    torch.manual_seed(3)
    model = build(arch, 16, 2, **kw)
    grads = [torch.randn_like(a.weight) for a in model.atoms()]
    ratios = _cold_step_ratios(model, grads, 0.5)
    assert ratios and all(abs(r - 1) < 1e-3 for r in ratios)
    tracked = [a for a in model.atoms() if isinstance(a, (Linear, Conv2D))]
    assert all(a.tracking_state()[1] for a in tracked)
    for a in tracked:
        a.reset_parameters()
    assert not any(a.tracking_state()[1] for a in tracked)
    grads = [torch.randn_like(a.weight) for a in model.atoms()]  # unrelated: cold again, exact again
    assert all(abs(r - 1) < 1e-3 for r in _cold_step_ratios(model, grads, 0.5))


def test_regularize_splits_decay_like_normalize():
    m = build("mlp", 8, 2, input_dim=4, output_dim=2)
    before = [a.weight.detach().clone() for a in m.atoms()]
    shares = m.regularize(0.03)
    assert shares == pytest.approx(m.targets(0.03))
    for a, w, s in zip(m.atoms(), before, shares):
        assert torch.allclose(a.weight, w * (1 - s))


def test_plain_nn_module_tree():
    m = build("mlp", 8, 2, input_dim=4, output_dim=3)
    sd = m.state_dict()
    assert len(sd) == len(m.atoms()) and all(k.endswith("weight") for k in sd)
    m2 = build("mlp", 8, 2, input_dim=4, output_dim=3)
    m2.load_state_dict(sd)
    x = torch.randn(5, 4)
    assert torch.equal(m(x), m2(x))
    assert sum(p.numel() for p in m.parameters()) == sum(a.weight.numel() for a in m.atoms())
    m.to(torch.float64)
    assert m(x.double()).dtype == torch.float64
