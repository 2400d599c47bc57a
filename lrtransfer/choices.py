"""The enumerated values of command-line options, in one place and importable without torch
or matplotlib: the modules that act on them check against these, and the CLI shows them in
``--help`` and suggests the nearest one for a misspelling."""

PLOT_KINDS = ("lr", "curves", "diagnostics", "regimes", "lrwd")
COLOR_BY = ("scale", "lr")
# per-atom diagnostics that can be drawn against step, with the axis label each gets
QUANTITIES = {"relative_update": "update norm / weight norm", "elr": "effective LR (lr / ‖w‖²)",
              "condition": "condition number σ_max / σ_min", "weight_norm": "weight norm",
              "update_norm": "update norm", "angle": "angle per step (rad)"}
SAMPLERS = ("tpe", "gp", "random")
ALONG = ("lr", "lrwd")
STATUS_FORMATS = ("table", "json")
EXPORT_TARGETS = ("tensorboard", "mlflow")
# what --device takes (train.resolve_device): auto picks cuda when it is available
DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def metavar(values) -> str:
    """``a|b|c``: how --help shows an option's choices."""
    return "|".join(values)
