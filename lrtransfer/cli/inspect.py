"""``inspect``: what lrtransfer makes of an experiment's model, weight by weight."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from .common import Overrides, app, choice_help, user_errors

FORMATS = ("markdown", "json")


def _shown(values: dict) -> str:
    """The model as the experiment names it, with the builder's file relative to here when it is below."""
    builder = values.get("builder")
    if not builder:
        return values["arch"]
    where, _, function = builder.rpartition(":")
    try:
        where = Path(where).relative_to(Path.cwd()).as_posix()
    except ValueError:
        pass
    return f"{values['arch']} ({where}:{function})"


@app.command(examples=(
    "lrtransfer inspect examples/nanogpt_width.toml",
    "lrtransfer inspect examples/resnet_width.toml --series muon --width 64 --format json"))
@user_errors
def inspect(experiment: Path = typer.Argument(..., help="experiment TOML file"),
            set_: Overrides = [],
            series: Optional[str] = typer.Option(None, "--series", help="the series whose model and rule to build "
                                                 "(default: the first)"),
            width: Optional[int] = typer.Option(None, "--width", help="width to build at (default: the series' "
                                                "largest; μP's base: its base_width or the smallest width)"),
            format: str = typer.Option("markdown", "--format", metavar="FORMAT",
                                       help=choice_help(FORMATS, "a markdown table or JSON"))):
    """Each weight of the experiment's model: its name, shape, role (input, hidden, output,
    vector) and where the role came from (found from the shapes at two widths, set in [model]
    roles, or the algebra's own), the names it is tied to, its fan-in and fan-out multipliers
    against μP's base width and the μP init, forward and LR multipliers the series' rule would use."""
    from ..models.table import role_table
    from ..optim import OPTIMIZERS
    from ..report.inspect import render
    from ..report.render import check_format
    from ..run.train import dataset_for, model_for, resolve_device
    from ..sweep import load_experiment
    import torch
    check_format(format, FORMATS)
    exp = load_experiment(experiment, set_)
    cells = [c.values for c in exp.cells()]
    names = list(dict.fromkeys(v["series"] for v in cells))
    chosen = series or names[0]
    if chosen not in names:
        raise UserError(f"--series {chosen!r}: not a series of {experiment}; its series: {', '.join(names)}")
    mine = [v for v in cells if v["series"] == chosen]
    widths = sorted({v["width"] for v in mine})
    at = width if width is not None else widths[-1]
    if at < 1:
        raise UserError(f"--width {at}: must be a positive integer")
    values = {**mine[0], "width": at, "param": "mup",
              "base_width": mine[0].get("base_width") or widths[0]}
    with torch.random.fork_rng(devices=[]):
        model = model_for(values, dataset_for(values, resolve_device("cpu")))
    header = {"experiment": str(experiment), "series": chosen,
              "model": _shown(values), "width": at, "depth": values["depth"],
              "μP base width": values["base_width"], "μP rule": OPTIMIZERS[values["optimizer"]].mup,
              "roles found at": f"width {at} against {2 * at}" if hasattr(model, "weights") else "the algebra's atoms"}
    text = render(header, role_table(model), format)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
