"""Parametrizations: sp is torch's defaults, μP's multipliers are its table, modular is untouched."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrtransfer.errors import ConfigError
from lrtransfer.models import build
from lrtransfer.modular import CausalSelfAttention, Conv2D, Embed, Linear

MLP = dict(input_dim=40, output_dim=10)
GPT = dict(vocab_size=30, context=8)
RESNET = dict(in_channels=3, output_dim=10)


def test_modular_is_the_default_bit_for_bit():
    torch.manual_seed(3)
    a = build("mlp", 64, 2, **MLP)
    torch.manual_seed(3)
    b = build("mlp", 64, 2, param="modular", **MLP)
    assert all(torch.equal(x.weight, y.weight) and x.scale == y.scale for x, y in zip(a.atoms(), b.atoms()))


def test_sp_initial_weights_are_torch_defaults():
    torch.manual_seed(0)
    model = build("resnet", 32, 1, param="sp", **RESNET)
    for atom in model.atoms():
        w = atom.weight.detach()
        fan_in = w[0].numel()
        bound = 1 / math.sqrt(fan_in)
        assert atom.scale == 1.0 and atom.lr_mult == 1.0
        assert float(w.abs().max()) <= bound + 1e-7                  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert abs(float(w.std()) / (bound / math.sqrt(3)) - 1) < 0.15  # std of that uniform
    # the same draw as nn.Linear's own init from the same seed
    torch.manual_seed(5)
    ref = nn.Linear(16, 24, bias=False)
    lin = Linear(24, 16)
    torch.manual_seed(5)
    from lrtransfer.models.param import apply_param
    from lrtransfer.modular import Sequence
    apply_param(Sequence(lin), "sp")
    assert torch.equal(lin.weight, ref.weight)
    torch.manual_seed(0)
    gpt = build("gpt", 32, 1, param="sp", **GPT)
    emb = [a for a in gpt.atoms() if isinstance(a, Embed)]
    big = build("gpt", 256, 1, param="sp", vocab_size=200, context=8).atoms()[0].weight.detach()
    assert len(emb) == 2 and abs(float(big.std()) - 1) < 0.02      # nn.Embedding: N(0, 1)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_mup_multiplier_table_for_the_mlp(optimizer):
    model = build("mlp", 256, 2, param="mup", base_width=64, optimizer=optimizer, **MLP)
    got = [x for a in model.atoms() for x in (a.scale, a.lr_mult)]
    m = 256 / 64
    hidden = (1.0, 1 / m) if optimizer == "adam" else (1.0, 1.0)        # MuAdam 1/m_in; MuSGD m_out/m_in
    expected = [(1.0, 1.0 if optimizer == "adam" else m)] + [hidden] * 4 + [(1 / m, 1.0 if optimizer == "adam" else m)]
    assert got == pytest.approx([x for pair in expected for x in pair])


def test_mup_multiplier_table_for_gpt_and_resnet():
    gpt = build("gpt", 128, 1, param="mup", base_width=32, optimizer="adam", **GPT)
    roles = gpt.roles()
    table = [(r, a.scale, a.lr_mult) for r, a in zip(roles, gpt.atoms())]
    assert table[0] == ("input", 1.0, 1.0) and table[1] == ("input", 1.0, 1.0)     # token, position
    assert all(t == ("hidden", 1.0, 0.25) for t in table[2:-1])                    # fan_in ×4 (mlp 4w too)
    assert table[-1] == ("output", 0.25, 1.0)                                        # readout 1/m
    assert all(m.sqrt_scale is False for m in gpt.modules() if isinstance(m, CausalSelfAttention))
    res = build("resnet", 64, 1, param="mup", base_width=16, optimizer="sgd", **RESNET)
    got = [x for a in res.atoms() for x in (a.scale, a.lr_mult)]
    assert got == pytest.approx([1.0, 4.0, 1.0, 1.0, 1.0, 1.0, 0.25, 4.0])   # stem, 2 convs, head


def test_mup_at_its_base_width_is_sp():
    torch.manual_seed(1)
    a = build("gpt", 32, 1, param="sp", **GPT)
    torch.manual_seed(1)
    b = build("gpt", 32, 1, param="mup", base_width=32, **GPT)
    for x, y in zip(a.atoms(), b.atoms()):
        assert torch.equal(x.weight, y.weight) and x.scale == y.scale == 1.0 and y.lr_mult == 1.0
    # a different base width does not change the weights the seed draws (only multipliers)
    torch.manual_seed(1)
    c = build("gpt", 32, 1, param="mup", base_width=16, **GPT)
    assert all(torch.equal(x.weight, z.weight) for x, z in zip(a.atoms(), c.atoms()))


def test_sp_attention_uses_one_over_sqrt_d_head():
    torch.manual_seed(0)
    gpt = build("gpt", 32, 1, param="sp", heads=4, **GPT)
    att = next(m for m in gpt.modules() if isinstance(m, CausalSelfAttention))
    q, k, v = (torch.randn(2, 5, 32) for _ in range(3))
    split = lambda t: t.view(2, 5, 4, 8).transpose(1, 2)  # noqa: E731
    ref = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)  # torch's 1/sqrt(d)
    assert torch.allclose(att((q, k, v)), ref.transpose(1, 2).reshape(2, 5, 32), atol=1e-6)


def test_plain_steps_use_the_lr_multipliers():
    from lrtransfer.optim import make_optimizer
    torch.manual_seed(0)
    model = build("mlp", 128, 1, param="mup", base_width=32, **MLP)
    opt = make_optimizer(model, "sign", 0.01, schedule="constant")
    x, y = torch.randn(16, 40), torch.randint(0, 10, (16,))
    F.cross_entropy(model(x), y).backward()
    before = [a.weight.detach().clone() for a in model.atoms()]
    grads = [a.weight.grad.clone() for a in model.atoms()]
    opt.step()
    for w0, g, a in zip(before, grads, model.atoms()):
        assert torch.allclose(w0 - a.weight.detach(), 0.01 * a.lr_mult * torch.sign(g), atol=1e-8)


def test_unknown_parametrization_is_named():
    with pytest.raises(ConfigError, match="allowed: modular, sp, mup"):
        build("mlp", 32, 1, param="ntk", **MLP)
