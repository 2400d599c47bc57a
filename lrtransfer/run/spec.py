"""The run spec: every key a run takes, declared once.

Config parsing (types, bounds, choices, defaults), ``--set``, the CLI's help, the run id (the
resolved values are hashed), the failed-run row and the training call (``optimizer_options``)
all read it. The generic keys are declared here; each optimizer's own keys and each model
family's options come from their registries (``lrtransfer.optim.registry``,
``lrtransfer.models.registry``), so ``KEYS`` is computed on access.

``section`` says where a key is written in an experiment file ([model] or [train]); any key
can also be a [grid] axis or a series override.
"""
from __future__ import annotations

from dataclasses import replace

from ..models import FAMILIES, PARAMS, Key, is_builder
from ..modular.newton_schulz import METHODS as NS_METHODS
from ..optim import CONSTRAINTS, OPTIMIZERS, SCHEDULES, UPDATES, option_keys

DTYPES = ("float32", "float64", "bfloat16", "bf16-autocast")
BATCH_MODES = ("auto", "on", "off")

# The model keys every family takes (each family's own options: its registry entry).
MODEL_KEYS = (
    Key("width", int, 128, "hidden width (channels for resnet)", "models", "model", positive=True),
    Key("depth", int, 3, "residual blocks", "models", "model", positive=True),
    Key("param", str, "modular", "parametrization: modular (the algebra's), sp (torch defaults), "
        "mup (μP, base shapes at base_width)", "models", "model", choices=PARAMS),
    Key("base_width", int, 0, "μP base width (0: the experiment's smallest width)", "models", "model", minimum=0),
    Key("condition", bool, False, "weight conditioning (arXiv 2409.03424): every Linear/Conv2D uses its "
        "row-equilibrated weight g·diag(1/‖W_i‖)·W, g the RMS row norm of an orthogonal init of its shape "
        "(so conditioning keeps the layer's gain at the modular init)", "models", "model"),
)

# The update keys every optimizer takes (each optimizer's own keys: its registry entry).
UPDATE_KEYS = (
    Key("update", str, "plain", "plain (lr · direction), normalize (modular norm lr), dualize "
        "(steepest descent of modular norm lr)", "optim", choices=UPDATES),
    Key("normalize", bool, False, "same as update = \"normalize\"", "optim"),
    Key("ns", str, "quintic", "Newton–Schulz for dualize: cubic, quintic (Modular Duality's), taylor5, muon, svd",
        "optim", choices=NS_METHODS),
    Key("ns_steps", int, 0, "Newton–Schulz steps (0: the method's default)", "optim", minimum=0),
    Key("lr", float, 1e-3, "learning rate (modular norm of the step when normalized or dualized)", "optim",
        positive=True),
    Key("schedule", str, "linear", "LR schedule: constant, linear (decay to 0), cosine", "optim", choices=SCHEDULES),
    Key("warmup", int, 0, "linear warmup steps", "optim", minimum=0),
    Key("weight_decay", float, 0.0, "decoupled weight decay", "optim", minimum=0),
)

# Training on the sphere and how normalize measures norms.
SPHERE_KEYS = (
    Key("constraint", str, "none", "sphere: train only the scale-invariant weights, projected back to "
        "their initial joint norm after every step (fixed ELR); needs update = \"plain\"", "optim",
        choices=CONSTRAINTS),
    Key("elr", float, 0.0, "effective LR on the sphere: sets lr = elr·ρ₀² (ρ₀: initial norm of the "
        "scale-invariant weights); 0: use lr", "optim", minimum=0),
    Key("head_norm", float, 10.0, "sphere: the frozen head is set once to this Frobenius norm (of the matrix "
        "the forward applies), its direction the same for every run (Kodryan et al.: 10); 0: keep the "
        "initial head", "optim", minimum=0),
    Key("exact_norm", bool, False, "SVD spectral norms in normalize (slow; tests) instead of tracked "
        "estimates", "optim"),
)

# The run: its length, batches, seed, logging, precision and execution.
RUN_KEYS = (
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

# How figures name a series: written in a [series.*] table, never part of a run's values.
LABEL = Key("label", str, "", "series only: the name figures show for the series (default: its name); "
            "not part of the run id", "sweep", "series")


def _choice_keys() -> tuple[Key, Key]:
    """``arch`` and ``optimizer``: their choices are the registered families and optimizers."""
    optimizers = ", ".join(name + (f" ({e.note})" if e.note else "") for name, e in OPTIMIZERS.items())
    return (Key("arch", str, "mlp", "model family, or your own model's builder: \"file.py:function\" "
                "(relative to the experiment file) or \"package.module:function\"", "models", "model",
                choices=tuple(FAMILIES)),
            Key("optimizer", str, "adam", f"base rule: {optimizers}", "optim", choices=tuple(OPTIMIZERS)))


def run_keys() -> tuple[Key, ...]:
    """Every key each run resolves (and hashes), in table order, from the registries as they are now."""
    arch, optimizer = _choice_keys()
    return (arch, *MODEL_KEYS, optimizer, *UPDATE_KEYS, *option_keys(), *SPHERE_KEYS, *RUN_KEYS)


def __getattr__(name: str):
    # KEYS and BY_NAME follow the registries, so a registered optimizer's keys appear in them
    if name == "KEYS":
        return run_keys()
    if name == "BY_NAME":
        return {k.name: k for k in run_keys()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def defaults(section: str) -> dict:
    return {k.name: k.default for k in run_keys() if k.section == section}


def optimizer_options(values: dict) -> dict:
    """The keyword arguments of ``make_optimizer`` for a resolved run (besides model and name):
    the update's keys and the optimizer's own."""
    own = {k.name: values[k.name] for k in OPTIMIZERS[values["optimizer"]].keys}
    return dict(lr=values["lr"], update=values["update"], weight_decay=values["weight_decay"],
                schedule=values["schedule"], steps=values["steps"], warmup=values["warmup"],
                exact=values["exact_norm"], ns=values["ns"], ns_steps=values["ns_steps"] or None,
                constraint=values["constraint"], **own)


def check_combination(values: dict) -> str | None:
    """Why a resolved run makes no sense, or None."""
    if values.get("normalize") and values.get("update") == "dualize":
        return "normalize = true means update = \"normalize\"; it contradicts update = \"dualize\""
    update = "normalize" if values.get("normalize") else values.get("update", "plain")
    # a user's plain torch model runs as built (param = "sp") under its layerwise norm (models/wrapped.py)
    own_norm = ("modular", "sp") if is_builder(values.get("arch")) else ("modular",)
    if update != "plain" and values.get("param", "modular") not in own_norm:
        return (f"update = {update!r} sizes steps in the modular norm, which needs param = \"modular\" "
                f"(a user's plain torch model: \"sp\") (got param = {values['param']!r})")
    entry = OPTIMIZERS.get(values.get("optimizer"))
    if entry is not None and entry.plain_only and update != "plain":
        return f"optimizer = \"{entry.name}\" {entry.plain_only}; it needs update = \"plain\" (got {update!r})"
    if entry is not None and entry.mup is None and values.get("param") == "mup":
        return f"optimizer = \"{entry.name}\" has no μP LR rule; param = \"mup\" needs one of " + \
            ", ".join(name for name, e in OPTIMIZERS.items() if e.mup)
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


def family_keys() -> list[Key]:
    """Each model family's options, one row per distinct declaration, its help naming the
    families that take it (``blocks_mass``' default differs by family: a row each)."""
    takers: dict[Key, list[str]] = {}
    for name, fam in FAMILIES.items():
        for key in fam.keys:
            takers.setdefault(key, []).append(name)
    return [replace(k, help=f"{', '.join(names)}: {k.help}") for k, names in takers.items()]


def table_keys() -> list[Key]:
    """What an experiment file takes, as ``lrtransfer keys`` lists it: the run keys, the
    families' options after the model keys, and the series label."""
    keys = list(run_keys())
    after_model = keys.index(MODEL_KEYS[-1]) + 1
    return keys[:after_model] + family_keys() + keys[after_model:] + [LABEL]


def markdown_table() -> str:
    """The keys as a markdown table (the README's and ``lrtransfer keys``'s)."""
    rows = ["| key | section | default | allowed | what |", "|---|---|---|---|---|"]
    for k in table_keys():
        default = str(k.default).lower() if isinstance(k.default, bool) else repr(k.default) \
            if isinstance(k.default, str) else f"{k.default:g}" if isinstance(k.default, float) else str(k.default)
        rows.append(f"| `{k.name}` | {k.section} | `{default}` | {_allowed(k)} | {k.help} |")
    return "\n".join(rows)


def as_records() -> list[dict]:
    """The keys of ``markdown_table`` as JSON-able records."""
    return [{"name": k.name, "section": k.section, "type": k.type.__name__, "default": k.default,
             "choices": list(k.choices) if k.choices else None, "positive": k.positive,
             "minimum": k.minimum, "help": k.help, "owner": k.owner} for k in table_keys()]
