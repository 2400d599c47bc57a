"""Update rules, normalized steps, schedules, divergence reporting (docs/science.md §6 fact 5)."""
import math

import pytest
import torch

from lrtransfer.models import build
from lrtransfer.modular import exact_spectral_norm as SVD
from lrtransfer.optim import SGD, Adam, Diverged, Optimizer, Schedule, make_optimizer


def _set_grads(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for a in model.atoms():
        a.weight.grad = torch.randn(a.weight.shape, generator=g)


def test_adam_betas_zero_eps_zero_is_exactly_sign_descent():
    m = build("mlp", 8, 1, input_dim=5, output_dim=3)
    opt = Optimizer(m, Adam(betas=(0.0, 0.0), eps=0.0), lr=0.125)
    for step in range(3):
        before = [a.weight.detach().clone() for a in m.atoms()]
        _set_grads(m, seed=step)
        m.atoms()[1].weight.grad[0, :3] = 0.0  # zero gradient entries take no step
        grads = [a.weight.grad.clone() for a in m.atoms()]
        opt.step()
        for a, w, g in zip(m.atoms(), before, grads):
            assert torch.equal(w - a.weight.detach(), (0.125 * torch.sign(g)).to(w.dtype)) or \
                torch.equal(a.weight.detach(), w - 0.125 * torch.sign(g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_direction_is_the_textbook_formula(dtype):
    # the rule's fused path (one kernel per tensor) against Adam written out in float64, over
    # steps where the bias corrections matter, with a zero-gradient entry and mixed shapes
    rule = Adam(betas=(0.9, 0.99), eps=1e-8)
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (3,), (4, 2, 3)]
    m = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    v = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    for t in range(1, 9):
        grads = [torch.randn(s, generator=g, dtype=torch.float64) * 10.0 ** -k for k, s in enumerate(shapes)]
        grads[0][0, 0] = 0.0
        got = rule.direction([x.to(dtype) for x in grads])
        for k, x in enumerate(grads):
            m[k] = 0.9 * m[k] + 0.1 * x
            v[k] = 0.99 * v[k] + 0.01 * x * x
            want = (m[k] / (1 - 0.9 ** t)) / ((v[k] / (1 - 0.99 ** t)).sqrt() + 1e-8)
            tol = 1e-6 if dtype == torch.float32 else 1e-12
            assert torch.allclose(got[k].double(), want, rtol=tol, atol=tol * float(want.abs().max()))
        assert got[0][0, 0] == 0   # never a gradient there: no step there
        for d in got:   # the kernel overwrites its buffer: what the last direction left there never leaks in
            d.fill_(-1.5e30)


def test_plain_adam_step_is_the_textbook_step():
    # the plain step applied in the fused kernel (Adam.apply) against the AdamW step written out
    # in float64: per-atom LR multipliers (two distinct, as μP's), decoupled decay at the step's
    # LR times each atom's own decay multiplier (not its LR multiplier: μP's lr·wd is
    # width-independent), a schedule
    torch.manual_seed(0)
    m = build("mlp", 6, 1, input_dim=5, output_dim=3).double()
    opt = Optimizer(m, Adam(betas=(0.9, 0.99), eps=1e-8), lr=0.05, weight_decay=0.1,
                    schedule=Schedule("linear", steps=6))
    assert len(opt.lr_mults) == 4   # input, two hidden, output
    assert opt.decay_mults == [1.0] * 4
    opt.lr_mults = [1.0, 0.5, 0.5, 1.0]
    opt.decay_mults = [1.0, 1.0, 0.25, 1.0]   # three (lr, decay) groups in the kernel
    w = [a.weight.detach().clone() for a in m.atoms()]
    mom = [torch.zeros_like(x) for x in w]
    var = [torch.zeros_like(x) for x in w]
    g = torch.Generator().manual_seed(1)
    for t in range(1, 6):
        grads = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in w]
        for a, x in zip(m.atoms(), grads):
            a.weight.grad = x.clone()
        lr = opt.step()
        assert lr == pytest.approx(0.05 * (1 - (t - 1) / 6))
        for k, x in enumerate(grads):
            mom[k] = 0.9 * mom[k] + 0.1 * x
            var[k] = 0.99 * var[k] + 0.01 * x * x
            lr_k = lr * opt.lr_mults[k]
            direction = (mom[k] / (1 - 0.9 ** t)) / ((var[k] / (1 - 0.99 ** t)).sqrt() + 1e-8)
            w[k] = w[k] * (1 - lr * opt.decay_mults[k] * 0.1) - lr_k * direction
            assert torch.allclose(m.atoms()[k].weight, w[k], rtol=1e-12, atol=1e-12)


def test_sgd_momentum_direction():
    rule = SGD(momentum=0.9)
    g1, g2 = [torch.tensor([1.0, -2.0])], [torch.tensor([0.5, 0.5])]
    assert torch.equal(rule.direction(g1)[0], g1[0])
    assert torch.allclose(rule.direction(g2)[0], 0.9 * g1[0] + g2[0])


def test_normalized_step_has_modular_norm_lr():
    m = build("mlp", 16, 2, input_dim=6, output_dim=4)
    opt = Optimizer(m, Adam(), lr=0.3, update="normalize", exact=True)
    before = [a.weight.detach().clone() for a in m.atoms()]
    _set_grads(m)
    opt.step()
    step = [w - a.weight.detach() for a, w in zip(m.atoms(), before)]
    for atom, s, share in zip(m.atoms(), step, m.targets(0.3)):
        assert math.isclose(float(atom.atom_norm(s)), share, rel_tol=1e-4)
    assert math.isclose(float(m.norm(step)), 0.3, rel_tol=1e-4)


def _applied_ratios(m, opt, grads):
    """SVD norm of each Linear's applied update / its target, for one step on ``grads``."""
    before = [a.weight.detach().clone() for a in m.atoms()]
    for a, g in zip(m.atoms(), grads):
        a.weight.grad = g.clone()
    lr = opt.step()
    return [float(SVD(w - a.weight.detach())) / (share * lr)
            for a, w, share in zip(m.atoms(), before, m.targets(1.0))]


def test_normalized_step_with_tracked_norm_exact_first_then_close():
    # default (non-exact) mode: the first step is exact (cold start), later ones stay close
    m = build("mlp", 64, 1, input_dim=6, output_dim=4)
    opt = Optimizer(m, SGD(momentum=0.0), lr=0.1, update="normalize")
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(a.weight.shape, generator=g) for a in m.atoms()]
    first = _applied_ratios(m, opt, grads)
    assert all(abs(r - 1) < 1e-3 for r in first)
    for _ in range(5):
        ratios = _applied_ratios(m, opt, grads)
    assert all(1 - 1e-4 < r < 1 + 1e-4 for r in ratios)  # warm on a fixed matrix: converged


@pytest.mark.parametrize("rule", [SGD(momentum=0.0), Adam(betas=(0.0, 0.0))])
def test_abrupt_change_of_direction_stays_within_ten_percent(rule):
    # random gradients, then unrelated ones: the kept block is cold for the new matrices,
    # the alignment check catches it, and the extra steps bring the estimate back
    m = build("mlp", 96, 2, input_dim=24, output_dim=10)
    opt = Optimizer(m, rule, lr=0.2, update="normalize")
    g = torch.Generator().manual_seed(1)
    first = [torch.randn(a.weight.shape, generator=g) for a in m.atoms()]
    for _ in range(3):
        assert max(_applied_ratios(m, opt, first)) <= 1.10
    for seed in range(2, 6):  # every step an unrelated matrix
        g = torch.Generator().manual_seed(seed)
        fresh = [torch.randn(a.weight.shape, generator=g) for a in m.atoms()]
        ratios = _applied_ratios(m, opt, fresh)
        assert max(ratios) <= 1.10 and min(ratios) >= 1 - 1e-5  # a lower bound: never undershoots


def test_weight_decay_plain_and_normalized():
    m = build("mlp", 8, 1, input_dim=5, output_dim=3)
    for a in m.atoms():
        a.weight.grad = torch.zeros_like(a.weight)
    w0 = [a.weight.detach().clone() for a in m.atoms()]
    Optimizer(m, SGD(momentum=0.0), lr=0.5, weight_decay=0.1).step()
    for a, w in zip(m.atoms(), w0):
        assert torch.allclose(a.weight, w * (1 - 0.05))
    m2 = build("mlp", 8, 1, input_dim=5, output_dim=3)
    _set_grads(m2)
    w0 = [a.weight.detach().clone() for a in m2.atoms()]
    opt = Optimizer(m2, SGD(momentum=0.0), lr=0.5, update="normalize", weight_decay=0.1, exact=True)
    grads = [a.weight.grad.clone() for a in m2.atoms()]
    opt.step()
    for a, w, g, share in zip(m2.atoms(), w0, grads, m2.targets(0.5 * 0.1)):
        step = m2.normalize(grads, 0.5, exact=True)[m2.atoms().index(a)]
        assert torch.allclose(a.weight, w * (1 - share) - step, atol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("normalize", [False, True])
def test_non_finite_update_is_reported_not_applied(normalize, bad):
    m = build("mlp", 8, 1, input_dim=5, output_dim=3)
    opt = Optimizer(m, Adam(), lr=0.1, update="normalize" if normalize else "plain")
    _set_grads(m)
    m.atoms()[2].weight.grad[0, 0] = bad
    before = [a.weight.detach().clone() for a in m.atoms()]
    with pytest.raises(Diverged) as info:
        opt.step()
    assert info.value.step == 0 and 2 in info.value.atoms
    assert all(torch.equal(a.weight, w) for a, w in zip(m.atoms(), before))


def test_schedules():
    lin = Schedule("linear", steps=10)
    assert [lin(t) for t in (0, 5, 9)] == pytest.approx([1.0, 0.5, 0.1])
    cos = Schedule("cosine", steps=10, warmup=2)
    assert cos(0) == pytest.approx(0.5) and cos(1) == pytest.approx(1.0)
    assert cos(2) == pytest.approx(1.0) and cos(6) == pytest.approx(0.5)
    assert Schedule("constant", steps=5)(4) == 1.0
    with pytest.raises(ValueError, match="unknown kind"):
        Schedule("step", steps=3)


def test_make_optimizer_rejects_bad_input():
    m = build("mlp", 8, 1, input_dim=5, output_dim=3)
    with pytest.raises(ValueError, match="lr must be a positive"):
        make_optimizer(m, "adam", lr=0.0)
    with pytest.raises(ValueError, match="unknown name 'lion'"):
        make_optimizer(m, "lion", lr=0.1)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_sphere_frozen_atoms_take_no_step_and_no_decay(name):
    """The sphere freezes the non-scale-invariant atoms: LR and decay multipliers both 0, in
    the fused Adam kernel (which skips them) and in the plain step alike."""
    torch.manual_seed(0)
    m = build("mlp", 16, 1, input_dim=5, output_dim=3, norm="post")
    opt = make_optimizer(m, name, 0.1, weight_decay=0.5, schedule="constant", constraint="sphere")
    frozen = opt.sphere.frozen
    assert any(frozen) and [d for d, f in zip(opt.decay_mults, frozen) if f] == [0.0] * sum(frozen)
    before = [a.weight.detach().clone() for a in m.atoms()]
    _set_grads(m)
    opt.step()
    for a, w, f in zip(m.atoms(), before, frozen):
        assert torch.equal(a.weight.detach(), w) == f
