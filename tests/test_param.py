"""Parametrizations (models/param.py) against exact math: sp is torch's defaults draw for draw,
μP's multipliers are its table (Tensor Programs V, Table 8 / the ``mup`` package), modular is
untouched, μP at its base width is sp, and the attention scales are what they claim."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrtransfer.errors import ConfigError
from lrtransfer.models import FAMILIES, build, options
from lrtransfer.optim import OPTIMIZERS
from lrtransfer.models.param import PARAMS, apply_param
from lrtransfer.modular import CausalSelfAttention, Conv2D, Embed, Linear

MLP = dict(input_dim=40, output_dim=10)
GPT = dict(vocab_size=30, context=8)
RESNET = dict(in_channels=3, output_dim=10, block_depth=1)
KW = {"mlp": MLP, "resnet": RESNET, "gpt": GPT}


def _input(arch, seed=0):
    g = torch.Generator().manual_seed(seed)
    if arch == "mlp":
        return torch.randn(4, 40, generator=g)
    if arch == "resnet":
        return torch.randn(2, 3, 8, 8, generator=g)
    return torch.randint(0, 30, (2, 8), generator=g)


def _seeded(seed, arch, width, depth=1, **kw):
    torch.manual_seed(seed)
    return build(arch, width, depth, **KW[arch], **kw)


# -- sp: torch's own defaults -----------------------------------------------------------------

@pytest.mark.parametrize("make, ref", [
    (lambda: Linear(48, 32), lambda: nn.Linear(32, 48, bias=False)),
    (lambda: Conv2D(12, 5, 3), lambda: nn.Conv2d(5, 12, 3, bias=False)),
    (lambda: Embed(30, 16), lambda: nn.Embedding(30, 16)),
])
def test_sp_draws_exactly_what_the_torch_layer_draws(make, ref):
    atom = make()                 # its own (modular) init comes first and is thrown away
    torch.manual_seed(11)
    expected = ref().weight.detach()
    torch.manual_seed(11)
    apply_param(atom, "sp")
    assert torch.equal(atom.weight.detach(), expected)
    assert atom.scale == 1.0 and atom.lr_mult == 1.0


@pytest.mark.parametrize("arch", ["mlp", "resnet"])
def test_sp_weight_statistics_are_torch_defaults(arch):
    model = _seeded(0, arch, 128)
    sp = _seeded(0, arch, 128, param="sp")
    assert [type(a) for a in sp.atoms()] == [type(a) for a in model.atoms()]
    for atom in sp.atoms():
        w = atom.weight.detach()
        fan_in = w[0].numel()                                     # d_in, or c_in·k·k
        bound = 1 / math.sqrt(fan_in)                             # kaiming_uniform_(a=√5)
        assert atom.scale == 1.0 and atom.lr_mult == 1.0
        assert float(w.abs().max()) <= bound                      # U(-bound, bound) ...
        assert float(w.abs().max()) > 0.99 * bound                # ... filling the interval
        n = w.numel()
        assert abs(float(w.mean())) < 5 * bound / math.sqrt(3 * n)
        # std of U(±b) is b/√3; the sample std's relative s.e. is √(0.8/(4n)) ≈ 0.45/√n
        assert abs(float(w.std()) * math.sqrt(3) / bound - 1) < 6 * 0.45 / math.sqrt(n) + 1e-3
    assert any(isinstance(a, Conv2D) for a in sp.atoms()) == (arch == "resnet")


def test_sp_embeddings_are_standard_normal():
    model = build("gpt", 256, 1, param="sp", vocab_size=200, context=64)
    embeds = [a for a in model.atoms() if isinstance(a, Embed)]
    assert len(embeds) == 2
    for e in embeds:
        w = e.weight.detach()
        assert e.scale == 1.0
        se = 1 / math.sqrt(w.numel())
        assert abs(float(w.mean())) < 6 * se and abs(float(w.std()) - 1) < 6 * se * math.sqrt(0.5)


def test_sp_attention_is_one_over_sqrt_d_head_as_torch_defaults():
    model = _seeded(0, "gpt", 32, param="sp", heads=4)
    att = next(m for m in model.modules() if isinstance(m, CausalSelfAttention))
    q, k, v = (torch.randn(2, 5, 32) for _ in range(3))
    split = lambda t: t.view(2, 5, 4, 8).transpose(1, 2)  # noqa: E731
    ref = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)  # scale None: 1/√d
    assert torch.allclose(att((q, k, v)), ref.transpose(1, 2).reshape(2, 5, 32), atol=1e-6)
    # and not the algebra's 1/d_head
    modular = next(m for m in _seeded(0, "gpt", 32, heads=4).modules() if isinstance(m, CausalSelfAttention))
    assert not torch.allclose(modular((q, k, v)), att((q, k, v)), atol=1e-3)


def _attention_by_hand(q, k, v, heads, scale):
    B, T, D = q.shape
    q, k, v = (t.view(B, T, heads, D // heads).transpose(1, 2) for t in (q, k, v))
    logits = (q @ k.transpose(-1, -2)) * scale
    logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)


@pytest.mark.parametrize("param, base_width, scale", [
    ("modular", None, 1 / 16),                     # d_head = 64/4 = 16: the algebra's 1/d_head
    ("sp", None, 1 / 4),                           # 1/√16
    ("mup", 16, math.sqrt(4) / 16),                # base d_head 4: √4/16, ∝ 1/d_head
    ("mup", 64, 1 / 4),                            # at its base width μP is sp
])
def test_attention_softmax_scale_per_parametrization(param, base_width, scale):
    model = _seeded(0, "gpt", 64, param=param, base_width=base_width, heads=4)
    att = next(m for m in model.modules() if isinstance(m, CausalSelfAttention))
    q, k, v = (torch.randn(2, 6, 64, dtype=torch.float64) for _ in range(3))
    assert torch.allclose(att((q, k, v)), _attention_by_hand(q, k, v, 4, scale), atol=1e-10)


# -- μP: the multiplier table ----------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adam", "sign", "sgd", "muon"])
def test_mup_table_for_the_mlp(optimizer):
    m = 256 / 64
    model = build("mlp", 256, 2, param="mup", base_width=64, mup_rule=OPTIMIZERS[optimizer].mup, **MLP)
    assert model.roles() == ["input"] + ["hidden"] * 4 + ["output"]
    lr = {"adam": (1, 1 / m, 1), "sign": (1, 1 / m, 1), "sgd": (m, 1, m), "muon": (1, 1, 1)}[optimizer]
    expected = [(1.0, lr[0])] + [(1.0, lr[1])] * 4 + [(1 / m, lr[2])]   # (forward mult, lr mult)
    assert [(a.scale, a.lr_mult) for a in model.atoms()] == expected     # exact: powers of two


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_mup_table_for_the_resnet(optimizer):
    m = 64 / 16
    model = build("resnet", 64, 1, param="mup", base_width=16, mup_rule=OPTIMIZERS[optimizer].mup, **RESNET)
    assert model.roles() == ["input", "hidden", "output"]                # stem, 1 conv, head
    assert [type(a) for a in model.atoms()] == [Conv2D, Conv2D, Linear]
    lr = (1, 1 / m, 1) if optimizer == "adam" else (m, 1, m)
    assert [(a.scale, a.lr_mult) for a in model.atoms()] == [(1.0, lr[0]), (1.0, lr[1]), (1 / m, lr[2])]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_mup_table_for_gpt(optimizer):
    m = 128 / 32
    model = build("gpt", 128, 1, param="mup", base_width=32, mup_rule=OPTIMIZERS[optimizer].mup, **GPT)
    r = model.roles()
    # token and position embeddings; q, k, v, the attention's output, the MLP's two; the head
    assert r == ["input", "input"] + ["hidden"] * 6 + ["output"]
    lr = (1, 1 / m, 1) if optimizer == "adam" else (m, 1, m)  # MLP up: m_out/m_in = 4w/(4·w_b)/m = 1
    expected = [(1.0, lr[0])] * 2 + [(1.0, lr[1])] * 6 + [(1 / m, lr[2])]
    assert [(a.scale, a.lr_mult) for a in model.atoms()] == expected


def test_mup_weights_are_sp_weights_and_the_readout_is_rescaled():
    """set_base_shapes(rescale_params=True): the readout ×√width_mult (init variance constant
    in width), everything else torch's default, the same draws as sp; base width free."""
    for arch, width, base in (("mlp", 256, 64), ("resnet", 32, 8), ("gpt", 64, 16)):
        sp = _seeded(3, arch, width, param="sp")
        after_sp = torch.rand(3)
        mup = _seeded(3, arch, width, param="mup", base_width=base)
        after_mup = torch.rand(3)
        assert torch.equal(after_sp, after_mup)        # the base model took nothing from the stream
        a, b = sp.atoms(), mup.atoms()
        for x, y in zip(a[:-1], b[:-1]):
            assert torch.equal(x.weight, y.weight)
        assert torch.equal(b[-1].weight, a[-1].weight * math.sqrt(width / base))  # √4 = 2: exact


def test_mup_coordinates_update_at_a_width_independent_size():
    """μP's point (the coord check): after one step at one LR, every atom's own change of its
    output, ΔW·x, has an RMS that does not shrink or grow with width. The Muon row would
    fall like 1/width if its hidden atoms also took MuAdam's 1/m_in."""
    def delta_wx(width, optimizer):
        from lrtransfer.optim import make_optimizer
        model = _seeded(0, "mlp", width, param="mup", base_width=64, mup_rule=OPTIMIZERS[optimizer].mup)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(32, 40, generator=g), torch.randint(0, 10, (32,), generator=g)
        inputs = {}
        hooks = [a.register_forward_hook(lambda mod, i, o, k=k: inputs.__setitem__(k, i[0].detach()))
                 for k, a in enumerate(model.atoms())]
        F.cross_entropy(model(x), y).backward()
        for h in hooks:
            h.remove()
        w0 = [a.weight.detach().clone() for a in model.atoms()]
        make_optimizer(model, optimizer, 0.01, schedule="constant").step()
        return [float((F.linear(inputs[k], a.weight.detach() - w0[k]) * a.scale).pow(2).mean().sqrt())
                for k, a in enumerate(model.atoms())]

    for optimizer in ("adam", "sign", "muon", "sgd"):
        small, large = delta_wx(64, optimizer), delta_wx(512, optimizer)
        slopes = [math.log(b / a) / math.log(8) for a, b in zip(small, large)]
        assert all(abs(s) < 0.35 for s in slopes), (optimizer, slopes)


def test_mup_at_its_base_width_is_sp_exactly():
    for arch in ("mlp", "resnet", "gpt"):
        x = _input(arch)
        sp = _seeded(1, arch, 32, param="sp")
        for base_width, optimizer in ((None, "adam"), (32, "sgd")):
            mup = _seeded(1, arch, 32, param="mup", base_width=base_width, mup_rule=OPTIMIZERS[optimizer].mup)
            for a, b in zip(sp.atoms(), mup.atoms()):
                assert torch.equal(a.weight, b.weight)
                assert a.scale == b.scale == 1.0 and a.lr_mult == b.lr_mult == 1.0
            with torch.no_grad():
                assert torch.equal(sp(x), mup(x))              # the attention's scale included


def test_base_width_above_width_gives_multipliers_below_one():
    model = build("mlp", 64, 1, param="mup", base_width=256, **MLP)
    assert [(a.scale, a.lr_mult) for a in model.atoms()] == [(1.0, 1.0), (1.0, 4.0), (1.0, 4.0), (4.0, 1.0)]


# -- modular: untouched -----------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["mlp", "resnet", "gpt"])
def test_modular_is_the_default_bit_for_bit(arch):
    x = _input(arch)
    torch.manual_seed(7)
    raw = FAMILIES[arch].builder(32, 2, **KW[arch])           # the architecture function, no build at all
    plain = _seeded(7, arch, 32, depth=2)
    explicit = _seeded(7, arch, 32, depth=2, param="modular", base_width=16, mup_rule="sgd")
    for a, b, c in zip(raw.atoms(), plain.atoms(), explicit.atoms()):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.weight, c.weight)
        assert a.scale == b.scale == c.scale and a.lr_mult == b.lr_mult == c.lr_mult == 1.0
    with torch.no_grad():
        assert torch.equal(raw(x), plain(x)) and torch.equal(raw(x), explicit(x))
    for m in explicit.modules():
        if isinstance(m, CausalSelfAttention):
            assert m.softmax_scale(8) == 1 / 8


# -- the API and its refusals -----------------------------------------------------------------

def test_roles_follow_the_spec():
    assert PARAMS == ("modular", "sp", "mup")
    assert build("mlp", 16, 3, **MLP).roles() == ["input"] + ["hidden"] * 6 + ["output"]
    assert Linear(4, 3).roles() == ["input"]                 # a lone atom reads the data
    gpt = _seeded(0, "gpt", 16)
    assert gpt.roles()[:2] == ["input", "input"] and gpt.roles()[-1] == "output"  # token, position embeddings


def test_options_do_not_list_the_run_keys():
    for arch in FAMILIES:
        assert not {"param", "base_width", "mup_rule"} & set(options(arch))


@pytest.mark.parametrize("kw, match", [
    (dict(param="ntk"), r"'ntk'.*allowed: modular, sp, mup"),
    (dict(param="mup", base_width=16, mup_rule="lbfgs"), r"'lbfgs'.*allowed: adam, sgd, muon"),
    (dict(param="mup", base_width=0), r"base_width.*0"),
    (dict(param="mup", base_width=16.0), r"base_width.*16\.0"),
    (dict(param="sp", base_width=-2), r"base_width.*-2"),
])
def test_nonsense_is_refused_by_name(kw, match):
    with pytest.raises(ConfigError, match=match):
        build("mlp", 32, 1, **MLP, **kw)


def test_a_base_width_the_architecture_cannot_take_is_named():
    with pytest.raises(ConfigError, match=r"base_width 30.*divisible by heads=4"):
        build("gpt", 32, 1, param="mup", base_width=30, **GPT)


def test_apply_param_refuses_a_base_of_another_architecture():
    model = build("mlp", 32, 2, **MLP)
    before = [a.weight.detach().clone() for a in model.atoms()]
    with pytest.raises(ValueError, match="base"):
        apply_param(model, "mup", base_model=build("mlp", 16, 1, **MLP))
    with pytest.raises(ValueError, match="'fancy'.*allowed"):
        apply_param(model, "fancy")
    assert all(torch.equal(b, a.weight) for b, a in zip(before, model.atoms()))  # nothing touched


def test_a_plain_step_uses_the_lr_multipliers():
    from lrtransfer.optim import make_optimizer
    model = _seeded(0, "mlp", 128, param="mup", base_width=32, mup_rule=OPTIMIZERS["sign"].mup)
    assert {a.lr_mult for a in model.atoms()} == {1.0, 0.25}
    opt = make_optimizer(model, "sign", 0.01, schedule="constant")
    x, y = torch.randn(16, 40), torch.randint(0, 10, (16,))
    F.cross_entropy(model(x), y).backward()
    before = [a.weight.detach().clone() for a in model.atoms()]
    grads = [a.weight.grad.clone() for a in model.atoms()]
    opt.step()
    for w0, g, a in zip(before, grads, model.atoms()):
        assert torch.allclose(w0 - a.weight.detach(), 0.01 * a.lr_mult * torch.sign(g), atol=1e-8)
