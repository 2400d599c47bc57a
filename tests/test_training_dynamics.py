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
    # equal rows, at the gain that keeps an orthogonal init's scale (Tracked.condition_gain)
    assert torch.allclose(conv.effective_weight().flatten(1).norm(dim=1), torch.full((6,), conv.condition_gain()),
                          atol=1e-6)


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


# ----------------------------------------------------------------------------- regimes from trends
# Synthetic trajectories with noise, one kind each, at known ELRs (docs/analysis.md §8).

import numpy as np
import pandas as pd
from scipy import stats

from lrtransfer.analysis import dynamics
from lrtransfer.analysis.dynamics import RegimeOptions
from lrtransfer.errors import UserError
from lrtransfer.report import dynamics as dynamics_report

CHANCE = math.log(10)
STEPS = np.arange(10, 2010, 10)      # 200 logged points; the default window is the last 100


def _ar1(rng, n, rho=0.6):
    """Unit-variance AR(1) noise: neighbouring logged points are correlated, as real ones are."""
    e = rng.standard_normal(n)
    out = np.empty(n)
    out[0] = e[0]
    for i in range(1, n):
        out[i] = rho * out[i - 1] + math.sqrt(1 - rho ** 2) * e[i]
    return out


def _trajectory(kind, rng):
    """(train loss, effective gradient norm or None) at STEPS for one kind of run."""
    n, noise = len(STEPS), _ar1(rng, len(STEPS))
    flat_grad = 3.0 * (1 + 0.05 * _ar1(rng, n))
    if kind == "converge":        # a noisy power law, falling
        return 2.0 * (STEPS / 10.0) ** -0.5 * np.exp(0.1 * noise), 5.0 * (STEPS / 10.0) ** -0.5
    if kind == "shallow":         # falling at ln–ln slope −0.05 only: the old −0.1 threshold called it a plateau
        return 1.2 * (STEPS / 10.0) ** -0.05 * np.exp(0.005 * noise), flat_grad
    if kind == "chaotic":         # stationary well below chance, the weights moving at a steady rate
        return 1.0 + 0.03 * noise, flat_grad
    if kind == "near_chance":     # stationary at 0.95 ln C: learned a little (the old rule: diverge)
        return 0.95 * CHANCE + 0.01 * noise, flat_grad
    if kind == "blip":            # stationary with a short upward blip mid-window
        loss = 1.0 + 0.03 * noise
        loss[140:144] += 0.5
        return loss, flat_grad
    if kind == "chance":          # stationary above chance (a frozen head of norm 10 puts random logits there)
        return 2.0 * CHANCE + 0.2 * noise, 20.0 * (1 + 0.05 * _ar1(rng, n))
    if kind == "rising":          # a slow climb below chance
        return 1.0 + 0.0004 * STEPS + 0.02 * noise, flat_grad
    if kind == "grad_drift":      # a flat loss while the effective gradient norm still climbs
        return 1.0 + 0.03 * noise, 3.0 + 0.002 * STEPS + 0.05 * _ar1(rng, n)
    if kind == "spiky_converge":  # falling toward 0 with one loss spike late in the window (seen at 2^-12)
        loss = 2.0 * (STEPS / 10.0) ** -0.8 * np.exp(0.1 * noise)
        loss[-25:-20] += 0.3
        flat_grad[-25:-20] *= 5     # the weights jolt with the loss
        return loss, flat_grad
    if kind == "at_rest":         # a plateau with the weights not moving: a minimum
        return 0.3 + 0.01 * noise, np.zeros(n)
    raise ValueError(kind)


def _tables(spec, seed=0, diagnostics=True, steps=STEPS):
    """runs, curves, diagnostics for ``spec``: {(log2 elr, seed): kind}."""
    rng = np.random.default_rng(seed)
    runs, curves, diags = [], [], []
    for (k, s), kind in spec.items():
        rid = f"r{k}-{s}"
        loss, grad = _trajectory(kind, rng)
        loss, grad = loss[:len(steps)], grad[:len(steps)]
        runs.append({"run_id": rid, "series": "sphere", "seed": s, "status": "done", "lr": 4 * 2.0 ** k,
                     "elr": 2.0 ** k, "constraint": "sphere", "lr_applied": 4 * 2.0 ** k, "sphere_radius": 2.0,
                     "chance_loss": CHANCE, "final_train_loss": float(loss[-1])})
        curves += [{"run_id": rid, "step": int(t), "train_loss": float(v)} for t, v in zip(steps, loss)]
        diags += [{"run_id": rid, "step": int(t), "atom": -1, "angle": 2.0 ** k * float(g),
                   "eff_grad_norm": float(g)} for t, g in zip(steps, grad)]
    return pd.DataFrame(runs), pd.DataFrame(curves), pd.DataFrame(diags) if diagnostics else None


def _labels(spec, **kw):
    runs, curves, diags = _tables(spec, **kw)
    table = dynamics.regimes(runs, curves, diags)
    return dict(zip(table["run_id"], table["regime"])), table.set_index("run_id")


@pytest.mark.parametrize("seed", range(5))
def test_each_noisy_trajectory_kind_gets_its_regime(seed):
    spec = {(-12, 0): "converge", (-10, 0): "shallow", (-6, 0): "chaotic", (-5, 0): "blip", (-4, 0): "near_chance",
            (-2, 0): "chance", (-8, 0): "rising", (-7, 0): "grad_drift", (-11, 0): "spiky_converge"}
    labels, t = _labels(spec, seed=seed)
    assert labels == {"r-12-0": "converge", "r-11-0": "converge", "r-10-0": "converge", "r-6-0": "chaotic", "r-5-0": "chaotic",
                      "r-4-0": "chaotic", "r-2-0": "diverge", "r-8-0": "unsettled", "r-7-0": "unsettled"}
    assert t.loc["r-12-0", "late_slope"] == pytest.approx(-0.5, abs=0.1)
    assert t.loc["r-2-0", "below_chance_p"] > 0.5 and t.loc["r-4-0", "below_chance_p"] < 1e-3
    assert t.loc["r-6-0", "late_grad"] == pytest.approx(3.0, rel=0.05)
    assert (t["n_points"] == 200).all() and (t["n_blocks"] == 10).all()


def test_chance_is_diverge_only_above_the_seeds_learned_runs():
    # seed 0: a run at chance below its chaotic run has not started to learn: unsettled
    # seed 1: no converge or chaotic run at all: its chance runs cannot be placed: unsettled
    spec = {(-14, 0): "chance", (-6, 0): "chaotic", (-2, 0): "chance", (-2, 1): "chance", (0, 1): "chance"}
    labels, _ = _labels(spec)
    assert labels == {"r-14-0": "unsettled", "r-6-0": "chaotic", "r-2-0": "diverge", "r-2-1": "unsettled",
                      "r0-1": "unsettled"}


def test_a_flat_window_below_the_seeds_converged_level_is_converge():
    # the spike hides the fall over the window; the run sits below the other converging run's loss
    labels, t = _labels({(-12, 0): "converge", (-11, 0): "spiky_converge", (-6, 0): "chaotic"}, seed=0)
    assert t.loc["r-11-0", "slope_p"] > 0.01 and t.loc["r-11-0", "late_loss"] < t.loc["r-12-0", "late_loss"]
    assert labels == {"r-12-0": "converge", "r-11-0": "converge", "r-6-0": "chaotic"}
    # alone in its seed there is no converged level to compare with: the flat window reads chaotic
    labels, _ = _labels({(-11, 0): "spiky_converge"}, seed=0)
    assert labels == {"r-11-0": "chaotic"}


def test_a_diverged_run_is_diverge_and_a_plateau_at_rest_converged():
    runs, curves, diags = _tables({(-6, 0): "chaotic", (-9, 0): "at_rest", (3, 0): "chaotic"})
    runs.loc[runs["run_id"] == "r3-0", ["status", "final_train_loss"]] = ["diverged", math.nan]
    t = dynamics.regimes(runs, curves[curves["run_id"] != "r3-0"], diags)
    assert dict(zip(t["run_id"], t["regime"])) == {"r-6-0": "chaotic", "r-9-0": "converge", "r3-0": "diverge"}
    # without diagnostics a flat loss below chance is read on the loss alone
    runs, curves, _ = _tables({(-9, 0): "at_rest"}, diagnostics=False)
    assert dynamics.regimes(runs, curves)["regime"].tolist() == ["chaotic"]


def test_too_short_a_curve_is_unsettled_and_the_window_and_blocks_count():
    labels, t = _labels({(-12, 0): "converge"}, steps=STEPS[:4])   # 2 late points: no trend
    assert labels == {"r-12-0": "unsettled"} and t.loc["r-12-0", "n_blocks"] == 2
    runs, curves, diags = _tables({(-12, 0): "converge"})
    t = dynamics.regimes(runs, curves, diags, RegimeOptions(window=0.1, blocks=5))
    assert t["n_blocks"].tolist() == [5]
    assert t["late_loss"].iloc[0] == pytest.approx(curves["train_loss"].iloc[-20:].mean())


def test_the_tests_p_values_match_scipy():
    rng = np.random.default_rng(3)
    x, y = np.log(np.arange(1, 13.0)), 1.0 - 0.05 * np.log(np.arange(1, 13.0)) + 0.02 * rng.standard_normal(12)
    slope, p = dynamics._trend(x, y)
    ref = stats.linregress(x, y)
    assert slope == pytest.approx(ref.slope) and p == pytest.approx(ref.pvalue)
    assert dynamics._below(y, 1.0) == pytest.approx(stats.ttest_1samp(y, 1.0, alternative="less").pvalue)
    # block means: the mean of each run of consecutive points
    bx, by = dynamics._block_means(np.arange(10.0), np.arange(10.0) ** 2, 4)
    assert bx.tolist() == [1.0, 4.0, 6.5, 8.5] and by.tolist() == pytest.approx([5 / 3, 50 / 3, 42.5, 72.5])
    # noise-free: a slope is certain, a constant is not below itself
    assert dynamics._trend(x, 2 - 0.5 * x) == (pytest.approx(-0.5), 0.0)
    assert dynamics._trend(x, np.full(12, CHANCE)) == (0.0, 1.0)
    assert dynamics._below(np.full(12, CHANCE), CHANCE) == 1.0


def test_boundaries_skip_and_count_unsettled_runs():
    spec = {}
    for s in (0, 1):
        spec.update({(-12, s): "converge", (-10, s): "converge", (-6, s): "chaotic", (-4, s): "chaotic",
                     (-2, s): "chance", (0, s): "chance"})
    spec[(-8, 1)] = "rising"     # between converge and chaotic in seed 1
    runs, curves, diags = _tables(spec)
    table = dynamics.regimes(runs, curves, diags)
    per_seed = dynamics.seed_boundaries(runs, table).set_index("seed")
    assert per_seed["to_chaotic"].tolist() == pytest.approx([2 ** -8, 2 ** -8])
    assert per_seed["to_diverge"].tolist() == pytest.approx([2 ** -3, 2 ** -3])
    assert per_seed["n_unsettled"].tolist() == [0, 1] and per_seed.loc[1, "unsettled"] == (2 ** -8,)
    assert per_seed["monotone"].all() and per_seed["n_points"].tolist() == [6, 6]
    b = dynamics.regime_boundaries(runs, table).iloc[0]
    assert b["n_unsettled"] == 1 and b["monotone"] and b["to_chaotic_log2"] == pytest.approx(-8.0)
    summary = dynamics_report.regime_summary(runs, curves, diags)
    assert summary["counts"] == {"converge": 4, "chaotic": 4, "diverge": 4, "unsettled": 1}
    text = dynamics_report.regime_report(summary)
    assert "4 diverge, 1 unsettled" in text and "seed 1: unsettled at elr=2^-8" in text


@pytest.mark.parametrize("kw, name", [({"window": 0}, "--regime-window 0"), ({"alpha": 0.5}, "--regime-alpha 0.5"),
                                      ({"alpha": 0}, "--regime-alpha 0"), ({"blocks": 3}, "--regime-blocks 3"),
                                      ({"blocks": 4.5}, "--regime-blocks 4.5")])
def test_bad_regime_options_name_the_option(kw, name):
    with pytest.raises(UserError, match=name):
        RegimeOptions(**kw)


def test_cli_regime_options_are_checked(tmp_path):
    from conftest import invoke
    r = invoke("report", tmp_path, "--regime-alpha", "0.7")
    assert r.exit_code == 2 and "--regime-alpha 0.7" in " ".join(r.output.split())
