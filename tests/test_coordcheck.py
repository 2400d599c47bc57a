"""The coordinate check (lrtransfer.analysis.coordcheck): width-unstable parametrizations fail it,
μP and the modular norm's normalized / dualized updates pass it; the pass rule against exact
statistics; the CLI command around it. (Its activation statistic against the mup package's own
coord check: tests/test_coordcheck_mup.py.)

The MLP is trained 3 steps on one batch of 64 MNIST-1D examples at the default widths 32 … 512
(×16 the grid's smallest), 3 seeds, one LR per series (Adam 2^-8 plain and μP/SP, 2^-2
normalized / dualized). Measured (mean over seeds of the slope of log RMS vs log width): SP
Adam: hidden ΔW·x +0.95; plain Adam on the modular parametrization: +0.96; μP Adam: every
|slope| but the logits' <= 0.09 (readout ΔW·x at step 1); normalized and dualized: <= 0.04
(the logits at init shrink, ∝ width^-½ by design, which the check allows).
"""
import importlib
import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import invoke
from lrtransfer.analysis import coordcheck as cc_module
from lrtransfer.analysis.coordcheck import (base_lr, coordcheck, default_widths, fit_slope, interval, passes, plan,
                                            slopes_of)
from lrtransfer.plots.coordcheck import figure
from lrtransfer.report.coordcheck import render, to_markdown
from lrtransfer.errors import ConfigError, UserError
from lrtransfer.sweep import load_experiment


HEAD = """
description = "coord check"
[data]
dataset = "mnist1d"
samples = 2000
[model]
arch = "mlp"
depth = 1
block_depth = 1
[train]
batch_size = 64
[grid]
width = [32, 48]
"""

# one series each; each LR grid's middle (the LR the check uses) is the one named above
SERIES = {
    "sp_adam": 'param = "sp"\noptimizer = "adam"\nlr = { log2 = [-9, -7], step = 1 }',
    "modular_adam": 'optimizer = "adam"\nlr = { log2 = [-9, -7], step = 1 }',
    "mup_adam": 'param = "mup"\noptimizer = "adam"\nlr = { log2 = [-9, -7], step = 1 }',
    "normed_adam": 'optimizer = "adam"\nupdate = "normalize"\nlr = { log2 = [-3, -1], step = 1 }',
    # Muon's 5 Newton–Schulz steps: the default quintic ×10 on 512² matrices costs seconds here
    "dualized": 'optimizer = "sgd"\nupdate = "dualize"\nns = "muon"\nlr = { log2 = [-3, -1], step = 1 }',
}
SEEDS = 3


def _param_available(param: str) -> bool:
    """Whether lrtransfer.models.build takes ``param`` (sp/μP land in lrtransfer/models/param.py)."""
    from lrtransfer.models import build
    try:
        build("mlp", 8, 1, input_dim=4, output_dim=2, param=param, base_width=8, mup_rule="adam")
    except (ConfigError, TypeError, ValueError):
        return False
    return True


def needs_param(param):
    return pytest.mark.skipif(not _param_available(param),
                              reason=f"models.build(..., param={param!r}) is not available yet "
                                     "(lrtransfer/models/param.py, being added separately)")


def experiment(tmp_path, name, extra=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(HEAD + extra + f"\n[series.{name}]\n{SERIES[name]}\n")
    return load_experiment(path)


def check(tmp_path, name):
    """The check at its default widths (32 … 512: the grid's 48 plays no part) and margin."""
    cc = coordcheck(experiment(tmp_path, name), steps=3, seeds=SEEDS)
    assert cc.lrs[name] == (2.0 ** -8 if "adam" in name and name != "normed_adam" else 2.0 ** -2)
    assert cc.widths[name] == [32, 64, 128, 256, 512]
    return cc


def hidden_update_slope(cc, name):
    s = cc.slopes
    rows = s[(s["series"] == name) & (s["role"] == "hidden") & (s["quantity"] == "delta_wx_rms")]
    return float(rows["slope"].max())


# -- the science -------------------------------------------------------------------------------
@needs_param("sp")
def test_sp_adam_fails(tmp_path):
    cc = check(tmp_path, "sp_adam")
    assert cc.verdict == {"sp_adam": False}
    assert hidden_update_slope(cc, "sp_adam") > 0.75  # fails for the right reason: updates grow ∝ width


def test_plain_adam_in_the_modular_parametrization_fails(tmp_path):
    cc = check(tmp_path, "modular_adam")
    assert cc.verdict == {"modular_adam": False}
    assert hidden_update_slope(cc, "modular_adam") > 0.75


@needs_param("mup")
def test_mup_adam_passes(tmp_path):
    cc = check(tmp_path, "mup_adam")
    assert cc.verdict == {"mup_adam": True}, to_markdown(cc)
    s = cc.slopes
    # every atom's own update (ΔW·x) is width-independent, the readout's included, up to
    # finite-width corrections that fade as the widths grow
    assert s[s["quantity"] == "delta_wx_rms"]["slope"].abs().max() < 0.15
    # the logits start ∝ width^-½ (readout multiplier 1/m on an init × √m, as mup's set_base_shapes)
    init = s[(s["role"] == "output") & (s["quantity"] == "output_rms") & (s["step"] == 0)]
    assert float(init["slope"].iloc[0]) == pytest.approx(-0.5, abs=0.05)


@pytest.mark.parametrize("name", ["normed_adam", "dualized"])
def test_normalized_and_dualized_pass(tmp_path, name):
    cc = check(tmp_path, name)
    assert cc.verdict == {name: True}, to_markdown(cc)
    s = cc.slopes
    assert s["pass"].all()
    # everything but the logits' own size is flat well within the margin
    flat = s[~((s["quantity"] == "output_rms") & (s["role"] == "output"))]
    assert flat["slope"].abs().max() < 0.1
    # the table: seeds x 5 widths x 3 atoms x 4 steps (0..3) x 3 quantities; updates at step 0 not fitted
    t = cc.table
    assert len(t) == SEEDS * 5 * 3 * 4 * 3
    assert len(s) == 3 * (4 + 3 + 3) and (s["n_seeds"] == SEEDS).all()
    assert set(s["atom"]) == {"0:input", "1:hidden", "2:output"}
    assert (t[t["quantity"].isin(["output_update_rms", "delta_wx_rms"]) & (t["step"] == 0)]["rms"] == 0).all()
    assert (t["l1"] <= t["rms"] * (1 + 1e-12)).all()   # mean |x| <= RMS (Jensen)
    # the input atom's input (the data) never changes: its output change is all its own ΔW·x
    first = t[t["atom"] == "0:input"].pivot_table(index=["seed", "width", "step"], columns="quantity", values="rms")
    assert first["output_update_rms"].to_numpy() == pytest.approx(first["delta_wx_rms"].to_numpy(), rel=1e-5)


# -- the pieces --------------------------------------------------------------------------------
def test_fit_slope():
    assert fit_slope([64, 256, 1024], [1.0, 4.0, 16.0]) == pytest.approx(1.0)
    assert fit_slope([64, 256, 1024], [2.0, 2.0, 2.0]) == pytest.approx(0.0, abs=1e-12)
    assert fit_slope([64, 256], [0.0, 0.0]) == 0.0  # an atom that never moves: flat
    assert math.isnan(fit_slope([64, 256], [0.0, 1.0]))
    assert math.isnan(fit_slope([64, 256], [1.0, math.nan]))
    assert math.isnan(fit_slope([64, 256], [1.0, math.inf]))


def test_interval_is_the_student_t_interval_of_the_mean():
    # slopes 1, 2, 3: mean 2, sd 1, se 1/√3; t(0.975, 2 dof) = 4.302653 (tables)
    mean, se, lo, hi = interval([1.0, 2.0, 3.0], 0.95)
    assert mean == pytest.approx(2.0) and se == pytest.approx(1 / math.sqrt(3))
    assert hi - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6) and mean - lo == pytest.approx(hi - mean)
    # 90%: t(0.95, 3 dof) = 2.353363
    mean, se, lo, hi = interval([0.1, 0.3, 0.2, 0.4], 0.90)
    assert se == pytest.approx(np.std([0.1, 0.3, 0.2, 0.4], ddof=1) / 2)
    assert hi == pytest.approx(0.25 + 2.353363 * se, rel=1e-6)
    assert all(math.isnan(v) for v in interval([0.1, math.nan, 0.2]))   # a seed that diverged
    assert all(math.isnan(v) for v in interval([0.1]))                 # no spread from one seed


def test_pass_rule():
    assert passes(-0.2, 0.2, "delta_wx_rms", "hidden", 0.25)
    assert not passes(-0.3, 0.1, "delta_wx_rms", "hidden", 0.25)       # the interval reaches past -¼
    assert not passes(0.1, 0.26, "output_update_rms", "hidden", 0.25)
    assert passes(-0.9, 0.1, "output_rms", "output", 0.25)              # logits may shrink with width
    assert passes(-0.9, -0.4, "output_update_rms", "output", 0.25)
    assert not passes(0.1, 0.3, "output_rms", "output", 0.25)           # never grow
    assert not passes(-0.9, -0.4, "delta_wx_rms", "output", 0.25)       # but the readout must keep learning
    assert not passes(-0.9, -0.4, "output_rms", "hidden", 0.25)         # features must stay Θ(1)
    assert not passes(math.nan, math.nan, "output_rms", "hidden", 0.25)


def _synthetic(exponent: float, noise: float, seeds: int = 4, widths=(32, 64, 128, 256, 512)) -> pd.DataFrame:
    """A table whose RMS is width^exponent times per-seed, per-width log-normal noise."""
    rng = np.random.default_rng(0)
    rows = [{"series": "s", "seed": s, "width": w, "atom": "1:hidden", "atom_index": 1, "role": "hidden",
             "step": 1, "quantity": "delta_wx_rms", "rms": w ** exponent * math.exp(noise * rng.standard_normal()),
             "l1": 0.0, "lr": 0.1} for s in range(seeds) for w in widths]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("exponent, noise, expected", [
    (0.0, 0.02, True), (0.1, 0.02, True), (-0.15, 0.02, True),   # Θ(1) up to a finite-width drift
    (0.5, 0.02, False), (-0.5, 0.02, False), (1.0, 0.02, False),  # the exponents of the wrong parametrizations
    (0.0, 1.0, False),                                           # too noisy to tell: not shown stable
])
def test_slopes_of_on_known_exponents(exponent, noise, expected):
    s = slopes_of(_synthetic(exponent, noise), margin=0.25, confidence=0.9)
    assert len(s) == 1
    row = s.iloc[0]
    assert row["n_seeds"] == 4 and row["lo"] <= row["slope"] <= row["hi"]
    if noise < 0.1:
        assert row["slope"] == pytest.approx(exponent, abs=0.03)
    assert bool(row["pass"]) is expected


def test_default_widths_span_sixteen_from_the_smallest_whatever_the_grid(tmp_path):
    assert default_widths(32) == [32, 64, 128, 256, 512]
    assert default_widths(48, 4) == [48, 96, 192]
    exp = experiment(tmp_path, "normed_adam")                  # grid [32, 48]
    (lr, runs), = plan(exp).values()
    assert [v["width"] for v in runs] == [32, 64, 128, 256, 512]
    assert all(v["seed"] == 0 and v["depth"] == 1 and v["lr"] == lr for v in runs)
    (_, runs), = plan(exp, widths=[512, 64, 64, 128]).values()   # given widths: sorted, once each
    assert [v["width"] for v in runs] == [64, 128, 512]
    exp.grid["width"] = [128]                                 # one width in the grid is enough now
    (_, runs), = plan(exp).values()
    assert [v["width"] for v in runs] == [128, 256, 512, 1024, 2048]


def test_mup_keeps_its_base_width_at_the_default_widths(tmp_path):
    """μP's base shapes stay the experiment's smallest width, not each check width."""
    (_, runs), = plan(experiment(tmp_path, "mup_adam")).values()
    assert {v["base_width"] for v in runs} == {32}


def test_bad_arguments(tmp_path):
    exp = experiment(tmp_path, "normed_adam")
    with pytest.raises(UserError, match=r"--widths \[128\]: must be at least two"):
        coordcheck(exp, steps=1, widths=[128])
    with pytest.raises(UserError, match="--widths"):
        plan(exp, widths=[64, 0])
    with pytest.raises(UserError, match=r"--seeds 1: must be an integer >= 2"):
        coordcheck(exp, steps=1, seeds=1)
    with pytest.raises(UserError, match="--margin"):
        coordcheck(exp, steps=1, margin=0)
    with pytest.raises(UserError, match="--confidence"):
        coordcheck(exp, steps=1, confidence=1.0)
    with pytest.raises(UserError, match="--span 12"):
        plan(exp, span=12)


def test_base_lr_is_the_middle_of_the_grid_at_the_smallest_width():
    cells = [{"width": w, "lr": lr} for w in (32, 64) for lr in (0.5, 0.125, 0.25)]
    cells.append({"width": 64, "lr": 1e-6})
    assert base_lr(cells) == 0.25
    assert base_lr([{"width": 8, "lr": v} for v in (1.0, 2.0, 4.0, 8.0)]) == 2.0  # even: lower middle


def test_render_and_figure(tmp_path):
    cc = coordcheck(experiment(tmp_path, "normed_adam"), steps=1, seeds=2, widths=[32, 64])
    data = json.loads(render(cc, "json"))
    assert data["verdict"] == {"normed_adam": cc.verdict["normed_adam"]}
    assert data["seeds"] == {"normed_adam": [0, 1]} and data["widths"] == {"normed_adam": [32, 64]}
    assert data["margin"] == 0.25 and data["confidence"] == 0.9
    assert set(data["rows"][0]) == {"series", "atom", "step", "quantity", "slope", "se", "lo", "hi", "pass"}
    text = render(cc, "markdown")
    assert "### normed_adam: **" in text and "2 seeds" in text and "90% interval" in text
    with pytest.raises(UserError, match="allowed: markdown, json"):
        render(cc, "csv")
    fig = figure(cc)
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 3 * 3


# -- the CLI -----------------------------------------------------------------------------------
SMALL = """
description = "tiny"
[data]
dataset = "mnist1d"
samples = 600
[model]
arch = "mlp"
depth = 1
block_depth = 1
[train]
batch_size = 16
[grid]
width = [16, 64]
[series.adam]
lr = [0.001, 0.004, 0.016]
[series.normed_adam]
normalize = true
lr = [0.25]
"""


def test_cli_defaults_are_the_checks():
    cli_module = importlib.import_module("lrtransfer.cli.coordcheck")  # the package exports the command by this name
    assert (cli_module.SPAN, cli_module.SEEDS, cli_module.MARGIN, cli_module.CONFIDENCE) == \
        (cc_module.SPAN, cc_module.SEEDS, cc_module.MARGIN, cc_module.CONFIDENCE)


def test_cli_json(tmp_path):
    exp = tmp_path / "tiny.toml"
    exp.write_text(SMALL)
    fig = tmp_path / "coord.png"
    r = invoke("coordcheck", exp, "--steps", 2, "--seeds", 2, "--format", "json", "--out", fig, "--quiet")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert set(data["verdict"]) == {"adam", "normed_adam"}
    assert data["lr"] == {"adam": 0.004, "normed_adam": 0.25}
    assert data["widths"] == {"adam": [16, 32, 64, 128, 256], "normed_adam": [16, 32, 64, 128, 256]}
    assert all(set(row) == {"series", "atom", "step", "quantity", "slope", "se", "lo", "hi", "pass"}
               for row in data["rows"])
    assert {row["step"] for row in data["rows"]} == {0, 1, 2}
    assert fig.stat().st_size > 0 and not list(tmp_path.glob(".coord.png.*"))
    # --lr, --series, --widths, --margin
    r = invoke("coordcheck", exp, "--steps", 1, "--seeds", 2, "--format", "json", "--lr", 0.5,
               "--series", "normed_adam", "--widths", "16,32", "--margin", 0.5, "-q")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["lr"] == {"normed_adam": 0.5} and data["widths"] == {"normed_adam": [16, 32]}
    assert data["margin"] == 0.5 and data["seeds"] == {"normed_adam": [0, 1]}


def test_cli_errors(tmp_path):
    exp = tmp_path / "tiny.toml"
    exp.write_text(SMALL)
    fig = tmp_path / "coord.png"
    r = invoke("coordcheck", exp, "--widths", "32", "--out", fig)
    assert r.exit_code == 2, r.output
    assert "at least two distinct positive integers" in r.output.replace("\n", " ")
    assert not fig.exists()
    r = invoke("coordcheck", exp, "--widths", "32,x")
    assert r.exit_code == 2 and "comma-separated positive integers" in r.output.replace("\n", " ")
    r = invoke("coordcheck", exp, "--seeds", 1)
    assert r.exit_code == 2 and "--seeds 1" in r.output
    r = invoke("coordcheck", exp, "--format", "xml")
    assert r.exit_code == 2 and "allowed: markdown, json" in r.output
    r = invoke("coordcheck", exp, "--out", tmp_path / "coord.bmp")
    assert r.exit_code == 2 and "unsupported format .bmp" in r.output
    r = invoke("coordcheck", exp, "--series", "nope")
    assert r.exit_code == 2 and "no such series" in r.output
