"""Training on the sphere as Kodryan et al. (2022) run it: the frozen head at a fixed Frobenius
norm and direction shared by every run, and the effective gradient norm the regimes read."""
import math

import pytest
import torch

from lrtransfer.errors import UserError
from lrtransfer.models import build
from lrtransfer.optim import make_optimizer
from lrtransfer.optim.constraint import fix_head
from lrtransfer.run import spec
from lrtransfer.run.batched import execute_bundle
from lrtransfer.run.diagnostics import Diagnostics
from lrtransfer.run.train import Training, execute

MLP = dict(input_dim=40, output_dim=10)


def _values(**kw):
    values = {k.name: k.default for k in spec.KEYS}
    values.update({"data.dataset": "mnist1d", "data.samples": 2000, "series": "s", "steps": 20, "width": 32,
                   "depth": 2, "log_every": 5, "schedule": "constant", "norm": "post", "optimizer": "sgd",
                   "momentum": 0.0, "constraint": "sphere", "elr": 0.01})
    values.update(kw)
    return values


def _head(model):
    atom = model.atoms()[-1]
    return atom.scale * atom.weight.detach().double()


def test_the_head_is_set_to_the_frobenius_norm_and_shared_by_every_seed():
    assert spec.BY_NAME["head_norm"].default == 10.0      # the authors' init_scale
    heads = [_head(Training(_values(seed=s), torch.device("cpu")).model) for s in (0, 1)]
    assert float(heads[0].norm()) == pytest.approx(10.0, rel=1e-6)
    assert torch.equal(heads[0], heads[1])                 # same direction whatever the seed
    own = [_head(Training(_values(seed=s, head_norm=0.0), torch.device("cpu")).model) for s in (0, 1)]
    assert not torch.equal(own[0], own[1])                 # 0: each seed's own modular head
    assert float(torch.linalg.matrix_norm(own[0], 2)) == pytest.approx(math.sqrt(10 / 32), rel=1e-5)
    # the global random stream is untouched: the trained weights start where head_norm = 0 starts
    a = Training(_values(seed=0), torch.device("cpu")).model.atoms()
    b = Training(_values(seed=0, head_norm=0.0), torch.device("cpu")).model.atoms()
    assert all(torch.equal(x.weight, y.weight) for x, y in zip(a[:-1], b[:-1]))


def test_the_head_lifts_the_logit_bound_and_stays_frozen():
    torch.manual_seed(0)
    model = build("mlp", 32, 2, norm="post", **MLP)
    x = torch.randn(256, 40)
    logit_norm = lambda: float(model(x).detach().norm(dim=1).max())
    # the modular head: spectral norm √(10/32) on features of norm √32 bounds ‖logits‖ by √10
    assert logit_norm() <= math.sqrt(10) * (1 + 1e-5)
    assert fix_head(model, 10.0) == [len(model.atoms()) - 1]
    assert logit_norm() > 2 * math.sqrt(10)
    head = model.atoms()[-1].weight.detach().clone()
    opt = make_optimizer(model, "sgd", lr=0.5, momentum=0.0, schedule="constant", constraint="sphere")
    y = torch.randint(0, 10, (256,))
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert torch.equal(model.atoms()[-1].weight, head)


def test_a_bad_head_norm_is_a_clear_error():
    with pytest.raises(ValueError, match="head_norm"):
        fix_head(build("mlp", 16, 1, norm="post", **MLP), -1.0)
    with pytest.raises(UserError, match="head_norm"):
        Training(_values(head_norm=math.inf), torch.device("cpu"))
    assert spec.BY_NAME["head_norm"].minimum == 0


def test_a_run_records_its_head_norm_and_only_sphere_runs_change_the_head():
    r = execute(_values(steps=5, head_norm=7.0))
    assert r.row["head_norm"] == 7.0
    plain = _values(constraint="none", elr=0.0, lr=0.01, head_norm=7.0)
    model = Training(plain, torch.device("cpu")).model
    assert float(torch.linalg.matrix_norm(_head(model), 2)) == pytest.approx(math.sqrt(10 / 32), rel=1e-5)


def test_effective_gradient_norm_is_rho_times_the_gradient_and_sets_the_angle():
    """On the sphere the SI gradient is orthogonal to w and the projection only rescales, so
    the angle a step turns is exactly atan(lr‖g‖/ρ) = atan(elr · ρ‖g‖)."""
    torch.manual_seed(0)
    model = build("mlp", 32, 2, norm="post", **MLP)
    fix_head(model, 10.0)
    lr = 0.3
    opt = make_optimizer(model, "sgd", lr=lr, momentum=0.0, schedule="constant", constraint="sphere")
    diag = Diagnostics(model)
    x, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
    si = [a for a, f in zip(model.atoms(), model.scale_invariant()) if f]
    for step in (1, 2, 3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        rho = math.sqrt(sum(float(a.weight.detach().double().pow(2).sum()) for a in si))
        g = math.sqrt(sum(float(a.weight.grad.double().pow(2).sum()) for a in si))
        per_atom = [float(a.weight.double().norm() * a.weight.grad.double().norm()) for a in model.atoms()]
        diag.before_step()
        opt.step()
        diag.after_step("r", step, lr, opt.lr_mults)
        rows = diag.table().query(f"step == {step}")
        joint = rows[rows["atom"] == -1].iloc[0]
        assert joint["eff_grad_norm"] == pytest.approx(rho * g, rel=1e-5)
        assert math.tan(joint["angle"]) == pytest.approx(lr / rho ** 2 * joint["eff_grad_norm"], rel=1e-3)
        atoms = rows[rows["atom"] >= 0].sort_values("atom")
        assert atoms["eff_grad_norm"].iloc[:-1].tolist() == pytest.approx(per_atom[:-1], rel=1e-5)
        assert math.isnan(atoms["eff_grad_norm"].iloc[-1])      # the head is not scale-invariant


def test_bundled_sphere_runs_record_the_same_effective_gradient_norm():
    cells = [_values(seed=s, elr=e) for s, e in ((0, 0.01), (1, 0.02))]
    bundled = execute_bundle(cells)
    for cell, result in zip(cells, bundled):
        solo = execute(cell).diagnostics
        assert result.row["bundle_size"] == 2
        joint, ref = (d[d["atom"] == -1]["eff_grad_norm"].to_numpy() for d in (result.diagnostics, solo))
        assert (joint > 0).all() and joint == pytest.approx(ref, rel=1e-4)
