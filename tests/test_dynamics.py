"""Training dynamics: regimes on the sphere, their boundaries along the ELR, the lr·wd invariance
statistic, their figures and the CLI (plot --kind, report sections), on synthetic tables with
known answers."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_DATA_MODEL, invoke
from lrtransfer.analysis import dynamics
from lrtransfer.analysis.dynamics import RegimeOptions
from lrtransfer.report import dynamics as dynamics_report
from lrtransfer.report.render import to_json
from lrtransfer.report.results import results_report
from lrtransfer import plots
from lrtransfer.plots.style import DATA_FRACTION, strip_y
from lrtransfer.errors import UserError
from lrtransfer.results.store import write_table

CHANCE = math.log(10)
STEPS = np.arange(10, 210, 10)   # 20 logged points; the default window is the last 5


def trajectory(kind: str, level: float = 0.5) -> np.ndarray:
    """Train loss at STEPS: a falling power law, a flat noisy plateau, or chance."""
    if kind == "converge":
        return 2.0 * (STEPS / 10.0) ** -0.5
    if kind == "chaotic":
        return level + 0.002 * np.sin(STEPS)   # flat, noisy, well above zero
    return np.full(len(STEPS), CHANCE)


def tables(spec, series="sphere", angle=0.05, status=None):
    """runs, curves, diagnostics for ``spec``: {(log2 elr, seed): kind}."""
    runs, curves, diags = [], [], []
    for (k, seed), kind in spec.items():
        rid = f"{series}-{k}-{seed}"
        loss = trajectory(kind, level=1.0 + 0.05 * k)
        st = (status or {}).get((k, seed), "done")
        runs.append({"run_id": rid, "series": series, "width": 64, "depth": 2, "lr": 2.0 ** k * 4, "seed": seed,
                     "status": st, "final_train_loss": float(loss[-1]) if st == "done" else math.nan,
                     "steps": 200, "weight_decay": 0.0, "constraint": "sphere", "elr": 2.0 ** k,
                     "lr_applied": 2.0 ** k * 4, "sphere_radius": 2.0, "chance_loss": CHANCE})
        for step, value in zip(STEPS, loss):
            curves.append({"run_id": rid, "step": int(step), "train_loss": float(value), "test_loss": math.nan,
                           "lr": 2.0 ** k * 4})
            a = 0.0 if kind == "converge" else angle
            for atom, name in ((-1, "all scale-invariant"), (0, "0:Linear 64x64")):
                diags.append({"run_id": rid, "step": int(step), "atom": atom, "name": name,
                              "role": "scale_invariant" if atom == -1 else "hidden", "scale_invariant": True,
                              "weight_norm": 2.0, "update_norm": 2.0 * a, "relative_update": a, "angle": a,
                              "elr": 2.0 ** k, "condition": math.nan})
    return pd.DataFrame(runs), pd.DataFrame(curves), pd.DataFrame(diags)


def sweep_spec(switch=(-5, -4)):
    """ELR 2^-8 .. 2^0, seeds 0 and 1: converge below 2^switch[seed], diverge from 2^-1 up."""
    spec = {}
    for seed, first_chaotic in enumerate(switch):
        for k in range(-8, 1):
            spec[(k, seed)] = "converge" if k < first_chaotic else "diverge" if k >= -1 else "chaotic"
    return spec


# ----------------------------------------------------------------------------- regimes

def test_each_known_trajectory_gets_its_regime():
    spec = {(-7, 0): "converge", (-3, 0): "chaotic", (0, 0): "diverge", (-2, 0): "chaotic"}
    runs, curves, diags = tables(spec, status={(-2, 0): "diverged"})
    t = dynamics.regimes(runs, curves, diags, RegimeOptions(window=0.25)).set_index("run_id")
    assert t.loc["sphere--7-0", "regime"] == "converge"
    assert t.loc["sphere--3-0", "regime"] == "chaotic"
    assert t.loc["sphere-0-0", "regime"] == "diverge"
    assert t.loc["sphere--2-0", "regime"] == "diverge"  # the diverged status alone decides
    # the evidence: the last 5 of 20 points
    conv = 2.0 * (STEPS[-5:] / 10.0) ** -0.5
    assert t.loc["sphere--7-0", "late_loss"] == pytest.approx(conv.mean())
    assert t.loc["sphere--7-0", "late_slope"] == pytest.approx(-0.5)
    assert t.loc["sphere--3-0", "late_angle"] == pytest.approx(0.05)
    assert abs(t.loc["sphere--3-0", "late_slope"]) < 0.1
    assert t.loc["sphere-0-0", "late_loss"] == pytest.approx(CHANCE)
    assert (t["n_points"] == 20).all() and (t["chance_loss"] == CHANCE).all()


def test_plateau_at_rest_converges_and_unknown_angle_is_chaotic():
    runs, curves, diags = tables({(-3, 0): "chaotic"}, angle=0.0)
    assert dynamics.regimes(runs, curves, diags)["regime"].tolist() == ["converge"]  # at a minimum
    t = dynamics.regimes(runs, curves)  # no diagnostics: the plateau alone
    assert t["regime"].tolist() == ["chaotic"] and math.isnan(t["late_angle"].iloc[0])


def test_the_window_moves_the_evidence():
    runs, curves, diags = tables({(-7, 0): "converge", (-3, 0): "chaotic"})
    # the whole curve as the window: slope from all 20 points is still -0.5
    t = dynamics.regimes(runs, curves, diags, RegimeOptions(window=1.0))
    assert t["late_slope"].iloc[0] == pytest.approx(-0.5)
    assert t["late_loss"].iloc[0] == pytest.approx(trajectory("converge").mean())
    assert t["regime"].tolist() == ["converge", "chaotic"] and t["n_blocks"].tolist() == [10, 10]


def test_old_results_without_the_new_columns():
    runs, curves, _ = tables({(0, 0): "diverge", (-3, 0): "chaotic"})
    old = runs.drop(columns=["constraint", "elr", "lr_applied", "sphere_radius", "chance_loss"])
    t = dynamics.regimes(old, curves)
    # no chance loss recorded: a loss at ln 10 is just a plateau
    assert t["regime"].tolist() == ["chaotic", "chaotic"] and t["chance_loss"].isna().all()
    assert not dynamics.has_regimes(old) and dynamics.has_regimes(runs)


@pytest.mark.parametrize("option, value, name", [("window", 0, "--regime-window 0"),
                                                 ("window", 1.5, "--regime-window 1.5"),
                                                 ("alpha", 0.5, "--regime-alpha 0.5"),
                                                 ("blocks", 3, "--regime-blocks 3")])
def test_bad_thresholds_name_the_option(option, value, name):
    with pytest.raises(UserError, match=name):
        RegimeOptions(**{option: value})


# ----------------------------------------------------------------------------- boundaries

def test_boundaries_are_geometric_midpoints_averaged_in_octaves():
    runs, curves, diags = tables(sweep_spec())
    reg = dynamics.regimes(runs, curves, diags)
    per_seed = dynamics.seed_boundaries(runs, reg).set_index("seed")
    # seed 0: converge up to 2^-6, chaotic from 2^-5; seed 1: converge to 2^-5, chaotic from 2^-4
    assert per_seed.loc[0, "to_chaotic"] == pytest.approx(2 ** -5.5)
    assert per_seed.loc[1, "to_chaotic"] == pytest.approx(2 ** -4.5)
    assert per_seed["to_diverge"].tolist() == pytest.approx([2 ** -1.5, 2 ** -1.5])
    assert per_seed["monotone"].all() and (per_seed["absent"] == ()).all() and (per_seed["steps_back"] == ()).all()
    b = dynamics.regime_boundaries(runs, reg).iloc[0]
    assert b["to_chaotic_log2"] == pytest.approx(-5.0) and b["to_chaotic"] == pytest.approx(2 ** -5)
    assert (b["to_chaotic_log2_min"], b["to_chaotic_log2_max"]) == pytest.approx((-5.5, -4.5))
    assert b["to_chaotic_log2_std"] == pytest.approx(math.sqrt(0.5))
    assert b["to_chaotic_n"] == 2 and b["to_diverge_n"] == 2
    assert b["to_diverge_log2_std"] == pytest.approx(0.0) and b["monotone"] and b["n_seeds"] == 2
    # on the LR axis (lr = 4 elr) everything moves up two octaves
    b = dynamics.regime_boundaries(runs, reg, x="lr").iloc[0]
    assert b["to_chaotic_log2"] == pytest.approx(-3.0) and b["to_diverge_log2"] == pytest.approx(0.5)


def test_boundaries_detect_out_of_order_and_missing_regimes():
    spec = sweep_spec()
    spec[(-2, 0)] = "converge"   # a converging run above chaotic ones in seed 0
    for k in range(-1, 1):       # seed 1 never diverges
        spec[(k, 1)] = "chaotic"
    runs, curves, diags = tables(spec)
    reg = dynamics.regimes(runs, curves, diags)
    per_seed = dynamics.seed_boundaries(runs, reg).set_index("seed")
    assert not per_seed.loc[0, "monotone"] and per_seed.loc[1, "monotone"]
    assert per_seed.loc[0, "steps_back"] == (("converge", 0.25, "chaotic", 0.125),)
    note = {r["seed"]: r["note"] for r in dynamics_report.regime_summary(runs, curves, diags)["seed_boundaries"]}
    assert "out of order: converge at elr=2^-2 above chaotic at 2^-3" in note[0]
    # seed 0's lower regime reaches 2^-2, its upper starts at 2^-5: the midpoint says so
    assert per_seed.loc[0, "to_chaotic"] == pytest.approx(2 ** -3.5)
    assert math.isnan(per_seed.loc[1, "to_diverge"]) and note[1] == "no diverge runs"
    assert per_seed.loc[1, "absent"] == ("diverge",)
    b = dynamics.regime_boundaries(runs, reg).iloc[0]
    assert b["n_out_of_order"] == 1 and not b["monotone"]
    # seed 0: chaotic up to 2^-3 (the converging 2^-2 is not chaotic), diverged from 2^-1
    assert b["to_diverge_n"] == 1 and b["to_diverge_log2"] == pytest.approx(-2.0)
    assert math.isnan(b["to_diverge_log2_std"])
    assert "seed 1: no diverge runs" in dynamics_report.regime_summary(runs, curves, diags)["boundaries"][0]["note"]


def test_boundaries_need_a_positive_x():
    runs, curves, diags = tables({(0, 0): "diverge"})
    reg = dynamics.regimes(runs, curves, diags)
    with pytest.raises(UserError, match="no run has a positive elr"):
        dynamics.regime_boundaries(runs.assign(elr=0.0, constraint="none"), reg)
    with pytest.raises(UserError, match="x 'width'"):
        dynamics.regime_boundaries(runs, reg, x="width")
    # sphere runs that set lr: the ELR is lr / radius²
    derived = runs.assign(elr=0.0)
    assert dynamics.effective_lr(derived).tolist() == pytest.approx([4.0 / 4.0])


def test_regime_report_numbers():
    runs, curves, diags = tables(sweep_spec())
    summary = dynamics_report.regime_summary(runs, curves, diags)
    assert summary["x"] == "elr" and summary["counts"] == {"converge": 7, "chaotic": 7, "diverge": 4, "unsettled": 0}
    json.loads(to_json(summary))  # strict JSON
    text = dynamics_report.regime_report(summary)
    first = text.splitlines()[4]
    assert first.startswith("- sphere: converge→chaotic at elr ≈ 2^-5 (log2 -5.00 ± 0.71 octaves, 2 seeds)")
    assert "chaotic→diverge at elr ≈ 2^-1.50" in first and "regimes in order" in first
    assert "| sphere | 2 | 2^-5 | [-5.50, -4.50] | 2^-1.50 | [-1.50, -1.50] | yes |" in text
    assert "| sphere | 2^-5 | converge 1, chaotic 1 |" in text


# ----------------------------------------------------------------------------- lr·wd

def lrwd_tables(depends_on="product", seeds=(0, 1, 2), diverge_top=False, series="adamw", early_on="lr"):
    """A 4 x 4 octave grid of (lr, wd); late loss a function of lr·wd (or of lr alone, wd alone,
    lr·wd², or a constant: "noise"), early loss a function of lr (or of lr·wd: ``early_on``); a
    little per-seed noise."""
    runs, curves = [], []
    rng = np.random.default_rng(1)
    for a in range(-8, -4):
        for b in range(-6, -2):
            for seed in seeds:
                rid = f"{series}{a}{b}{seed}"
                key = {"product": a + b, "lr": a, "wd": b, "lr_wd2": a + 2 * b, "noise": -10}[depends_on]
                late = 1.0 + 0.1 * (key + 10) ** 2 / 10 + 0.002 * rng.standard_normal()
                early = 2.0 - 0.1 * (a if early_on == "lr" else a + b) + 0.002 * rng.standard_normal()
                status = "diverged" if diverge_top and a == -5 and b == -3 else "done"
                runs.append({"run_id": rid, "series": series, "width": 64, "depth": 2, "lr": 2.0 ** a,
                             "weight_decay": 2.0 ** b, "seed": seed, "status": status, "steps": 100,
                             "final_train_loss": late if status == "done" else math.nan,
                             "final_test_loss": late + 0.1 if status == "done" else math.nan})
                for step in range(10, 110, 10):
                    # steps 10 (<= 0.1 x 100) is the early window; later points fall to the late loss
                    value = early if step <= 10 else late + (early - late) * 10 / step
                    curves.append({"run_id": rid, "step": step, "train_loss": value, "test_loss": math.nan,
                                   "lr": 2.0 ** a})
    return pd.DataFrame(runs), pd.DataFrame(curves)


def test_lrwd_invariance_holds_when_late_loss_follows_the_product():
    runs, curves = lrwd_tables("product")
    res = dynamics_report.lrwd_invariance(runs, curves, n_boot=300)
    g = res["groups"][0]
    assert g["n_cells"] == 16 and g["n_seeds"] == 3 and g["n_lr"] == 4 and g["n_wd"] == 4
    lo, hi = g["late_c_ci"]
    assert g["late_c"] == pytest.approx(1.0, abs=0.02) and 0.95 < lo <= 1 <= hi < 1.05
    # the cubic in u = log2 lr + log2 wd holds the quadratic surface: what is left is seed noise
    assert g["late_unexplained"] < 0.01 and g["late_lof_p"] >= 0.05 and g["late_signal_p"] < 0.05
    assert g["late_lof_df"] == 16 - 4 - 1 and g["late_pe_df"] == 48 - 16
    assert g["late_verdict"] == "holds" and not g["late_c_at_bound"]
    lo, hi = g["early_c_ci"]
    assert abs(g["early_c"]) < 0.02 and -0.05 < lo <= 0 <= hi < 0.05 and g["early_verdict"] == "holds"
    assert res["n_runs"] == 48 and res["n_diverged"] == 0 and res["degree"] == 3 and res["c_range"] == [-1, 3]
    json.loads(to_json(res))


@pytest.mark.parametrize("depends_on, c", [("lr", 0.0), ("lr_wd2", 2.0)])
def test_lrwd_invariance_fails_when_late_loss_follows_another_combination(depends_on, c):
    g = dynamics_report.lrwd_invariance(*lrwd_tables(depends_on), n_boot=300)["groups"][0]
    lo, hi = g["late_c_ci"]
    assert g["late_c"] == pytest.approx(c, abs=0.02) and c - 0.05 < lo <= c <= hi < c + 0.05
    assert not lo <= 1 <= hi and g["late_verdict"] == "fails"
    # the surface is a function of its own u: the fit leaves only noise, c alone decides
    assert g["late_lof_p"] >= 0.05 and g["late_signal_p"] < 0.05


def test_lrwd_invariance_fails_when_late_loss_follows_wd_alone():
    g = dynamics_report.lrwd_invariance(*lrwd_tables("wd"), n_boot=300)["groups"][0]
    lo, _ = g["late_c_ci"]
    # wd alone is c = ∞: the search stops at its bound, and even there the fit misses far beyond the noise
    assert g["late_c_at_bound"] and g["late_c"] == pytest.approx(3.0) and lo > 2.5
    assert g["late_lof_p"] < 1e-6 and g["late_unexplained"] > 0.05 and g["late_verdict"] == "fails"


def test_lrwd_invariance_of_pure_noise_is_inconclusive():
    g = dynamics_report.lrwd_invariance(*lrwd_tables("noise"), n_boot=300)["groups"][0]
    lo, hi = g["late_c_ci"]
    # a flat surface fixes no c: the CI spans both lr·wd and lr alone, the fit explains nothing beyond noise
    assert lo < 0 and hi > 1 and g["late_signal_p"] >= 0.05 and g["late_lof_p"] >= 0.05
    assert g["late_verdict"] == "inconclusive"


def test_lrwd_invariance_early_loss_fails_when_it_follows_the_product():
    g = dynamics_report.lrwd_invariance(*lrwd_tables("product", early_on="product"), n_boot=300)["groups"][0]
    lo, _ = g["early_c_ci"]
    assert g["early_c"] == pytest.approx(1.0, abs=0.02) and lo > 0.9 and g["early_verdict"] == "fails"
    assert g["late_verdict"] == "holds"


def test_lrwd_cells_early_loss_and_exclusions():
    runs, curves = lrwd_tables("product", diverge_top=True)
    cells = dynamics.lrwd_cells(runs, curves)
    assert len(cells) == 15  # the all-diverged cell is out
    c = cells[(cells["lr"] == 2.0 ** -8) & (cells["weight_decay"] == 2.0 ** -6)].iloc[0]
    assert c["early"] == pytest.approx(2.8, abs=0.005) and c["late"] == pytest.approx(1.0 + 0.1 * 16 / 10, abs=0.005)
    assert c["log2_product"] == -14 and c["n_seeds"] == 3
    res = dynamics_report.lrwd_invariance(runs, curves, n_boot=50)
    assert res["n_diverged"] == 3
    assert "excluded 3 diverged" in dynamics_report.lrwd_report(res)


def test_lrwd_invariance_refuses_a_grid_without_a_wd_axis():
    runs, curves = lrwd_tables("product")
    with pytest.raises(UserError, match="weight_decay does not vary"):
        dynamics_report.lrwd_invariance(runs.assign(weight_decay=0.01), curves)
    one_lr = runs[runs["lr"] == 2.0 ** -8]
    with pytest.raises(UserError, match="adamw: 1 lr value"):
        dynamics_report.lrwd_invariance(one_lr, curves)
    few = runs[(runs["lr"] <= 2.0 ** -7) & (runs["weight_decay"] <= 2.0 ** -5)]  # 2 x 2: 4 cells, a cubic needs 6
    with pytest.raises(UserError, match="4 \\(lr, wd\\) cells, need >= 2 and >= 6"):
        dynamics_report.lrwd_invariance(few, curves)
    with pytest.raises(UserError, match="--metric 'acc'"):
        dynamics_report.lrwd_invariance(runs, curves, metric="acc")


def test_lrwd_single_seed_is_inconclusive_and_report_reads():
    runs, curves = lrwd_tables("product", seeds=(0,))
    res = dynamics_report.lrwd_invariance(runs, curves, n_boot=50)
    g = res["groups"][0]
    # one seed: c is estimated, but neither its CI nor the noise the fit is judged against exist
    assert g["late_c"] == pytest.approx(1.0, abs=0.05) and g["late_c_ci"] == [None, None]
    assert g["late_lof_p"] is None and g["late_verdict"] == "inconclusive" and g["early_verdict"] == "inconclusive"
    text = dynamics_report.lrwd_report(res)
    assert text.startswith("## lr·wd invariance\n\n- adamw: late train loss follows lr·wd: **inconclusive** — "
                           "c = 0.98 (no CI)")
    assert "no lack-of-fit test" in text and "| adamw | 0.98 | — |" in text


# ----------------------------------------------------------------------------- figures

def labelled(ax, label):
    return [a for a in [*ax.get_lines(), *ax.collections] if a.get_label() == label]


def marked(ax, gid):
    return [a for a in [*ax.get_lines(), *ax.collections] if a.get_gid() == gid]


def test_regime_plot_points_colours_boundaries(tmp_path):
    runs, curves, diags = tables(sweep_spec())
    reg = dynamics.regimes(runs, curves, diags)
    fig = plots.regime_plot(runs, reg, out=tmp_path / "regimes.svg")
    assert (tmp_path / "regimes.svg").stat().st_size > 1000
    ax = fig.axes[0]
    assert ax.get_title() == "sphere" and ax.get_xscale() == "log"
    # 7 converge and 7 chaotic points; the 4 diverge runs have a finite final loss (ln 10)
    for regime, n in (("converge", 7), ("chaotic", 7), ("diverge", 4)):
        (points,) = labelled(ax, regime)
        assert len(points.get_offsets()) == n
        assert tuple(points.get_facecolor()[0][:3]) == pytest.approx(
            __import__("matplotlib").colors.to_rgb(plots.REGIME_COLORS[regime]))
    (mean,) = labelled(ax, "seed mean")
    assert len(mean.get_xdata()) == 9
    assert mean.get_ydata()[0] == pytest.approx(trajectory("converge")[-1])
    (chance,) = marked(ax, "chance")
    assert chance.get_ydata()[0] == pytest.approx(CHANCE)
    (to_chaotic,) = marked(ax, "to_chaotic")
    assert to_chaotic.get_xdata()[0] == pytest.approx(2 ** -5)
    (to_diverge,) = marked(ax, "to_diverge")
    assert to_diverge.get_xdata()[0] == pytest.approx(2 ** -1.5)
    assert len([p for p in ax.patches if p.get_gid() == "to_chaotic_spread"]) == 1
    assert not [p for p in ax.patches if p.get_gid() == "to_diverge_spread"]  # both seeds agree


def test_regime_plot_marks_diverged_runs_in_the_strip_above_the_data():
    runs, curves, diags = tables(sweep_spec(), status={(0, 0): "diverged", (0, 1): "diverged"})
    fig = plots.regime_plot(runs, dynamics.regimes(runs, curves, diags))
    ax = fig.axes[0]
    (cross,) = marked(ax, "diverged")
    assert len(cross.get_offsets()) == 2
    # axes-fraction height inside the strip beyond the data, below the top spine
    assert cross.get_offsets()[0][1] == pytest.approx(strip_y(0, 1, False))
    assert DATA_FRACTION < cross.get_offsets()[0][1] < 1


def test_lrwd_heatmap_cells_diverged_and_diagonals(tmp_path):
    runs, _ = lrwd_tables("product", diverge_top=True)
    fig = plots.lrwd_heatmap(runs, out=tmp_path / "lrwd.png")
    assert (tmp_path / "lrwd.png").read_bytes()[:4] == b"\x89PNG"
    ax = fig.axes[0]
    (mesh,) = marked(ax, "loss")
    grid = mesh.get_array()
    assert grid.shape == (4, 4) and int(grid.mask.sum()) == 1  # the all-diverged cell is blank
    # rows are wd 2^-6.., columns lr 2^-8..: cell (wd 2^-6, lr 2^-8) has loss 1 + 16 / 100
    assert grid[0, 0] == pytest.approx(1.16, abs=0.005)
    (cross,) = marked(ax, "diverged")
    assert list(cross.get_xdata()) == [-5] and list(cross.get_ydata()) == [-3]
    # products 2^-14 .. 2^-8: 7 diagonals, 5 of them with >= 2 cells
    assert len(marked(ax, "product")) == 5
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"lr·wd=2^{p}" for p in range(-13, -8))


def test_curves_by_lrwd_one_line_per_cell(tmp_path):
    runs, curves = lrwd_tables("product", diverge_top=True)
    fig = plots.curves_by_lrwd(runs, curves, out=tmp_path / "c.pdf")
    assert (tmp_path / "c.pdf").exists()
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(lines) == 16
    by_label = {line.get_label(): line for line in lines}
    y = by_label["lr=2^-8, wd=2^-6"].get_ydata()
    assert y[-1] == pytest.approx(1.16 + (2.8 - 1.16) / 10, abs=0.005)  # seed mean at step 100
    # same lr, same style; same product, same colour
    assert by_label["lr=2^-8, wd=2^-5"].get_linestyle() == by_label["lr=2^-8, wd=2^-6"].get_linestyle()
    assert by_label["lr=2^-7, wd=2^-6"].get_linestyle() != by_label["lr=2^-8, wd=2^-6"].get_linestyle()
    assert by_label["lr=2^-7, wd=2^-6"].get_color() == by_label["lr=2^-8, wd=2^-5"].get_color()
    assert len(marked(ax, "diverged")) == 1  # the diverged cell's line ends in a cross


def _diverging_curves(runs):
    rows = []
    for run in runs.itertuples():
        for step in (10, 20, 30):
            if run.status == "diverged" and step > 20:
                break
            rows.append({"run_id": run.run_id, "step": step, "train_loss": 2 - step / 100 + run.seed / 10,
                         "test_loss": math.nan, "lr": run.lr})
    return pd.DataFrame(rows)


def test_training_curves_by_scale_at_each_best_lr_with_crosses():
    from test_plots import runs as grid_runs
    r = grid_runs(seeds=(0, 1))
    fig = plots.training_curves(r, _diverging_curves(r), color_by="scale")
    panels = [ax for ax in fig.axes if ax.get_title() in ("adam", "normed")]
    for ax in panels:
        assert [line.get_label() for line in ax.get_lines()] == ["width=32", "width=128", "width=512"]
        assert ax.get_lines()[0].get_ydata() == pytest.approx([1.95, 1.85, 1.75])
    # at the best LRs nothing diverged; at lr = 1 the largest width did, after step 20
    assert not any(marked(ax, "diverged") for ax in panels)
    fig = plots.training_curves(r, _diverging_curves(r), color_by="scale", lr=1.0)
    ax = [ax for ax in fig.axes if ax.get_title() == "adam"][0]
    (cross,) = marked(ax, "diverged")
    assert cross.get_offsets().tolist() == [[20, pytest.approx(1.85)]]
    assert list(ax.get_lines()[-1].get_xdata()) == [10, 20]
    with pytest.raises(UserError, match="--color-by 'seed'"):
        plots.training_curves(r, _diverging_curves(r), color_by="seed")
    with pytest.raises(UserError, match="--lr 0.3: no runs at that learning rate"):
        plots.training_curves(r, _diverging_curves(r), lr=0.3)


def test_diagnostics_plot_one_line_per_atom_and_clear_errors(tmp_path):
    runs, curves, diags = tables(sweep_spec())
    # the runs sweep elr (as a sphere experiment does): --lr picks the swept rate
    fig = plots.diagnostics_plot(runs, diags, quantity="angle", lr=2.0 ** -3, out=tmp_path / "d.png")
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["all scale-invariant", "0:Linear 64x64"]
    assert ax.get_lines()[0].get_ydata() == pytest.approx([0.05] * 20) and ax.get_lines()[0].get_linestyle() == "--"
    assert ax.get_yscale() == "log" and ax.get_title() == "sphere (elr=2^-3)"
    # default LR: the series' best final loss, here the smallest ELR (converging, angle 0: linear axis)
    fig = plots.diagnostics_plot(runs, diags, quantity="angle")
    assert fig.axes[0].get_title() == "sphere (elr=2^-8)" and fig.axes[0].get_yscale() == "linear"
    with pytest.raises(UserError, match="--quantity condition: no finite values.*log_condition = true"):
        plots.diagnostics_plot(runs, diags, quantity="condition")
    with pytest.raises(UserError, match='--quantity elr: .*constraint = "sphere"'):
        plots.diagnostics_plot(runs, diags.assign(elr=math.nan), quantity="elr")
    with pytest.raises(UserError, match="--quantity 'spin': allowed: relative_update"):
        plots.diagnostics_plot(runs, diags, quantity="spin")
    with pytest.raises(UserError, match="no diagnostics recorded"):
        plots.diagnostics_plot(runs, pd.DataFrame(), quantity="angle")


# ----------------------------------------------------------------------------- CLI

def results_dir(tmp_path, runs, curves, diags=None):
    root = tmp_path / "results"
    write_table(runs, root / "runs.parquet")
    write_table(curves, root / "curves.parquet")
    if diags is not None:
        write_table(diags, root / "diagnostics.parquet")
    return root


def test_cli_plot_regimes_and_lrwd_write_files(tmp_path):
    root = results_dir(tmp_path, *tables(sweep_spec()))
    r = invoke("plot", root, "--kind", "regimes")
    assert r.exit_code == 0, r.output
    assert (root / "regimes.png").stat().st_size > 1000
    r = invoke("plot", root, "--kind", "diagnostics", "--quantity", "angle", "--out", tmp_path / "angle.svg")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "angle.svg").stat().st_size > 1000
    wd = results_dir(tmp_path / "wd", *lrwd_tables("product"))
    r = invoke("plot", wd, "--kind", "lrwd", "--out", tmp_path / "grid.svg")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "grid.svg").exists() and (tmp_path / "grid_lrwd_curves.svg").exists()
    r = invoke("plot", wd, "--kind", "curves", "--color-by", "scale")
    assert r.exit_code == 0, r.output
    assert (wd / "loss_steps.png").exists()


@pytest.mark.parametrize("args, message", [(["--kind", "spiral"], "--kind 'spiral': allowed: lr, curves"),
                                           (["--kind", "diagnostics", "--quantity", "spin"],
                                            "--quantity 'spin': allowed: relative_update"),
                                           (["--color-by", "seed"], "--color-by 'seed'"),
                                           (["--kind", "regimes", "--regime-window", "2"], "--regime-window 2.0"),
                                           (["--kind", "diagnostics", "--quantity", "condition"],
                                            "log_condition = true")])
def test_cli_plot_bad_input_exit_2_nothing_written(tmp_path, args, message):
    root = results_dir(tmp_path, *tables(sweep_spec()))
    before = sorted(p.name for p in root.iterdir())
    r = invoke("plot", root, *args)
    assert r.exit_code == 2 and message in " ".join(r.output.split()), r.output
    assert sorted(p.name for p in root.iterdir()) == before


def test_cli_report_has_the_regimes_section(tmp_path):
    root = results_dir(tmp_path, *tables(sweep_spec()))
    r = invoke("report", root, "--n-boot", "50")
    assert r.exit_code == 0, r.output
    assert "## Regimes" in r.output and "## lr·wd invariance" not in r.output
    assert "- sphere: converge→chaotic at elr ≈ 2^-5 (log2 -5.00 ± 0.71 octaves, 2 seeds)" in r.output
    r = invoke("report", root, "--n-boot", "50", "--regime-window", "0.25", "--regime-alpha", "0.05", "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert (doc["regimes"]["window"], doc["regimes"]["alpha"]) == (0.25, 0.05) and "lrwd" not in doc
    assert doc["regimes"]["counts"] == {"converge": 7, "chaotic": 7, "diverge": 4, "unsettled": 0}
    r = invoke("report", root, "--regime-alpha", "0.5")
    assert r.exit_code == 2 and "--regime-alpha 0.5" in r.output


NO_SCALE_NOTE = ("No scale axis varies in these runs (width = 64; depth = 2; steps = 200; the scale-like keys are "
                 "width, depth, batch_size, steps, data.context, data.samples, heads), so there is no LR-transfer "
                 "verdict.")


def test_results_report_adds_the_dynamics_sections(tmp_path):
    root = results_dir(tmp_path, *tables(sweep_spec()))
    text = results_report(root, n_boot=50)
    # one width, one depth: no transfer section (its verdicts would be single-scale), a note instead
    assert text.startswith(NO_SCALE_NOTE + "\n\n## Regimes") and "## lr·wd invariance" not in text
    assert "## LR transfer" not in text and "single-scale" not in text and "inconclusive" not in text
    doc = json.loads(results_report(root, n_boot=50, format="json", regime=RegimeOptions(blocks=5)))
    assert doc["regimes"]["counts"] == {"converge": 7, "chaotic": 7, "diverge": 4, "unsettled": 0}
    assert doc["regimes"]["blocks"] == 5
    assert doc["transfer"] == [] and doc["drift"] == [] and doc["note"] == NO_SCALE_NOTE
    with pytest.raises(UserError, match="--format csv: no scale axis varies in these runs .* nothing to write"):
        results_report(root, n_boot=50, format="csv")
    r = invoke("report", root, "--format", "csv")
    assert r.exit_code == 2 and "--format csv: no scale axis varies" in " ".join(r.output.split())
    # asked for an axis that does not vary: the same note, about that axis
    assert results_report(root, n_boot=50, axis="depth").startswith(
        "--axis depth does not vary in these runs (depth = 2; the scale-like keys are")
    # bad options are still refused where there is no verdict to use them
    with pytest.raises(UserError, match="--tolerance"):
        results_report(root, n_boot=50, tolerance=0)


def test_results_report_puts_the_transfer_section_first_where_a_scale_varies(tmp_path):
    """The same sphere sweep at two widths: the verdicts come first, then the regimes per width."""
    narrow = tables(sweep_spec())
    wide = [t.assign(run_id=t["run_id"] + "-w128") for t in narrow]
    wide[0]["width"] = 128
    root = results_dir(tmp_path, *(pd.concat([a, b], ignore_index=True) for a, b in zip(narrow, wide)))
    text = results_report(root, n_boot=50)
    assert text.index("## LR transfer") < text.index("## Regimes") and "No scale axis varies" not in text
    assert "- sphere across width 64→128 (2 seeds): **" in text
    doc = json.loads(results_report(root, n_boot=50, format="json"))
    assert [r["scale"] for r in doc["transfer"]] == [64, 128] and "note" not in doc
    lrwd = results_dir(tmp_path / "wd", *lrwd_tables("lr"))
    assert json.loads(results_report(lrwd, n_boot=100, format="json"))["lrwd"]["groups"][0]["late_verdict"] == "fails"


def test_cli_report_has_the_lrwd_section(tmp_path):
    root = results_dir(tmp_path, *lrwd_tables("lr"))
    r = invoke("report", root, "--n-boot", "100")
    assert r.exit_code == 0, r.output
    assert "## lr·wd invariance" in r.output and "## Regimes" not in r.output
    assert "late train loss follows lr·wd: **fails**" in r.output
    doc = json.loads(invoke("report", root, "--n-boot", "100", "--format", "json").output)
    assert doc["lrwd"]["groups"][0]["late_verdict"] == "fails" and doc["drift"] == [] and "note" in doc
    assert "## LR transfer" not in r.output and r.output.startswith("No scale axis varies in these runs (width = 64; depth = 2; steps = 100;")


# ----------------------------------------------------------------------------- tune --along lrwd

LRWD_TOML = """
description = "lr x wd grid"
""" + TINY_DATA_MODEL + """[train]
steps = 50
optimizer = "adam"
[grid]
width = [16]
lr = [0.00390625, 0.0078125, 0.015625, 0.03125]
weight_decay = [0.015625, 0.03125, 0.0625, 0.125]
[series.adamw]
"""


def _fake_loss(values):
    """Late loss of a pure lr·wd function with its minimum at lr·wd = 2^-12."""
    return 1.0 + (math.log2(values["lr"] * values["weight_decay"]) + 12) ** 2 / 10


@pytest.fixture
def lrwd_experiment(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from lrtransfer.sweep import tune as tune_mod
    from lrtransfer.run.provenance import run_id
    from lrtransfer.sweep import load_experiment

    def execute(values, device):
        row = {"run_id": run_id(values), "series": values["series"], "width": values["width"], "lr": values["lr"],
               "weight_decay": values["weight_decay"], "seed": values["seed"], "status": "done",
               "final_train_loss": _fake_loss(values), "first_train_loss": 2.3, "wall_seconds": 1.0}
        return SimpleNamespace(row=row, curves=pd.DataFrame({"run_id": [row["run_id"]], "step": [50],
                                                             "train_loss": [row["final_train_loss"]]}),
                               diagnostics=None)

    monkeypatch.setattr(tune_mod, "execute", execute)
    path = tmp_path / "lrwd.toml"
    path.write_text(LRWD_TOML)

    def load(overrides=()):
        exp = load_experiment(path, list(overrides))
        exp.__dict__["fingerprints"] = {"data_fingerprint": "d", "code_fingerprint": "c"}  # no dataset read
        return exp
    return load, tmp_path / "results"


def test_tune_along_lrwd_searches_the_product_at_a_fixed_lr(lrwd_experiment):
    from lrtransfer.sweep.tune import lrwd_tune_table, tune_lrwd
    load, root = lrwd_experiment
    exp = load()
    # the 2-D grid's results, as a sweep would leave them: the best cells have lr·wd = 2^-12
    grid = [{"run_id": f"g{a}{b}", "series": "adamw", "width": 16, "lr": 2.0 ** a, "weight_decay": 2.0 ** b,
             "seed": 0, "status": "done", "final_train_loss": _fake_loss({"lr": 2.0 ** a, "weight_decay": 2.0 ** b})}
            for a in range(-8, -4) for b in range(-6, -2)]
    write_table(pd.DataFrame(grid), root / "runs.parquet")
    (r,) = tune_lrwd(exp, trials=8, results_dir=root, device="cpu", seed=0)
    assert r.lr == 2.0 ** -6  # the upper middle of the four grid LRs
    assert r.product_range == pytest.approx((2.0 ** -14, 2.0 ** -8))
    assert 2.0 ** -14 <= r.product <= 2.0 ** -8 and r.weight_decay == pytest.approx(r.product / r.lr)
    assert r.grid_cells == 16 and r.saved == 0.5 and r.saved_steps == 0.5
    assert r.grid_best_product == pytest.approx(2.0 ** -12) and r.grid_best_loss == pytest.approx(1.0)
    assert r.octaves_from_grid < 1.0 and r.loss == pytest.approx(_fake_loss({"lr": r.lr, "weight_decay": r.weight_decay}))
    assert 0 <= r.loss_above_grid < 0.1
    t = lrwd_tune_table([r])
    assert t["runs"].tolist() == [8] and t["best_log2_product"].iloc[0] == pytest.approx(math.log2(r.product))
    # resumable: a second call finds the finished trials and runs nothing new
    again = tune_lrwd(exp, trials=8, results_dir=root, device="cpu", seed=0)
    assert again[0].product == r.product


def test_tune_along_lrwd_needs_a_weight_decay_axis(lrwd_experiment, tmp_path):
    load, root = lrwd_experiment
    r = invoke("tune", tmp_path / "lrwd.toml", "--along", "lrwd", "--set", "weight_decay=0.01", "--results", root)
    assert r.exit_code == 2 and "series adamw has no weight_decay axis" in " ".join(r.output.split())
    r = invoke("tune", tmp_path / "lrwd.toml", "--along", "wd")
    assert r.exit_code == 2 and "--along 'wd': allowed: lr, lrwd" in r.output
    r = invoke("tune", tmp_path / "lrwd.toml", "--lr", "0.01")
    assert r.exit_code == 2 and "--lr: only with --along lrwd" in r.output
    assert not root.exists()


def test_condition_table_summarises_the_best_lr_cells_final_condition_numbers():
    runs = pd.DataFrame([
        {"run_id": f"{s}{lr}{seed}", "series": s, "width": 32, "lr": lr, "seed": seed, "status": "done",
         "final_train_loss": loss + 0.01 * seed}
        for s in ("a", "b") for lr, loss in ((0.1, 1.0), (0.01, 0.5)) for seed in (0, 1)])
    rows = []
    for r in runs.to_dict("records"):
        for step in (10, 20):
            for atom, role, cond in ((0, "input", 2.0), (1, "hidden", 3.0), (2, "hidden", 7.0), (3, "output", 5.0)):
                scale = 1.0 if step == 20 else 100.0     # only the last logged step counts
                rows.append({"run_id": r["run_id"], "step": step, "atom": atom, "role": role,
                             "condition": cond * scale * (1 + r["seed"]) * (2 if r["series"] == "b" else 1)})
        rows.append({"run_id": r["run_id"], "step": 20, "atom": -1, "role": "scale_invariant", "condition": math.nan})
    t = dynamics.condition_table(runs, pd.DataFrame(rows)).set_index("series")
    assert t.loc["a", "lr"] == 0.01 and t.loc["a", "loss"] == pytest.approx(0.505)
    # hidden median of (3, 7) = 5 and max 7, times (1 + seed), averaged over seeds 0 and 1: × 1.5
    assert t.loc["a", "median"] == pytest.approx(7.5) and t.loc["a", "max"] == pytest.approx(10.5)
    assert t.loc["a", "input"] == pytest.approx(3.0) and t.loc["a", "output"] == pytest.approx(7.5)
    assert t.loc["b", "median"] == pytest.approx(15.0)
    with pytest.raises(UserError, match="log_condition"):
        dynamics.condition_table(runs, pd.DataFrame(rows).assign(condition=math.nan))


def test_sphere_curves_and_diagnostics_follow_the_swept_elr_not_the_fixed_lr():
    # as a sphere experiment records them: lr is the unused default, elr is what was swept
    runs, curves, diags = tables(sweep_spec())
    runs = runs.assign(lr=1e-3)
    curves = curves.assign(lr=1e-3)
    fig = plots.training_curves(runs, curves, color_by="lr")
    labels = [ln.get_label() for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert sorted(labels) == sorted(f"elr=2^{k}" for k in range(-8, 1))
    fig = plots.diagnostics_plot(runs, diags, quantity="angle")
    best = runs.groupby("elr")["final_train_loss"].mean().idxmin()
    assert fig.axes[0].get_title() == f"sphere (elr=2^{int(math.log2(best))})"
