"""A model from the user's code (issue 24): builders in files, roles found from how shapes
scale, μP on plain torch modules as the mup package applies it, the layerwise norm of a plain
module against the algebra's, and every bad input with its message and exit code 2."""
import math
import textwrap

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ROOT, invoke
from lrtransfer.errors import ConfigError
from lrtransfer.models import build_user, resolve_builder
from lrtransfer.models.roles import find_roles
from lrtransfer.models.wrapped import Wrapped
from lrtransfer.modular import Linear, ScaledReLU

IN, OUT = 40, 10

MLP_FILE = """
from torch import nn

def build(width, depth, input_dim, output_dim, bias=True):
    layers = [nn.Flatten(), nn.Linear(input_dim, width, bias=bias), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Linear(width, width, bias=bias), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, output_dim, bias=bias))
"""


def _builder(tmp_path, text=MLP_FILE, name="mlp.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return f"{path}:build"


def _experiment(tmp_path, arch="mlp.py:build", model_extra="", series=None, grid="width = [16, 32]"):
    series = series or """
[series.sp]
param = "sp"
lr = [0.003, 0.01]
[series.mup]
param = "mup"
lr = [0.003, 0.01]
"""
    path = tmp_path / "exp.toml"
    path.write_text(f"""seeds = 2
[data]
dataset = "mnist1d"
samples = 600
[model]
arch = "{arch}"
depth = 1
{model_extra}
[train]
steps = 12
batch_size = 32
log_every = 4
eval_examples = 64
[grid]
{grid}
{series}""")
    return path


# -- end to end --------------------------------------------------------------------------------
def test_a_builder_in_a_file_is_swept_and_reported_for_sp_and_mup(tmp_path):
    _builder(tmp_path)
    exp = _experiment(tmp_path)
    results = tmp_path / "results"
    r = invoke("sweep", exp, "--results", results, "--jobs", "1", "-q")
    assert r.exit_code == 0, r.output
    runs = pd.read_parquet(results / "runs.parquet")
    assert len(runs) == 16 and set(runs["status"]) == {"done"}
    assert set(runs["series"]) == {"sp", "mup"}
    assert runs["arch"].unique().tolist() == ["mlp.py:build"]      # as written: the run id is location-free
    assert set(runs["model_norm"]) == {"layerwise"}
    assert runs["model_fingerprint"].nunique() == 1
    report = invoke("report", results)
    assert report.exit_code == 0, report.output
    assert "sp" in report.output and "mup" in report.output
    assert any(word in report.output for word in ("transfers", "drifts", "inconclusive"))
    # μP's multipliers differ between the two widths; SP trains the model as built
    wide = runs[(runs.series == "mup") & (runs.width == 32)]
    assert (wide["final_train_loss"] > 0).all()


def test_editing_the_model_file_makes_its_runs_stale(tmp_path):
    from lrtransfer.sweep import load_experiment
    _builder(tmp_path)
    exp = _experiment(tmp_path)
    before = {c.run_id for c in load_experiment(exp).cells()}
    (tmp_path / "mlp.py").write_text(MLP_FILE + "\n# an edit\n")
    after = {c.run_id for c in load_experiment(exp).cells()}
    assert before.isdisjoint(after)


# -- roles -------------------------------------------------------------------------------------
def _roles(build, width=32):
    net = build(width)
    with torch.device("meta"):
        probe = build(2 * width)
    return {w.name: w.role for w in find_roles(net, probe)}, net


def test_roles_of_an_mlp():
    def build(w):
        return nn.Sequential(nn.Linear(IN, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, OUT))
    roles, _ = _roles(build)
    assert roles == {"0.weight": "input", "0.bias": "vector", "2.weight": "hidden", "2.bias": "vector",
                     "4.weight": "output", "4.bias": "vector"}


def test_roles_of_a_cnn():
    spec = resolve_builder("examples/resnet.py:build", ROOT)
    from lrtransfer.models import load_builder
    fn = load_builder(spec).function
    roles, _ = _roles(lambda w: fn(w, 1, in_channels=3, num_classes=10))
    assert roles["stem.weight"] == "input"
    assert roles["blocks.0.conv1.weight"] == roles["blocks.0.conv2.weight"] == "hidden"
    assert roles["fc.weight"] == "output"
    assert {roles[k] for k in roles if "norm" in k or k.endswith("bias")} == {"vector"}


def test_roles_of_a_transformer_with_tied_embeddings():
    from lrtransfer.models import load_builder
    fn = load_builder(resolve_builder("examples/nanogpt.py:build", ROOT)).function
    build = lambda w: fn(w, 1, vocab_size=65, context=16, heads=4)  # noqa: E731
    net = build(32)
    with torch.device("meta"):
        probe = build(64)
    weights = {w.name: w for w in find_roles(net, probe)}
    assert "lm_head.weight" not in weights                      # one parameter, listed once
    tied = weights["wte.weight"]
    assert tied.aliases == ("wte.weight", "lm_head.weight") and tied.kind == "embedding"
    assert tied.role == "input" and tied.readouts() == [net.lm_head]
    assert weights["wpe.weight"].role == "input"
    for name in ("blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.0.weight",
                 "blocks.0.mlp.2.weight"):
        assert weights[name].role == "hidden", name
    assert weights["ln_f.weight"].role == weights["blocks.0.attn.qkv.bias"].role == "vector"


def test_roles_set_by_name_override_the_shapes_and_settle_fixed_weights():
    def build(w):
        return nn.Sequential(nn.Linear(IN, w), nn.ReLU(), nn.Linear(w, 8), nn.ReLU(), nn.Linear(8, 8),
                             nn.Linear(8, OUT))
    net = build(32)
    with torch.device("meta"):
        probe = build(64)
    with pytest.raises(ConfigError) as e:
        find_roles(net, probe)
    assert "4.weight [8, 8]" in str(e.value) and "5.weight [10, 8]" in str(e.value)
    assert 'roles = { "4.weight" = "input" }' in str(e.value)
    weights = find_roles(net, probe, {"4.weight": "hidden", "5.weight": "output", "2.weight": "hidden"})
    got = {w.name: (w.role, w.found) for w in weights}
    assert got["4.weight"] == ("hidden", "set") and got["2.weight"] == ("hidden", "set")
    assert got["0.weight"] == ("input", "shapes")
    with pytest.raises(ConfigError, match=r"model.roles: '4.wieght' is not a parameter.*did you mean '4.weight'"):
        find_roles(net, probe, {"4.wieght": "hidden"})
    with pytest.raises(ConfigError, match=r"model.roles.4.weight: 'readout' is not a role; allowed: input, hidden"):
        find_roles(net, probe, {"4.weight": "readout"})


# -- the layerwise norm against the algebra ------------------------------------------------------
class _ScaledReLU(nn.Module):
    def forward(self, x):
        return math.sqrt(2) * F.relu(x)


def test_one_mlp_built_both_ways_gets_the_same_normalized_and_dualized_updates():
    """The algebra's chain Linear ∘ ScaledReLU ∘ Linear ∘ ScaledReLU ∘ Linear (masses 1,
    sensitivities 1) and the same network as nn.Sequential, whose weights are the matrices the
    algebra's forward applies (s·W): every normalized and dualized update agrees, as the
    matrix the forward applies."""
    torch.manual_seed(3)
    width = 48
    algebra = Linear(OUT, width) @ ScaledReLU() @ Linear(width, width) @ ScaledReLU() @ Linear(width, IN)
    plain = nn.Sequential(nn.Linear(IN, width, bias=False), _ScaledReLU(), nn.Linear(width, width, bias=False),
                          _ScaledReLU(), nn.Linear(width, OUT, bias=False))
    with torch.no_grad():
        for atom, layer in zip(algebra.atoms(), [plain[0], plain[2], plain[4]]):
            layer.weight.copy_(atom.scale * atom.weight)
    with torch.device("meta"):
        probe = nn.Sequential(nn.Linear(IN, 2 * width, bias=False), _ScaledReLU(),
                              nn.Linear(2 * width, 2 * width, bias=False), _ScaledReLU(),
                              nn.Linear(2 * width, OUT, bias=False))
    wrapped = Wrapped(plain, find_roles(plain, probe))
    assert wrapped.roles() == algebra.roles() == ["input", "hidden", "output"]
    x, y = torch.randn(64, IN), torch.randint(0, OUT, (64,))
    torch.testing.assert_close(wrapped(x), algebra(x), rtol=1e-5, atol=1e-6)
    F.cross_entropy(algebra(x), y).backward()
    F.cross_entropy(wrapped(x), y).backward()
    g_alg = [a.weight.grad for a in algebra.atoms()]
    g_plain = [a.weight.grad for a in wrapped.atoms()]
    scales = [a.scale for a in algebra.atoms()]
    for eta in (0.3, 2.0):
        for ours, theirs in ((wrapped.normalize(g_plain, eta, exact=True), algebra.normalize(g_alg, eta, exact=True)),
                             (wrapped.dualize(g_plain, eta, ns="svd"), algebra.dualize(g_alg, eta, ns="svd"))):
            for k, (u, v, s) in enumerate(zip(ours, theirs, scales)):
                torch.testing.assert_close(u, s * v, rtol=1e-4, atol=1e-6, msg=f"atom {k}, eta {eta}")
        # Newton–Schulz amplifies the last bits of its input's small singular directions (the
        # two gradients differ by the rounding of s·G), so its steps agree to 1e-2, not 1e-6
        for k, (u, v, s) in enumerate(zip(wrapped.dualize(g_plain, eta), algebra.dualize(g_alg, eta), scales)):
            assert float((u - s * v).abs().max() / u.abs().max()) < 1e-2, f"atom {k}, eta {eta}"
        torch.testing.assert_close(wrapped.norm(wrapped.normalize(g_plain, eta, exact=True)), torch.tensor(eta),
                                   rtol=1e-5, atol=0)
    # each of the three matrices gets a third of the target, in its RMS→RMS operator norm
    step = wrapped.normalize(g_plain, 0.3, exact=True)
    for u in step:
        rms_op = torch.linalg.matrix_norm(u, ord=2) * math.sqrt(u.shape[1] / u.shape[0])
        assert float(rms_op) == pytest.approx(0.1, rel=1e-5)


# -- μP on a plain torch MLP against the mup package ---------------------------------------------
mup = pytest.importorskip("mup")
from test_peers_mup import one_step  # noqa: E402  the same step of both optimizers as the algebra's peer test
BASE = 16


def _peer(width):
    return nn.Sequential(nn.Linear(IN, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         mup.MuReadout(width, OUT))


def _mup_pair(tmp_path, width, rule):
    spec = _builder(tmp_path)
    torch.manual_seed(0)
    ours = build_user(spec, width, 1, {"input_dim": IN, "output_dim": OUT}, {}, param="mup", base_width=BASE,
                      mup_rule=rule)
    torch.manual_seed(0)   # the same draws: nn.Flatten has none, MuReadout initialises as nn.Linear
    peer = _peer(width)
    mup.set_base_shapes(peer, _peer(BASE))
    return ours, peer


@pytest.mark.parametrize("width", [BASE, 4 * BASE])
@pytest.mark.parametrize("rule", ["adam", "sgd"])
def test_mup_on_a_plain_mlp_matches_the_mup_package(tmp_path, width, rule):
    ours, peer = _mup_pair(tmp_path, width, rule)
    ours_params = [p for _, p in ours.net.named_parameters()]
    peer_params = list(peer.parameters())
    # init: the readout's weight and bias × sqrt(m), every other bias × sqrt(its fan-in multiplier)
    for k, (a, b) in enumerate(zip(ours_params, peer_params)):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0, msg=f"parameter {k} at init")
    x, y = torch.randn(32, IN), torch.randint(0, OUT, (32,))
    torch.testing.assert_close(ours(x), peer(x), rtol=0, atol=1e-6)   # the readout's 1/m forward
    F.cross_entropy(ours(x), y).backward()
    F.cross_entropy(peer(x), y).backward()
    one_step(ours, peer.parameters(), rule)
    names = [n for n, _ in ours.net.named_parameters()]
    for name, a, b in zip(names, ours_params, peer_params):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=2e-6, msg=f"{name} after one step, width {width}")
    if width != BASE:   # the check can fail: the multipliers are not all 1 here
        mults = {n: a.lr_mult for n, a in zip(names, ours.atoms())}
        assert mults["3.weight" if rule == "adam" else "1.weight"] == (0.25 if rule == "adam" else 4.0)


# -- bad input: exit 2, the builder and the key named, nothing written ----------------------------
@pytest.mark.parametrize("case, model_extra, text, message", [
    ("missing file", "", None, "file not found"),
    ("missing function", "", "def other(width, depth):\n    pass\n", "has no function 'build'; it defines: other"),
    ("unknown key", "dropout = 0.1", MLP_FILE, "model.dropout: the builder"),
    ("builder raises", "", MLP_FILE.replace("layers = [", "raise RuntimeError('no GPU here')\n    layers = ["),
     "the builder raised RuntimeError: no GPU here (width=16, depth=1)"),
    ("wrong output", "", MLP_FILE.replace("nn.Linear(width, output_dim, bias=bias)", "nn.Linear(width, 3)"),
     "the model's output is [2, 3]"),
    ("not a module", "", "def build(width, depth):\n    return 42\n", "the builder returned int, not a torch.nn.Module"),
    ("width-independent", "", "from torch import nn\ndef build(width, depth, input_dim, output_dim):\n"
     "    return nn.Sequential(nn.Flatten(), nn.Linear(input_dim, output_dim))\n", "no weight changes shape"),
    ("unknown role name", 'roles = { "9.weight" = "hidden" }', MLP_FILE, "model.roles: '9.weight' is not a parameter"),
    ("modular param", "", MLP_FILE, 'model.param: "modular" is the module algebra'),
])
def test_bad_builders_exit_2_naming_what_is_wrong(tmp_path, case, model_extra, text, message):
    if text is not None:
        (tmp_path / "mlp.py").write_text(textwrap.dedent(text))
    series = '[series.modular]\nlr = [0.01]\n' if case == "modular param" else None
    exp = _experiment(tmp_path, model_extra=model_extra, series=series)
    results = tmp_path / "results"
    r = invoke("sweep", exp, "--results", results, "--jobs", "1", "-q")
    assert r.exit_code == 2, (case, r.output)
    assert message in " ".join(r.output.split()), (case, r.output)
    assert not (results / "runs.parquet").exists() and not (results / "experiment.json").exists()


def test_inspect_prints_each_weight_with_its_role_and_mup_multipliers(tmp_path):
    _builder(tmp_path)
    exp = _experiment(tmp_path)
    r = invoke("inspect", exp, "--series", "mup", "--format", "json")
    assert r.exit_code == 0, r.output
    import json
    doc = json.loads(r.output)
    rows = {row["name"]: row for row in doc["weights"]}
    assert doc["μP base width"] == 16 and doc["width"] == 32
    assert rows["1.weight"]["role"] == "input" and rows["3.weight"]["role"] == "hidden"
    assert rows["5.weight"]["role"] == "output"
    assert rows["3.weight"]["lr_mult"] == pytest.approx(0.5)          # MuAdam: 1 / fan-in multiplier
    assert rows["5.weight"]["init_mult"] == pytest.approx(math.sqrt(2))
    assert rows["5.weight"]["forward_mult"] == pytest.approx(0.5)
    assert rows["3.bias"]["init_mult"] == pytest.approx(math.sqrt(2))  # rescale_linear_bias


def test_the_coordinate_check_measures_a_plain_models_layers_once(tmp_path):
    """Each weight matrix's layer is hooked (biases and gains are part of their layer's output),
    and its own step ΔW·x is measured on the input the layer received: zero before the first
    step, also at μP's readout, whose input multiplier (a pre-hook) must not apply twice."""
    from lrtransfer.analysis.coordcheck import measure
    from lrtransfer.sweep import load_experiment
    _builder(tmp_path)
    exp = load_experiment(_experiment(tmp_path))
    values = next(c.values for c in exp.cells() if c.values["series"] == "mup" and c.values["width"] == 32)
    records, note = measure(values, steps=2, device=torch.device("cpu"))
    assert note is None
    df = pd.DataFrame(records)
    assert sorted(df["role"].unique()) == ["hidden", "input", "output"]
    assert sorted(df["atom_index"].unique()) == [0, 2, 4]          # the three Linear weights, not the biases
    start = df[(df.step == 0) & (df.quantity == "delta_wx_rms")]
    assert len(start) == 3 and (start["rms"] == 0).all()
    later = df[(df.step == 2) & (df.quantity == "delta_wx_rms")]
    assert (later["rms"] > 0).all()


def test_roles_set_in_the_experiment_file_reach_every_run(tmp_path):
    """A weight that does not grow with width (a fixed bottleneck) is settled by [model] roles;
    the table travels in each run's values as one JSON string (a plain runs-table column)."""
    _builder(tmp_path, text=MLP_FILE.replace(
        "return nn.Sequential(*layers, nn.Linear(width, output_dim, bias=bias))",
        "return nn.Sequential(*layers, nn.Linear(width, 8), nn.Linear(8, 8), nn.Linear(8, output_dim))"))
    series = '[series.sp]\nparam = "sp"\nlr = [0.003, 0.01]\n'
    exp = _experiment(tmp_path, series=series)
    results = tmp_path / "results"
    r = invoke("sweep", exp, "--results", results, "--jobs", "1", "-q")
    assert r.exit_code == 2 and "neither side grows" in " ".join(r.output.split())
    exp = _experiment(tmp_path, series=series,
                      model_extra='roles = { "6.weight" = "hidden", "7.weight" = "output", "5.weight" = "output" }')
    r = invoke("sweep", exp, "--results", results, "--jobs", "1", "-q")
    assert r.exit_code == 0, r.output
    runs = pd.read_parquet(results / "runs.parquet")
    assert len(runs) == 8 and set(runs["status"]) == {"done"}
    assert runs["roles"].unique().tolist() == ['{"5.weight": "output", "6.weight": "hidden", "7.weight": "output"}']
    assert invoke("report", results).exit_code == 0
    inspected = invoke("inspect", exp, "--format", "json")
    assert inspected.exit_code == 0, inspected.output
    import json
    rows = {row["name"]: row for row in json.loads(inspected.output)["weights"]}
    assert (rows["6.weight"]["role"], rows["6.weight"]["found"]) == ("hidden", "set")
    assert (rows["3.weight"]["role"], rows["3.weight"]["found"]) == ("hidden", "shapes")


def test_a_builder_declaring_attn_scale_gets_mups_attention_multiplier(tmp_path):
    """1 under SP and at μP's base width; sqrt(base/width) above it, so that the attention's
    scale attn_scale/sqrt(d_head) goes as 1/d_head with the heads fixed."""
    spec = _builder(tmp_path, text="""
from torch import nn
SEEN = []

def build(width, depth, input_dim, output_dim, attn_scale=1.0):
    SEEN.append((width, attn_scale))
    return nn.Sequential(nn.Flatten(), nn.Linear(input_dim, width), nn.ReLU(), nn.Linear(width, width),
                         nn.ReLU(), nn.Linear(width, output_dim))
""")
    from lrtransfer.models import load_builder
    seen = load_builder(spec).function.__globals__["SEEN"]
    sizes = {"input_dim": IN, "output_dim": OUT}
    build_user(spec, 64, 1, sizes, {}, param="sp", base_width=16)
    assert seen[0] == (64, 1.0)
    seen.clear()
    build_user(spec, 64, 1, sizes, {}, param="mup", base_width=16)
    assert seen[0] == (64, pytest.approx(0.5))        # sqrt(16 / 64)
    assert (16, pytest.approx(1.0)) in seen            # the base build: SP's scale
    with pytest.raises(ConfigError, match="model.attn_scale: set by lrtransfer"):
        build_user(spec, 64, 1, sizes, {"attn_scale": 2.0}, param="sp")
