"""μP's steps against the ``mup`` package itself (the peer): the same MLP built in lrtransfer
(param = "mup") and in torch with ``set_base_shapes`` + ``MuReadout``, the same weights and
gradients, one step of each optimizer. MuAdamW and MuSGD decay by lr·wd at every width (a
matrix-like group's lr ÷ r with its wd × r), so a zero gradient shows the decay alone and a
real one the whole step. At the base width every multiplier is 1; at 4× it is not."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

mup = pytest.importorskip("mup")

from lrtransfer.models import build  # noqa: E402
from lrtransfer.optim import OPTIMIZERS, make_optimizer  # noqa: E402

BASE, IN, OUT, DEPTH = 16, 40, 10, 1
LR = {"adam": 0.01, "sgd": 0.05}
WD = 2.0   # lr·wd = 0.02 (Adam): large enough that the old lr·lr_mult·wd decay is far off


class _TorchMLP(nn.Module):
    """The lrtransfer MLP's weights as torch layers, in ``atoms()`` order (only the shapes and
    the order matter to the optimizers; no forward pass is compared)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(IN, width, bias=False)]
                                    + [nn.Linear(width, width, bias=False) for _ in range(hidden)]
                                    + [mup.MuReadout(width, OUT, bias=False)])


def _pair(width: int, optimizer: str):
    """(lrtransfer model, the torch/mup model with its weights copied in)."""
    torch.manual_seed(0)
    ours = build("mlp", width, DEPTH, param="mup", base_width=BASE, mup_rule=OPTIMIZERS[optimizer].mup,
                 input_dim=IN, output_dim=OUT)
    hidden = len(ours.atoms()) - 2
    peer = _TorchMLP(width, hidden)
    mup.set_base_shapes(peer, _TorchMLP(BASE, hidden))
    with torch.no_grad():
        for atom, layer in zip(ours.atoms(), peer.layers):
            assert layer.weight.shape == atom.weight.shape
            layer.weight.copy_(atom.weight)
    return ours, peer


def _grads(ours, real: bool) -> list[torch.Tensor]:
    if not real:
        return [torch.zeros_like(a.weight) for a in ours.atoms()]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, IN, generator=g), torch.randint(0, OUT, (32,), generator=g)
    F.cross_entropy(ours(x), y).backward()
    grads = [a.weight.grad.detach().clone() for a in ours.atoms()]
    for a in ours.atoms():
        a.weight.grad = None
    return grads


def _step_both(width: int, optimizer: str, real: bool):
    ours, peer = _pair(width, optimizer)
    grads = _grads(ours, real)
    before = [a.weight.detach().clone() for a in ours.atoms()]
    for atom, layer, g in zip(ours.atoms(), peer.layers, grads):
        atom.weight.grad = g.clone()
        layer.weight.grad = g.clone()
    one_step(ours, peer.parameters(), optimizer)
    return ours, peer, before


def one_step(ours, peer_params, optimizer: str) -> None:
    """One step of lrtransfer's ``optimizer`` on ``ours`` and of the mup package's (MuAdamW,
    MuSGD) on ``peer_params``, from the gradients each holds, with the same settings."""
    if optimizer == "adam":
        make_optimizer(ours, "adam", LR["adam"], weight_decay=WD, schedule="constant",
                       beta1=0.9, beta2=0.99, eps=1e-8).step()
        mup.MuAdamW(peer_params, lr=LR["adam"], weight_decay=WD, betas=(0.9, 0.99), eps=1e-8).step()
    else:
        make_optimizer(ours, "sgd", LR["sgd"], weight_decay=WD, schedule="constant", momentum=0.9).step()
        mup.MuSGD(peer_params, lr=LR["sgd"], weight_decay=WD, momentum=0.9).step()


@pytest.mark.parametrize("real", [False, True], ids=["zero-grad", "real-grad"])
@pytest.mark.parametrize("width", [BASE, 4 * BASE])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_one_step_matches_the_mup_package(optimizer, width, real):
    ours, peer, before = _step_both(width, optimizer, real)
    for k, (atom, layer) in enumerate(zip(ours.atoms(), peer.layers)):
        torch.testing.assert_close(atom.weight.detach(), layer.weight.detach(), rtol=0, atol=1e-6,
                                   msg=f"atom {k} ({ours.roles()[k]}) at width {width}")
    if not real:   # pure decay: w·(1 − lr·wd) on every atom, whatever its LR multiplier
        for atom, w0 in zip(ours.atoms(), before):
            torch.testing.assert_close(atom.weight.detach(), w0 * (1 - LR[optimizer] * WD), rtol=0, atol=1e-7)


def test_the_old_decay_would_differ_from_the_package_at_four_times_the_base():
    """The check above can fail: decaying by lr·lr_mult·wd (as before issue 23) moves the
    hidden weights (Adam: lr_mult 1/4) and the readout (SGD: lr_mult 4) visibly off."""
    for optimizer, role in (("adam", "hidden"), ("sgd", "output")):
        ours, peer, before = _step_both(4 * BASE, optimizer, real=False)
        k = ours.roles().index(role)
        mult = ours.atoms()[k].lr_mult
        assert mult != 1.0
        old = before[k] * (1 - LR[optimizer] * mult * WD)
        assert (old - peer.layers[k].weight.detach()).abs().max() > 1e-4
