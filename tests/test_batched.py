"""Cells trained together (lrtransfer.run.batched) give each cell what it gets alone.

Batched matrix products sum in another order than one cell's, so the losses agree to float
rounding, not bit for bit; on 20-step runs the gap is ~1e-8 relative and the tests hold it to
1e-5 (longer runs amplify it where training is chaotic, the edge of stability included).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from lrtransfer.run.batched import bundle_key, bundle_size, execute_bundle
from lrtransfer.run.provenance import run_id
from lrtransfer.sweep.config import experiment_from_dict
from lrtransfer.run.train import execute

RTOL = 1e-5
TRAIN = {"steps": 20, "batch_size": 16, "log_every": 5, "final_k": 1, "eval_examples": 64}


def _images(root):
    """A two-class image folder: bright and dark 8x8 squares with noise."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):
        for cls, base in (("bright", 170), ("dark", 70)):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(base + rng.normal(0, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def _data(arch, tmp_path):
    if arch == "mlp":
        return {"dataset": "mnist1d", "samples": 600}, {"depth": 1, "block_depth": 1}
    if arch == "resnet":
        return {"dataset": "imagefolder", "path": str(_images(tmp_path / "img"))}, \
            {"depth": 1, "block_depth": 1, "downsample": 1}
    text = tmp_path / "book.txt"
    text.write_text("to be or not to be, that is the question. " * 40)
    return {"dataset": "text", "path": str(text), "context": 8}, {"depth": 1, "heads": 2}


def _cells(tmp_path, arch, lrs, seeds=(0, 1), **train):
    data, model = _data(arch, tmp_path)
    raw = {"data": data, "model": {"arch": arch, **model}, "train": {**TRAIN, **train},
           "grid": {"width": [16], "seed": list(seeds)}, "series": {"s": {"lr": list(lrs)}}}
    return [c.values for c in experiment_from_dict(raw, f"batched-{arch}").cells()]


def _same(alone, together):
    assert alone.row["status"] == together.row["status"]
    assert alone.row["steps_done"] == together.row["steps_done"]
    a, b = alone.curves["train_loss"].to_numpy(), together.curves["train_loss"].to_numpy()
    assert len(a) == len(b) and (len(a) > 0 or alone.row["status"] == "diverged")
    if len(a):
        np.testing.assert_allclose(b.astype(float), a.astype(float), rtol=RTOL)
    if alone.row["status"] == "done":
        assert math.isclose(together.row["final_test_loss"], alone.row["final_test_loss"], rel_tol=RTOL)
        assert together.row["final_test_acc"] == alone.row["final_test_acc"]
        assert math.isclose(together.row["final_train_loss"], alone.row["final_train_loss"], rel_tol=RTOL)


UPDATES = {"plain": dict(update="plain"), "normalize": dict(update="normalize"),
           "dualize": dict(update="dualize", optimizer="sgd", momentum=0.9)}
LRS = {"plain": (2 ** -8, 2 ** -6), "normalize": (2 ** -4, 2 ** -2), "dualize": (2 ** -4, 2 ** -2)}


@pytest.mark.parametrize("update", list(UPDATES))
@pytest.mark.parametrize("arch", ["mlp", "resnet", "gpt"])
def test_batched_cells_match_training_each_alone(tmp_path, arch, update):
    cells = _cells(tmp_path, arch, LRS[update], **UPDATES[update])
    assert len(cells) == 4 and len({bundle_key(v) for v in cells}) == 1
    together = execute_bundle(cells, "cpu")
    for values, result in zip(cells, together):
        assert result.row["bundle_size"] == 4 and result.run_id == run_id(values)
        _same(execute(values, "cpu"), result)


@pytest.mark.parametrize("train", [dict(optimizer="sgd", momentum=0.9, weight_decay=0.01, schedule="cosine"),
                                   dict(optimizer="sign", warmup=5), dict(optimizer="muon")],
                         ids=["sgd-decay-cosine", "sign-warmup", "muon"])
def test_batched_rules_schedules_and_decay_match_alone(tmp_path, train):
    """The stacked plain step (sgd, sign; per-cell decay) and a per-cell rule (Muon)."""
    cells = _cells(tmp_path, "mlp", (2 ** -7, 2 ** -5), **train)
    cells[1] = {**cells[1], "weight_decay": 0.05} if train["optimizer"] == "sgd" else cells[1]
    for values, result in zip(cells, execute_bundle(cells, "cpu")):
        _same(execute(values, "cpu"), result)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_batched_mup_decay_matches_alone(tmp_path, optimizer):
    """μP at 4× its base width with weight decay: the stacked plain step decays by lr·wd (the
    rule's decay multiplier, not the parametrization's LR multiplier) as the cell alone does."""
    data, model = _data("mlp", tmp_path)
    raw = {"data": data, "model": {"arch": "mlp", **model}, "train": {**TRAIN, "optimizer": optimizer},
           "grid": {"width": [16], "seed": [0]},
           "series": {"s": {"lr": [2 ** -7, 2 ** -5], "param": "mup", "base_width": 4, "weight_decay": 0.5}}}
    cells = [c.values for c in experiment_from_dict(raw, "batched-mup").cells()]
    cells[1] = {**cells[1], "weight_decay": 0.25}
    assert {c["base_width"] for c in cells} == {4} and len({bundle_key(v) for v in cells}) == 1
    for values, result in zip(cells, execute_bundle(cells, "cpu")):
        assert result.row["bundle_size"] == 2
        _same(execute(values, "cpu"), result)


def test_a_diverging_cell_stops_alone_and_the_rest_go_on(tmp_path):
    cells = _cells(tmp_path, "mlp", (2 ** -8, 2 ** 4), seeds=(0,), steps=30)
    together = execute_bundle(cells, "cpu")
    alone = [execute(v, "cpu") for v in cells]
    assert [r.row["status"] for r in alone] == ["done", "diverged"]
    for a, b in zip(alone, together):
        _same(a, b)
    assert together[1].row["diverged_at_step"] == alone[1].row["diverged_at_step"] < 29


def test_cells_of_another_shape_are_refused(tmp_path):
    cells = _cells(tmp_path, "mlp", (2 ** -8,), seeds=(0,))
    other = {**cells[0], "width": 32}
    assert bundle_key(other) != bundle_key(cells[0])
    with pytest.raises(ValueError, match="differ in more than"):
        execute_bundle([cells[0], other], "cpu")


def test_bundle_sizes_split_waiting_cells_evenly():
    assert [bundle_size(n, limit=12) for n in (0, 1, 12, 13, 24, 33)] == [0, 1, 12, 7, 12, 11]


def test_a_compiled_step_matches_the_eager_one(tmp_path):
    """compile = true: torch.compile'd forward and backward, the same losses to float tolerance."""
    pytest.importorskip("torch._inductor")
    values = _cells(tmp_path, "mlp", (2 ** -7,), seeds=(0,), steps=10)[0]
    eager = execute(values, "cpu")
    compiled = execute({**values, "compile": True}, "cpu")
    assert compiled.row["compiled"] is True and eager.row["compiled"] is False
    assert compiled.run_id == eager.run_id   # how a run executes is not what it computes
    _same(eager, compiled)
    torch._dynamo.reset()


@pytest.mark.parametrize("update", ["plain", "dualize"])
def test_bf16_autocast_trains_near_float32_and_batches(tmp_path, update):
    """dtype = "bf16-autocast": float32 weights, bfloat16 products (the GPU path, run on the CPU
    here): the losses stay within bfloat16's precision of float32's, batched or alone."""
    cells = _cells(tmp_path, "mlp", LRS[update][:1], **UPDATES[update])
    fp32 = execute(cells[0], "cpu")
    mixed = [{**v, "dtype": "bf16-autocast"} for v in cells]
    alone = execute(mixed[0], "cpu")
    assert alone.row["dtype"] == "bf16-autocast" and alone.run_id != fp32.run_id
    a, b = fp32.curves["train_loss"].to_numpy(float), alone.curves["train_loss"].to_numpy(float)
    assert not np.array_equal(a, b)                     # the products did run in bfloat16
    np.testing.assert_allclose(b, a, rtol=2e-2)         # bfloat16 keeps 8 bits of mantissa
    together = execute_bundle(mixed, "cpu")[0]
    np.testing.assert_allclose(together.curves["train_loss"].to_numpy(float), b, rtol=2e-2)


def test_jobs_are_handed_out_longest_first(monkeypatch):
    # probed step times make the order: the untimed shape first, then the wide cells alone
    # (5 ms × 10 steps each), the narrow bundle last (3 cells × 0.2 ms × 10 steps)
    from lrtransfer.run import batched
    narrow = [{"width": 8, "lr": lr, "steps": 10} for lr in (0.1, 0.2, 0.3)]
    wide = [{"width": 64, "lr": lr, "steps": 10} for lr in (0.1, 0.2)]
    untimed = [{"width": 16, "lr": 0.1, "steps": 10}]
    cells = narrow + wide + untimed
    monkeypatch.setattr(batched, "_STEP_SECONDS", {bundle_key(narrow[0]): (1e-3, 2e-4),
                                                   bundle_key(wide[0]): (5e-3, math.inf)})
    assert batched.longest_first(cells, [[0, 1, 2]]) == [[5], [3], [4], [0, 1, 2]]


def test_cells_are_enqueued_in_the_planned_order(tmp_path):
    from lrtransfer.sweep.queue import Queue, open_storage
    raw = {"data": {"dataset": "mnist1d", "samples": 600}, "model": {"arch": "mlp", "depth": 1}, "train": TRAIN,
           "grid": {"width": [8, 16]}, "series": {"adam": {"lr": [0.01, 0.1]}}}
    exp = experiment_from_dict(raw, "order")
    cells = exp.cells()
    queue = Queue(open_storage(None, tmp_path), "order")
    queue.enqueue(cells, set(), bundles=lambda values: [[3], [0, 2]])   # cell 1 was left out: it comes last
    waiting = [t.user_attrs["run_id"] for t in queue.trials()]
    assert waiting == [cells[k].run_id for k in (3, 0, 2, 1)]


def test_normalized_mlp_bundles_step_as_one_stacked_update(tmp_path):
    # the identity test above for mlp-normalize then checks StackedNormalized, not a fallback
    import torch
    from lrtransfer.run.batched import CellStack, stacked_update
    from lrtransfer.optim.stacked import StackedNormalized, StackedPlain
    from lrtransfer.run.train import Training
    kinds = {}
    for arch, update in (("mlp", "normalize"), ("mlp", "plain"), ("gpt", "normalize"), ("mlp", "dualize")):
        where = tmp_path / f"{arch}-{update}"
        where.mkdir()
        runs = [Training(v, torch.device("cpu")) for v in _cells(where, arch, LRS[update], **UPDATES[update])]
        kinds[arch, update] = type(stacked_update([r.opt for r in runs], CellStack(runs).params))
    assert kinds == {("mlp", "normalize"): StackedNormalized, ("mlp", "plain"): StackedPlain,
                     ("gpt", "normalize"): type(None), ("mlp", "dualize"): type(None)}
