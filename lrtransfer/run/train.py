"""One training run: a pure function of its resolved config (seed and thread count inside it).

``execute(values, device)`` builds the model and optimizer the config describes, trains,
and returns a ``RunResult`` with one summary row (every config field plus the metrics and
provenance) and the logged curve. Divergence is data: a non-finite loss or update, or a loss
above ``diverge_factor`` × the first loss, stops the run with status "diverged" and the step.

``Training`` is one run in progress (its build, divergence checks, logging, evaluation and
row); ``execute`` drives one alone, ``lrtransfer.run.batched.execute_bundle`` several together.
The sweep's workers train through those two, ``tune`` through ``execute``. ``Training`` sets torch's thread
count from the config (``threads``): float reductions split across threads sum in another
order, so the same cell on 1 and 2 threads gives different losses.
"""
from __future__ import annotations

import contextlib
import json
import math
import platform
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd
import torch
import torch.nn.functional as F

import lrtransfer

from ..data import Dataset, load
from .diagnostics import Diagnostics
from ..models import build, build_user, is_builder, load_builder, options
from ..optim import OPTIMIZERS, Diverged, lr_for_elr, make_optimizer, sphere_radius
from ..optim.constraint import fix_head
from ..errors import UserError
from .provenance import code_fingerprint, git_state, machine, run_id
from . import spec
from .spec import optimizer_options

# the parameters' dtype per `dtype` key; bf16-autocast keeps float32 weights (see autocast)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
           "bf16-autocast": torch.float32}


def autocast(values: dict, device: torch.device):
    """The precision context of a run's forward pass: bfloat16 matrix products over float32
    weights for ``dtype = "bf16-autocast"`` (torch.autocast), else nothing."""
    if values.get("dtype") == "bf16-autocast":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class RunResult:
    row: dict
    curves: pd.DataFrame
    diagnostics: pd.DataFrame | None = None   # per-atom rows (diagnostics.py); None when off

    @property
    def run_id(self) -> str:
        return self.row["run_id"]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise UserError(f"--device {device!r}: allowed: auto, cpu, cuda, cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine; use cpu or auto")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(device)


def data_options(values: dict) -> tuple[str, dict]:
    opts = {k[5:]: v for k, v in values.items() if k.startswith("data.")}
    return opts.pop("dataset"), opts


_DATA_CACHE: dict = {}


def dataset_for(values: dict, device: torch.device) -> Dataset:
    """The run's dataset, loaded once per process and data config, already on ``device``."""
    name, opts = data_options(values)
    key = (name, tuple(sorted((k, repr(v)) for k, v in opts.items())), str(device))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # one dataset at a time: experiments rarely vary data within a grid
        # Preprocessing reduces over the data (standardization), and a reduction split across
        # threads sums in another order: load on one thread whoever asks first, so the data a
        # run sees never depends on the process's thread count (or on --jobs).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _DATA_CACHE[key] = load(name, **opts).to(device)
        finally:
            torch.set_num_threads(threads)
    return _DATA_CACHE[key]


def model_for(values: dict, ds: Dataset):
    """The run's model: its architecture options, the sizes the data fixes, its parametrization."""
    param = values.get("param", "modular")
    if is_builder(values["arch"]):
        model = build_user(values.get("builder") or values["arch"], values["width"], values["depth"],
                           ds.model_sizes(), builder_keys(values), param=param,
                           base_width=values.get("base_width") or None, mup_rule=OPTIMIZERS[values["optimizer"]].mup,
                           condition=values.get("condition", False), roles=_roles(values))
        check_output(model, ds, values)
        return model
    allowed = options(values["arch"])
    kw = {k: v for k, v in values.items() if k in allowed}
    kw.update({k: v for k, v in ds.model_sizes().items() if k in allowed})
    if param != "modular":
        kw.update(param=param, base_width=values.get("base_width") or None,
                  mup_rule=OPTIMIZERS[values["optimizer"]].mup)
    return build(values["arch"], values["width"], values["depth"], condition=values.get("condition", False), **kw)


def _roles(values: dict) -> dict | None:
    """[model] roles of a run: a JSON object in its values (sweep/config.py), or a table."""
    roles = values.get("roles")
    return json.loads(roles) if isinstance(roles, str) else (roles or None)


def builder_keys(values: dict) -> dict:
    """The [model] keys a user's builder takes, from a run's values: those it declares (with
    ``**kwargs``, every key that is not lrtransfer's own)."""
    builder = load_builder(values.get("builder") or values["arch"])
    if builder.takes_any():
        own = set(spec.BY_NAME) | {"series", "builder", "roles", "data_fingerprint", "code_fingerprint",
                                   "model_fingerprint"}
        return {k: v for k, v in values.items() if k not in own and not k.startswith("data.")}
    return {k: values[k] for k in builder.options() if k in values and k != "attn_scale"}


@torch.no_grad()
def check_output(model, ds: Dataset, values: dict) -> None:
    """A UserError naming the builder and the cell when ``model``'s output on two test
    examples is not the task's logits: (2, classes), or (2, context, vocabulary)."""
    x, _ = next(iter(ds.eval_batches("test", 2, 2)))
    x = x.to("cpu")
    want = (len(x), ds.num_classes) if ds.kind == "classification" else (*x.shape, ds.vocab_size)
    where = f"model.arch {values['arch']} (series {values.get('series', '')}, width={values['width']}, depth={values['depth']})"
    was = model.training
    model.eval()
    try:
        out = model(x)
    except Exception as e:
        raise UserError(f"{where}: the model fails on a batch of {list(x.shape)} {str(x.dtype).replace('torch.', '')} "
                        f"inputs: {type(e).__name__}: {e}") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{where}: the model's output is {got} for inputs {list(x.shape)}; this task needs "
                        f"logits of shape {list(want)}")


def optimizer_for(values: dict, model):
    """The run's optimizer; with ``elr`` > 0 its LR is elr·ρ₀² at the model's initial radius."""
    options = optimizer_options(values)
    if values.get("elr"):
        try:
            options["lr"] = lr_for_elr(model, values["elr"])
        except ValueError as e:
            raise UserError(f"elr = {values['elr']:g}: {e}") from None
    try:
        return make_optimizer(model, values["optimizer"], **options)
    except ValueError as e:  # e.g. constraint = "sphere" on a model without scale-invariant weights
        raise UserError(f"run {values.get('series', '')} ({values['arch']}): {e}") from None


def cross_entropy(model, x, y):
    """The training loss of ``model`` on a batch (float32 logits whatever the model's dtype)."""
    out = model(x)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1))


@torch.no_grad()
def evaluate(model, ds: Dataset, examples: int, batch_size: int,
             precision=contextlib.nullcontext) -> tuple[float, float]:
    """Mean test loss and accuracy (token accuracy for language) over ``examples`` examples;
    ``precision``: the forward's context (``autocast``)."""
    total_loss, total_correct, total = 0.0, 0, 0
    for x, y in ds.eval_batches("test", batch_size, max_examples=examples):
        with precision():
            out = model(x)
        out = out.float()
        flat, target = out.reshape(-1, out.shape[-1]), y.reshape(-1)
        total_loss += float(F.cross_entropy(flat, target, reduction="sum"))
        total_correct += int((flat.argmax(-1) == target).sum())
        total += target.numel()
    return total_loss / max(total, 1), total_correct / max(total, 1)


class Training:
    """One run in progress: built exactly as ``execute`` builds it, stepped by a training loop.

    ``execute`` drives one alone; ``lrtransfer.run.batched`` drives several whose weights live in
    stacked tensors (``model``'s atoms point into them). Everything a run records besides
    the weights goes through here, so a cell's row and curve mean the same however it trained.
    """

    def __init__(self, values: dict, device: torch.device):
        self.values, self.device = values, device
        self.rid = run_id(values)
        recorded = values.get("code_fingerprint")
        if recorded is not None and recorded != code_fingerprint():
            # a worker with other training code than the sweep that enqueued the cell would
            # record numbers under a run id that does not describe them
            raise UserError(f"run {self.rid}: enqueued with training code {recorded}, but this process runs "
                            f"{code_fingerprint()}; update the worker's checkout (or re-run the sweep)")
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.start = time.perf_counter()
        # The order below is the run's definition: the seed, then everything that draws from it.
        torch.set_num_threads(values.get("threads", 1))
        torch.manual_seed(values["seed"])
        self.ds = dataset_for(values, device)
        self.model = model_for(values, self.ds).to(device=device, dtype=DTYPES[values["dtype"]])
        self.steps = values["steps"]
        if values.get("constraint") == "sphere":   # the frozen head every run of the experiment shares
            try:
                fix_head(self.model, values.get("head_norm", 0.0))
            except ValueError as e:
                raise UserError(f"run {values.get('series', '')} ({values['arch']}): {e}") from None
        self.radius0 = _radius(self.model)   # ρ₀, the initial joint norm of the scale-invariant weights
        self.opt = optimizer_for(values, self.model)
        self.diagnostics = Diagnostics(self.model, values["log_condition"]) if values["diagnostics"] else None
        self.batches = torch.Generator().manual_seed(values["seed"])
        self.curve: list[dict] = []
        self.window: list[float] = []
        self.first_loss = None
        self.status, self.diverged_at = "done", None
        self.model.train()

    def sample(self):
        return self.ds.sample("train", self.values["batch_size"], self.batches)

    def precision(self):
        """The forward's precision context (``autocast``)."""
        return autocast(self.values, self.device)

    def update_precision(self):
        """The update's: Newton–Schulz (dualize, and rules such as Muon) runs its products in the forward's
        precision; normalize's spectral estimates and plain steps stay in float32."""
        if self.values["update"] == "dualize" or OPTIMIZERS[self.values["optimizer"]].newton_schulz:
            return self.precision()
        return contextlib.nullcontext()

    def evaluate(self) -> tuple[float, float]:
        return evaluate(self.model, self.ds, self.values["eval_examples"], self.values["batch_size"], self.precision)

    def logs(self, step: int) -> bool:
        """Whether step ``step`` (0-based) ends a logging interval."""
        return (step + 1) % self.values["log_every"] == 0 or step + 1 == self.steps

    def loss_diverged(self, value: float, step: int) -> bool:
        """Record the loss of ``step`` before its update; True (and the run stops) if it diverged:
        non-finite, or above ``diverge_factor`` × the first loss."""
        if self.first_loss is None:
            self.first_loss = value
        if not math.isfinite(value) or value > self.values["diverge_factor"] * self.first_loss:
            self.diverge(step)
            return True
        return False

    def diverge(self, step: int) -> None:
        self.status, self.diverged_at = "diverged", step

    def stepped(self, step: int, value: float, lr_now: float) -> None:
        """After the update of ``step``: the diagnostics, the curve and any test evaluation."""
        logged = self.logs(step)
        if logged and self.diagnostics is not None:
            self.diagnostics.after_step(self.rid, step + 1, lr_now, self.opt.lr_mults)
        self.window.append(value)
        if logged:
            point = {"step": step + 1, "train_loss": sum(self.window) / len(self.window), "test_loss": math.nan,
                     "lr": lr_now}
            eval_every = self.values["eval_every"]
            if eval_every and (step + 1) % eval_every == 0 and step + 1 < self.steps:
                self.model.eval()
                point["test_loss"] = self.evaluate()[0]
                self.model.train()
            self.curve.append(point)
            self.window = []

    def result(self, evaluation: tuple[float, float] | None = None, **recorded) -> RunResult:
        """The run's row (config, metrics, provenance, and ``recorded``: how it was trained) and
        curves; ``evaluation``: the final (test loss, accuracy) when the caller measured them."""
        row = {**self.values, **self._metrics(evaluation), **self._provenance()}
        row.update({"bundle_size": 1, "compiled": False, **recorded})
        curves = pd.DataFrame(self.curve, columns=["step", "train_loss", "test_loss", "lr"])
        curves.insert(0, "run_id", self.rid)
        return RunResult(row=row, curves=curves,
                         diagnostics=self.diagnostics.table() if self.diagnostics is not None else None)

    def _metrics(self, evaluation: tuple[float, float] | None) -> dict:
        """The row's outcome: status, losses, accuracy (evaluated now unless given)."""
        diverged_at, curve = self.diverged_at, self.curve
        row = dict(run_id=self.rid, status=self.status, error=None,
                   diverged_at_step=math.nan if diverged_at is None else float(diverged_at),
                   final_train_loss=math.nan, final_test_loss=math.nan, final_test_acc=math.nan,
                   first_train_loss=self.first_loss,
                   steps_done=(diverged_at if diverged_at is not None else self.steps),
                   lr_applied=self.opt.lr, chance_loss=math.log(self.ds.num_classes),
                   sphere_radius=self.radius0,
                   # the norm normalize and dualize use: the algebra's modular norm, or a plain
                   # module's layerwise approximation of it (models/wrapped.py)
                   model_norm=getattr(self.model, "norm_kind", "modular"))
        if self.status == "done":
            k = self.values["final_k"]
            row["final_train_loss"] = sum(p["train_loss"] for p in curve[-k:]) / len(curve[-k:])
            if evaluation is None:
                self.model.eval()
                evaluation = self.evaluate()
            row["final_test_loss"], row["final_test_acc"] = evaluation
            if curve:
                curve[-1]["test_loss"] = row["final_test_loss"]
        return row

    def _provenance(self) -> dict:
        """Where and with what the run trained: time, versions, threads, device, host."""
        sha, dirty = git_state()
        return dict(wall_seconds=time.perf_counter() - self.start, started_at=self.started,
                    lrtransfer_version=lrtransfer.__version__, git_sha=sha, git_dirty=dirty,
                    torch_version=torch.__version__, python_version=platform.python_version(),
                    torch_threads=torch.get_num_threads(), device=_device_name(self.device), host=platform.node(),
                    **machine(self.device))


def execute(values: dict, device: str | torch.device = "cpu", on_step=None) -> RunResult:
    """Train the run ``values`` describes, alone; ``on_step(step, steps)`` is called as it goes."""
    device = resolve_device(device) if isinstance(device, str) else device
    run = Training(values, device)
    model, opt, diagnostics = run.model, run.opt, run.diagnostics
    loss_of = compiled_loss() if values.get("compile") else cross_entropy
    for step in range(run.steps):
        x, y = run.sample()
        with run.precision():
            loss = loss_of(model, x, y)
        value = loss.item()  # one host sync per step: divergence is checked on every loss
        if run.loss_diverged(value, step):
            break
        lr_now = opt.current_lr()
        opt.zero_grad()
        loss.backward()
        if run.logs(step) and diagnostics is not None:
            diagnostics.before_step()
        try:
            with run.update_precision():
                opt.step()
        except Diverged:
            run.diverge(step)
            break
        run.stepped(step, value, lr_now)
        if on_step is not None:
            on_step(step + 1, run.steps)
    return run.result(compiled=bool(values.get("compile")))


def compiled_loss():
    """``cross_entropy`` through ``torch.compile``: the forward and the backward AOTAutograd derives
    from it. The update stays eager: its divergence check reads the host every step.

    Dynamo keeps its compiled graphs per code object and guards them on the model object, so
    a process that trains many runs would pile up recompiles and then fall back to eager
    silently; each compiled run starts from a clean cache and compiles its own step instead
    (inductor's on-disk cache makes the later compiles of a shape cheaper).
    """
    torch._dynamo.reset()
    return torch.compile(cross_entropy, dynamic=False)


def _radius(model) -> float:
    """The joint norm of the model's scale-invariant weights (NaN without any)."""
    try:
        return sphere_radius(model)
    except ValueError:
        return math.nan


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type
