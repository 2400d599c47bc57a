"""Training dynamics on the model side: scale invariance, the sphere and its ELR, weight
conditioning, and per-run diagnostics that measure without disturbing (issue: dynamics)."""
import math

import pytest
import torch

from lrtransfer.run import spec
from lrtransfer.run.diagnostics import Diagnostics
from lrtransfer.models import build
from lrtransfer.modular import Conv2D, Linear
from lrtransfer.optim import Sphere, elr_for_lr, lr_for_elr, make_optimizer, sphere_radius
from lrtransfer.results.store import ResultStore
from lrtransfer.run.train import execute

MLP = dict(input_dim=40, output_dim=10)


def _values(**kw):
    values = {k.name: k.default for k in spec.KEYS}
    values.update({"data.dataset": "mnist1d", "data.samples": 2000, "series": "s", "steps": 30,
                   "width": 32, "depth": 2, "log_every": 5, "schedule": "constant"})
    values.update(kw)
    return values


def _invariant_numerically(model, x) -> list[bool]:
    y0 = model(x)
    out = []
    for atom in model.atoms():
        with torch.no_grad():
            atom.weight.mul_(3.0)
            y1 = model(x)
            atom.weight.div_(3.0)
        out.append(torch.allclose(y0, y1, rtol=1e-4, atol=1e-5))
    return out


@pytest.mark.parametrize("arch,kw,x", [
    ("mlp", MLP, lambda: torch.randn(8, 40)),
    ("resnet", dict(in_channels=3, output_dim=10), lambda: torch.randn(2, 3, 8, 8)),
])
@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("condition", [False, True])
def test_scale_invariant_atoms_are_exactly_those_whose_scale_the_output_ignores(arch, kw, x, norm, condition):
    model = build(arch, 16, 2, norm=norm, condition=condition, **kw)
    flags = model.scale_invariant()
    assert flags == _invariant_numerically(model, x())
    if norm == "post":   # every weight but the head is followed by a normalization
        assert flags[:-1] == [True] * (len(flags) - 1)
    if condition:        # a conditioned weight ignores its own scale wherever it sits
        assert all(flags)


def test_gpt_scale_invariance_found_structurally_matches_the_forward_pass():
    model = build("gpt", 16, 1, vocab_size=20, context=8, condition=True)
    assert model.scale_invariant() == _invariant_numerically(model, torch.randint(0, 20, (2, 8)))


def test_elr_and_lr_convert_through_the_squared_radius_of_the_scale_invariant_weights():
    model = build("mlp", 16, 1, norm="post", **MLP)
    # orthogonal inits: ‖W‖_F² = min(d_out, d_in); SI atoms: input 16x40 (16), two 16x16 (16 each)
    assert model.scale_invariant() == [True, True, True, False]
    assert math.isclose(sphere_radius(model) ** 2, 48.0, rel_tol=1e-6)
    assert math.isclose(lr_for_elr(model, 0.01), 0.48, rel_tol=1e-6)
    assert math.isclose(elr_for_lr(model, 0.48), 0.01, rel_tol=1e-6)
    with pytest.raises(ValueError, match="no scale-invariant weights"):
        sphere_radius(build("gpt", 16, 1, vocab_size=20, context=8))


def test_sphere_projection_keeps_the_joint_norm_to_1e6_and_freezes_the_head():
    torch.manual_seed(0)
    model = build("mlp", 32, 2, norm="post", **MLP)
    head0 = model.atoms()[-1].weight.detach().clone()
    opt = make_optimizer(model, "sgd", lr=5.0, momentum=0.0, schedule="constant", constraint="sphere")
    r0 = opt.sphere.radius
    x, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        assert abs(sphere_radius(model) - r0) / r0 < 1e-6
    assert torch.equal(model.atoms()[-1].weight, head0)
    with pytest.raises(ValueError, match="needs update"):
        make_optimizer(model, "adam", lr=0.1, update="normalize", constraint="sphere")
    with pytest.raises(ValueError, match="no scale-invariant"):
        Sphere(build("gpt", 16, 1, vocab_size=20, context=8))


def test_an_elr_run_trains_at_lr_elr_times_rho_squared_and_stays_on_the_sphere():
    r = execute(_values(norm="post", optimizer="sgd", momentum=0.0, constraint="sphere", elr=0.02))
    rho = r.row["sphere_radius"]
    assert math.isclose(r.row["lr_applied"], 0.02 * rho ** 2, rel_tol=1e-6)
    joint = r.diagnostics[r.diagnostics["atom"] == -1]
    assert (joint["weight_norm"] / rho - 1).abs().max() < 1e-6
    assert ((joint["elr"] / 0.02) - 1).abs().max() < 1e-5     # lr/ρ² at every logged step
    assert r.row["chance_loss"] == pytest.approx(math.log(10))


def test_weight_conditioning_equilibrates_rows_and_lowers_the_condition_number():
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        lin = Linear(24, 48)
        # ill-conditioned by badly scaled rows: row norms spread over 4 decades
        w = torch.randn(24, 48, generator=g) * torch.logspace(-2, 2, 24)[torch.randperm(24, generator=g)].unsqueeze(1)
        with torch.no_grad():
            lin.weight.copy_(w)
        kappa = lambda m: float(torch.linalg.svdvals(m.double())[0] / torch.linalg.svdvals(m.double())[-1])
        lin.condition = True
        wc = lin.effective_weight().detach()
        assert torch.allclose(wc.norm(dim=1), torch.ones(24), atol=1e-6)        # D W has unit rows
        assert kappa(wc) < kappa(w) / 100
        # the layer computes scale · (D W) x with D = diag(1/‖W_i‖), as the paper defines it
        x = torch.randn(5, 48, generator=g)
        expected = (x @ (w / w.norm(dim=1, keepdim=True)).T) * math.sqrt(24 / 48)
        assert torch.allclose(lin(x), expected, atol=1e-5)
    conv = Conv2D(6, 4, 3)
    with torch.no_grad():
        conv.weight.mul_(torch.logspace(-2, 2, 6).reshape(6, 1, 1, 1))
    conv.condition = True
    assert torch.allclose(conv.effective_weight().flatten(1).norm(dim=1), torch.ones(6), atol=1e-6)


def test_conditioning_is_a_run_key_and_diagnostics_record_exact_condition_numbers():
    r = execute(_values(condition=True, log_condition=True, steps=10))
    d = r.diagnostics[r.diagnostics["atom"] >= 0]
    model = build("mlp", 32, 2, condition=True, **MLP)
    assert all(a.condition for a in model.atoms())
    assert d["condition"].notna().all() and (d["condition"] >= 1).all()
    off = execute(_values(steps=10)).diagnostics
    assert off["condition"].isna().all()


@pytest.mark.parametrize("update", ["plain", "normalize"])
def test_diagnostics_leave_every_loss_unchanged(update):
    on = execute(_values(update=update, diagnostics=True, lr=0.05 if update == "normalize" else 1e-3))
    off = execute(_values(update=update, diagnostics=False, lr=0.05 if update == "normalize" else 1e-3))
    assert on.curves["train_loss"].tolist() == off.curves["train_loss"].tolist()
    assert on.row["final_test_loss"] == off.row["final_test_loss"]
    assert off.diagnostics is None and len(on.diagnostics) == 6 * 7   # 6 logged steps × (6 atoms + the SI group)


def test_diagnostics_norms_match_exact_math():
    torch.manual_seed(0)
    model = build("mlp", 32, 1, **MLP)
    opt = make_optimizer(model, "adam", lr=1e-2, schedule="constant")
    diag = Diagnostics(model)
    x, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
    for step in range(1, 31):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        before = [a.weight.detach().clone() for a in model.atoms()]
        diag.before_step()
        opt.step()
        diag.after_step("r", step, 1e-2, opt.lr_mults)
    rows = diag.table().query("step == 30")
    for k, atom in enumerate(model.atoms()):
        row = rows[rows["atom"] == k].iloc[0]
        w1, w0 = atom.weight.detach().double(), before[k].double()
        assert row["weight_norm"] == pytest.approx(float(torch.linalg.matrix_norm(w1, 2)), rel=1e-3)
        assert row["update_norm"] == pytest.approx(float(torch.linalg.matrix_norm(w1 - w0, 2)), rel=0.05)
        cos = float((w0 * w1).sum() / (w0.norm() * w1.norm()))
        assert row["angle"] == pytest.approx(math.acos(min(1.0, cos)), rel=1e-3, abs=1e-7)


def test_module_norm_estimate_is_read_only():
    torch.manual_seed(0)
    model = build("mlp", 32, 1, **MLP)
    ups = [torch.randn_like(a.weight) for a in model.atoms()]
    model.normalize(ups, 0.1)      # warms the tracking blocks normalize relies on
    states = [a.tracking_state() for a in model.atoms()]
    model.norm([torch.randn_like(a.weight) for a in model.atoms()], exact=False)
    assert all(a.tracking_state()[0] is s[0] and a.tracking_state()[1] == s[1]
               for a, s in zip(model.atoms(), states))


def test_the_store_writes_merges_and_retires_diagnostics(tmp_path):
    r = execute(_values(steps=10))
    store = ResultStore(tmp_path)
    store.write(r.row, r.curves, r.diagnostics)
    assert (tmp_path / "diagnostics" / f"{r.run_id}.parquet").exists()
    assert len(store.load_diagnostics()) == len(r.diagnostics)
    store.consolidate()
    assert len(ResultStore(tmp_path).load_diagnostics()) == len(r.diagnostics)
    moved = store.retire_stale({"code_fingerprint": "other"})
    assert moved >= 1 and (tmp_path / "stale" / "diagnostics" / f"{r.run_id}.parquet").exists()
    assert ResultStore(tmp_path).load_diagnostics().empty


def test_dynamics_keys_are_checked_together():
    bad = spec.check_combination(_values(elr=0.1))
    assert "constraint" in bad
    assert "plain" in spec.check_combination(_values(constraint="sphere", update="normalize"))
    assert spec.check_combination(_values(constraint="sphere", elr=0.1, optimizer="sgd")) is None
