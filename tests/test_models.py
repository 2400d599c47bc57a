"""The three families: shapes, width-independent activation RMS at init, and short training."""
import pytest
import torch
import torch.nn.functional as F

from lrtransfer.errors import ConfigError
from lrtransfer.models import build
from lrtransfer.optim import make_optimizer


def _make(arch, width, depth):
    if arch == "mlp":
        return build("mlp", width, depth, input_dim=20, output_dim=5), torch.randn(64, 20)
    if arch == "resnet":
        return build("resnet", width, depth, in_channels=3, output_dim=5, block_depth=1), torch.randn(16, 3, 16, 16)
    return build("gpt", width, depth, vocab_size=17, context=16, heads=4), torch.randint(0, 17, (16, 16))


def _residual_stream_rms(model, x):
    """RMS of the input to the head: the residual stream after the last block."""
    parts = list(model.parts)
    h = x
    for part in parts[:-1]:
        h = part(h)
    return float(h.detach().pow(2).mean().sqrt())


@pytest.mark.parametrize("arch", ["mlp", "resnet", "gpt"])
def test_forward_shapes_and_activation_rms_order_one(arch):
    rms = {}
    for width in (32, 128):
        for depth in (1, 4):
            model, x = _make(arch, width, depth)
            y = model(x)
            expected = (x.shape[0], 5) if arch != "gpt" else (16, 16, 17)
            assert tuple(y.shape) == expected
            assert torch.isfinite(y).all()
            rms[width, depth] = _residual_stream_rms(model, x)
    for (width, depth), r in rms.items():
        assert 0.1 < r < 10, (arch, width, depth, r)
    for depth in (1, 4):  # independent of width: same order at 32 and 128 channels
        ratio = rms[128, depth] / rms[32, depth]
        assert 0.5 < ratio < 2.0, (arch, depth, ratio)


def _task(arch):
    g = torch.Generator().manual_seed(0)
    if arch == "mlp":
        x = torch.randn(256, 20, generator=g)
        y = (x[:, :5]).argmax(1)
    elif arch == "resnet":
        y = torch.randint(0, 5, (64,), generator=g)
        x = torch.randn(64, 3, 16, 16, generator=g) * 0.5
        x[torch.arange(64), y % 3] += 1.0  # class shows in a channel's brightness
    else:
        base = torch.arange(17).repeat(4)[:17 * 3]  # a repeating sequence: next token = token + 1
        starts = torch.randint(0, 17, (32,), generator=g)
        x = torch.stack([base[s:s + 17] for s in starts])
        x, y = x[:, :16], x[:, 1:]
    return x, y


def _loss(arch, model, x, y):
    out = model(x)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _eval(arch, model, x, y):
    with torch.no_grad():
        return float(_loss(arch, model, x, y))


@pytest.mark.parametrize("arch", ["mlp", "resnet", "gpt"])
@pytest.mark.parametrize("optimizer,normalize,lr", [("adam", False, 3e-3), ("adam", True, 0.5), ("sgd", True, 0.5)])
def test_short_training_lowers_loss(arch, optimizer, normalize, lr):
    torch.manual_seed(0)
    model, _ = _make(arch, 32, 2)
    x, y = _task(arch)
    opt = make_optimizer(model, optimizer, lr, normalize=normalize, schedule="linear", steps=40)
    start = _eval(arch, model, x, y)
    for _ in range(40):
        loss = _loss(arch, model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = _eval(arch, model, x, y)
    assert end < 0.7 * start, (start, end)


def test_build_rejects_bad_input():
    with pytest.raises(ConfigError, match="unknown architecture 'vit'.*mlp, resnet, gpt"):
        build("vit", 8, 1)
    with pytest.raises(ConfigError, match="model.width: must be a positive integer, got 0"):
        build("mlp", 0, 1, input_dim=3, output_dim=2)
    with pytest.raises(ConfigError, match="unknown option.*colour"):
        build("mlp", 8, 1, input_dim=3, output_dim=2, colour=1)
    with pytest.raises(ConfigError, match="needs vocab_size"):
        build("gpt", 8, 1, context=4)
    with pytest.raises(ConfigError, match="divisible by heads"):
        build("gpt", 10, 1, vocab_size=5, context=4, heads=4)


def test_torch_compile_captures_the_whole_model():
    # fullgraph=True fails on any graph break: the algebra is plain traceable torch code
    model = build("gpt", 32, 1, vocab_size=17, context=16, heads=4)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randint(0, 17, (4, 16))
    assert torch.allclose(compiled(x), model(x), atol=1e-5)
    compiled(x).sum().backward()
    assert all(a.weight.grad is not None for a in model.atoms())
