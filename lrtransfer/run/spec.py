"""The run spec: every key a run takes, declared once.

Config parsing (types, bounds, choices, defaults), ``--set``, the CLI's help, the run id (the
resolved values are hashed), the failed-run row (a failed run records its values) and the
training call (``optimizer_options``) all read this table. A new run key is one entry here
plus the code of the part that owns it.

``section`` says where a key is written in an experiment file ([model] or [train]); any key
can also be a [grid] axis or a series override. ``owner`` names the part of the package
that consumes it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..models import ARCHS as _ARCH_BUILDERS, PARAMS
from ..modular.newton_schulz import METHODS as NS_METHODS
from ..optim import CONSTRAINTS, OPTIMIZERS, SCHEDULES, UPDATES

DTYPES = ("float32", "float64", "bfloat16", "bf16-autocast")
BATCH_MODES = ("auto", "on", "off")
ARCHS = tuple(_ARCH_BUILDERS)


@dataclass(frozen=True)
class Key:
    name: str
    type: type                       # int, float, bool or str
    default: object
    help: str
    owner: str                       # models, optim, train, data
    section: str = "train"           # model or train
    choices: tuple | None = None
    minimum: float | None = None     # inclusive lower bound
    positive: bool = False           # strictly > 0


KEYS: tuple[Key, ...] = (
    # -- the model (architecture options per arch come from lrtransfer.models.options) --------
    Key("arch", str, "mlp", "model family", "models", "model", choices=ARCHS),
    Key("width", int, 128, "hidden width (channels for resnet)", "models", "model", positive=True),
    Key("depth", int, 3, "residual blocks", "models", "model", positive=True),
    Key("param", str, "modular", "parametrization: modular (the algebra's), sp (torch defaults), "
        "mup (μP, base shapes at base_width)", "models", "model", choices=PARAMS),
    Key("base_width", int, 0, "μP base width (0: the experiment's smallest width)", "models", "model", minimum=0),
    Key("condition", bool, False, "weight conditioning (arXiv 2409.03424): every Linear/Conv2D uses its "
        "row-equilibrated weight diag(1/‖W_i‖)·W", "models", "model"),
    # -- the update ------------------------------------------------------------------------
    Key("optimizer", str, "adam", "base rule: sgd, adam, sign (ℓ∞ steepest descent), muon", "optim",
        choices=OPTIMIZERS),
    Key("update", str, "plain", "plain (lr · direction), normalize (modular norm lr), dualize "
        "(steepest descent of modular norm lr)", "optim", choices=UPDATES),
    Key("normalize", bool, False, "same as update = \"normalize\"", "optim"),
    Key("ns", str, "quintic", "Newton–Schulz for dualize: cubic, quintic, muon, svd", "optim", choices=NS_METHODS),
    Key("ns_steps", int, 0, "Newton–Schulz steps (0: the method's default)", "optim", minimum=0),
    Key("lr", float, 1e-3, "learning rate (modular norm of the step when normalized or dualized)", "optim",
        positive=True),
    Key("schedule", str, "linear", "LR schedule: constant, linear (decay to 0), cosine", "optim", choices=SCHEDULES),
    Key("warmup", int, 0, "linear warmup steps", "optim", minimum=0),
    Key("weight_decay", float, 0.0, "decoupled weight decay", "optim", minimum=0),
    Key("momentum", float, 0.9, "sgd momentum", "optim", minimum=0),
    Key("beta1", float, 0.9, "adam beta1", "optim", minimum=0),
    Key("beta2", float, 0.99, "adam beta2", "optim", minimum=0),
    Key("eps", float, 1e-8, "adam epsilon", "optim", minimum=0),
    Key("muon_momentum", float, 0.95, "muon: Nesterov momentum of the hidden weights", "optim", minimum=0),
    Key("muon_adam_ratio", float, 0.015, "muon: Adam's LR on embeddings, input and head as a "
        "fraction of lr", "optim", positive=True),
    Key("constraint", str, "none", "sphere: train only the scale-invariant weights, projected back to "
        "their initial joint norm after every step (fixed ELR); needs update = \"plain\"", "optim",
        choices=CONSTRAINTS),
    Key("elr", float, 0.0, "effective LR on the sphere: sets lr = elr·ρ₀² (ρ₀: initial norm of the "
        "scale-invariant weights); 0: use lr", "optim", minimum=0),
    Key("exact_norm", bool, False, "SVD spectral norms in normalize (slow; tests) instead of tracked "
        "estimates", "optim"),
    # -- the run -----------------------------------------------------------------------------
    Key("steps", int, 1000, "training steps", "train", positive=True),
    Key("batch_size", int, 128, "examples (or windows) per step", "train", positive=True),
    Key("seed", int, 0, "seed of the initialisation and the batches", "train", minimum=0),
    Key("log_every", int, 10, "curves get the mean train loss of every log_every steps", "train", positive=True),
    Key("eval_every", int, 0, "test loss during training every N steps (0: only at the end)", "train", minimum=0),
    Key("eval_examples", int, 2048, "test examples (or windows) for test loss and accuracy", "train",
        positive=True),
    Key("final_k", int, 5, "final_train_loss = mean of the last final_k logged values", "train", positive=True),
    Key("diverge_factor", float, 4.0, "a loss above diverge_factor × the first loss counts as diverged",
        "train", positive=True),
    Key("diagnostics", bool, True, "log per-atom weight/update norms, angles and ELR every log_every steps "
        "(the diagnostics table)", "train"),
    Key("log_condition", bool, False, "diagnostics also record each matrix's exact condition number "
        "(an SVD per atom per log)", "train"),
    Key("dtype", str, "float32", "parameter dtype; bf16-autocast: float32 weights, the forward's matrix "
        "products (and Newton–Schulz's) in bfloat16 under torch.autocast", "train", choices=DTYPES),
    Key("threads", int, 1, "torch threads per run (part of the run id: float sums depend on it)", "train",
        positive=True),
    # -- how cells execute (not part of the run id: the losses agree to float tolerance, tests/test_batched.py)
    Key("batch_cells", str, "auto", "train cells that differ only in lr, seed and decay as one batched "
        "program: on, off, or auto (per model shape, where a timed probe shows it is faster)", "train",
        choices=BATCH_MODES),
    Key("compile", bool, False, "torch.compile the forward and backward of each step (the first steps "
        "of a run pay the compile)", "train"),
)

BY_NAME = {k.name: k for k in KEYS}


def defaults(section: str) -> dict:
    return {k.name: k.default for k in KEYS if k.section == section}


def optimizer_options(values: dict) -> dict:
    """The keyword arguments of ``make_optimizer`` for a resolved run (besides model and name)."""
    return dict(lr=values["lr"], update=values["update"], weight_decay=values["weight_decay"],
                schedule=values["schedule"], steps=values["steps"], warmup=values["warmup"],
                momentum=values["momentum"], betas=(values["beta1"], values["beta2"]), eps=values["eps"],
                exact=values["exact_norm"], ns=values["ns"], ns_steps=values["ns_steps"] or None,
                muon_momentum=values["muon_momentum"], muon_adam_ratio=values["muon_adam_ratio"],
                constraint=values["constraint"])


def check_combination(values: dict) -> str | None:
    """Why a resolved run makes no sense, or None."""
    if values.get("normalize") and values.get("update") == "dualize":
        return "normalize = true means update = \"normalize\"; it contradicts update = \"dualize\""
    update = "normalize" if values.get("normalize") else values.get("update", "plain")
    if update != "plain" and values.get("param", "modular") != "modular":
        return (f"update = {update!r} sizes steps in the modular norm, which needs param = \"modular\" "
                f"(got param = {values['param']!r})")
    if values.get("optimizer") == "muon" and update != "plain":
        return f"optimizer = \"muon\" orthogonalizes its own steps; it needs update = \"plain\" (got {update!r})"
    constraint = values.get("constraint", "none")
    if constraint != "none" and update != "plain":
        return f"constraint = {constraint!r} projects plain steps; it needs update = \"plain\" (got {update!r})"
    if values.get("elr", 0) and constraint != "sphere":
        return (f"elr = {values['elr']:g} fixes the effective LR on the sphere; it needs constraint = \"sphere\" "
                f"(got {constraint!r})")
    if values.get("log_condition") and not values.get("diagnostics", True):
        return "log_condition = true records into the diagnostics table; it needs diagnostics = true"
    return None


def _allowed(k: Key) -> str:
    if k.choices:
        return " \\| ".join(k.choices)
    if k.type is bool:
        return "true \\| false"
    if k.positive:
        return "> 0"
    if k.minimum is not None:
        return f">= {k.minimum:g}"
    return ""


def markdown_table() -> str:
    """The run keys as a markdown table (the README's and ``lrtransfer keys``'s)."""
    rows = ["| key | section | default | allowed | what |", "|---|---|---|---|---|"]
    for k in KEYS:
        default = str(k.default).lower() if isinstance(k.default, bool) else repr(k.default) \
            if isinstance(k.default, str) else f"{k.default:g}" if isinstance(k.default, float) else str(k.default)
        rows.append(f"| `{k.name}` | {k.section} | `{default}` | {_allowed(k)} | {k.help} |")
    return "\n".join(rows)


def as_records() -> list[dict]:
    return [{"name": k.name, "section": k.section, "type": k.type.__name__, "default": k.default,
             "choices": list(k.choices) if k.choices else None, "positive": k.positive,
             "minimum": k.minimum, "help": k.help, "owner": k.owner} for k in KEYS]
