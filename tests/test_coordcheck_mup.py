"""The coordinate check's per-layer activation statistic against the ``mup`` package's own
coord check (``mup.coord_check.get_coord_data``): the same ResMLP, built in lrtransfer
(param = "sp" / "mup") and as a torch module (``MuReadout`` + ``set_base_shapes`` for μP) with
lrtransfer's weights copied in, trained on the same fixed batch with the same Adam (MuAdam /
torch's Adam against lrtransfer's adam). mup records ``l1`` = mean |output| of each layer in
the forward of step t = 1 … nsteps, before that step's update: lrtransfer's step t − 1."""
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

mup = pytest.importorskip("mup")
from mup.coord_check import get_coord_data  # noqa: E402

from lrtransfer.analysis.coordcheck import _Probe, _train_probed  # noqa: E402
from lrtransfer.models import build  # noqa: E402
from lrtransfer.optim import make_optimizer  # noqa: E402

BASE, IN, OUT, DEPTH, BLOCK_DEPTH = 16, 40, 10, 2, 2
WIDTHS = [16, 32, 64, 128]
STEPS, LR = 4, 2.0 ** -6


class _TorchResMLP(nn.Module):
    """lrtransfer's ResMLP (models/mlp.py, norm "pre") in plain torch: input Linear, ``DEPTH``
    residual blocks x ← (1 − 1/L)·x + (1/L)·f(x), f = ``BLOCK_DEPTH`` × [LayerNorm, Linear,
    √2·relu], then LayerNorm and the readout (``MuReadout`` for μP). ``layers`` in the order
    of lrtransfer's ``atoms()``."""

    def __init__(self, width: int, mup_readout: bool):
        super().__init__()
        readout = mup.MuReadout(width, OUT, bias=False) if mup_readout else nn.Linear(width, OUT, bias=False)
        self.layers = nn.ModuleList([nn.Linear(IN, width, bias=False)]
                                    + [nn.Linear(width, width, bias=False) for _ in range(DEPTH * BLOCK_DEPTH)]
                                    + [readout])

    def forward(self, x):
        def norm(h):
            return F.layer_norm(h, h.shape[-1:], eps=1e-12)   # lrtransfer's LayerNorm: no affine
        x = self.layers[0](x.flatten(1))
        k = 1
        for _ in range(DEPTH):
            h = x
            for _ in range(BLOCK_DEPTH):
                h = F.relu(self.layers[k](norm(h))) * math.sqrt(2)
                k += 1
            x = (1 - 1 / DEPTH) * x + (1 / DEPTH) * h
        return self.layers[k](norm(x))


def _ours(width: int, param: str):
    torch.manual_seed(width)
    return build("mlp", width, DEPTH, param=param, base_width=BASE, mup_rule="adam", input_dim=IN,
                 output_dim=OUT, block_depth=BLOCK_DEPTH)


def _peer(weights: list[torch.Tensor], param: str) -> nn.Module:
    width = weights[0].shape[0]
    peer = _TorchResMLP(width, mup_readout=param == "mup")
    if param == "mup":   # before the copy: set_base_shapes rescales MuReadout's init by √m
        mup.set_base_shapes(peer, _TorchResMLP(BASE, True), delta=_TorchResMLP(2 * BASE, True))
    with torch.no_grad():
        for layer, w in zip(peer.layers, weights):
            layer.weight.copy_(w)
    return peer


def _batch():
    g = torch.Generator().manual_seed(7)
    return torch.randn(64, IN, generator=g), torch.randint(0, OUT, (64,), generator=g)


def _lrtransfer_l1(param: str) -> pd.DataFrame:
    """lrtransfer's check on the batch: l1 of every atom's output at steps 0 … STEPS − 1."""
    x, y = _batch()
    rows = []
    for width in WIDTHS:
        model = _ours(width, param)
        opt = make_optimizer(model, "adam", LR, weight_decay=0.0, schedule="constant",
                             beta1=0.9, beta2=0.999, eps=1e-8)   # torch's Adam defaults, as mup uses
        probe = _Probe(model, width, seed=0)
        try:
            assert _train_probed(model, opt, x, y, STEPS, probe) is None
        finally:
            probe.remove()
        rows += [r for r in probe.records if r["quantity"] == "output_rms"]
    t = pd.DataFrame(rows)
    t = t[t["step"] < STEPS]
    return t.set_index(["width", "atom_index", "step"])["l1"].sort_index()


def _mup_l1(param: str) -> pd.Series:
    """mup's coord check of the same models (weights copied from lrtransfer's at init)."""
    x, y = _batch()
    models = {}
    for width in WIDTHS:
        weights = [a.weight.detach().clone() for a in _ours(width, param).atoms()]
        models[width] = (lambda w=weights: _peer(w, param))
    df = get_coord_data(models, [(x, y)], optimizer="adam", lr=LR, mup=param == "mup", nsteps=STEPS,
                        cuda=False, nseeds=1, show_progress=False,
                        filter_module_by_name=lambda name: name.startswith("layers."))
    df["atom_index"] = df["module"].str.removeprefix("layers.").astype(int)
    df["step"] = df["t"] - 1   # mup's t: the forward of the t-th step, before its update
    return df.set_index(["width", "atom_index", "step"])["l1"].sort_index()


@pytest.mark.parametrize("param", ["sp", "mup"])
def test_the_torch_twin_computes_the_same_function(param):
    x, _ = _batch()
    for width in (BASE, 4 * BASE):
        ours = _ours(width, param)
        peer = _peer([a.weight.detach().clone() for a in ours.atoms()], param)
        with torch.no_grad():
            torch.testing.assert_close(peer(x), ours(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("param", ["sp", "mup"])
def test_activation_l1_matches_mups_coord_check(param):
    ours, theirs = _lrtransfer_l1(param), _mup_l1(param)
    assert list(ours.index) == list(theirs.index)
    assert len(ours) == len(WIDTHS) * (2 + DEPTH * BLOCK_DEPTH) * STEPS
    torch.testing.assert_close(torch.tensor(ours.to_numpy()), torch.tensor(theirs.to_numpy()), rtol=1e-5, atol=0)


def test_sp_and_mup_differ_where_the_check_can_tell():
    """The comparison can fail: SP's and μP's coordinates differ (so matching mup's numbers for
    both is not a coincidence of the two parametrizations agreeing)."""
    sp, mu = _lrtransfer_l1("sp"), _lrtransfer_l1("mup")
    readout = sp.xs(2 + DEPTH * BLOCK_DEPTH - 1, level="atom_index")
    assert (readout / mu.xs(2 + DEPTH * BLOCK_DEPTH - 1, level="atom_index")).loc[WIDTHS[-1]].min() > 2
