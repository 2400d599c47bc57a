"""``coordcheck``: the μP-style coordinate check of an experiment's series."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .. import plots
from ..report.coordcheck import FORMATS
from .common import Device, Overrides, Quiet, app, choice_help, err, say, user_errors


@app.command(examples=(
    "lrtransfer coordcheck experiments/quickstart.toml --set width=[64,256,1024] --steps 3 --out coord.png",
    "lrtransfer coordcheck experiments/methods_width_mnist1d.toml --series sp_adam --series mup_adam --format json"))
@user_errors
def coordcheck(experiment: Path = typer.Argument(..., help="experiment TOML file (its width grid gives the widths)"),
               set_: Overrides = [],
               steps: int = typer.Option(5, "--steps", help="training steps on the fixed batch"),
               lr: Optional[float] = typer.Option(None, "--lr", help="one LR for every series (default: each series' "
                                                  "base-scale LR, the middle of its LR grid at the smallest width)"),
               threshold: float = typer.Option(0.1, "--threshold", help="largest |slope| of log RMS vs log width "
                                               "that passes"),
               series: List[str] = typer.Option([], "--series", help="series to check (default: all)"),
               format: str = typer.Option("markdown", "--format", metavar="FORMAT",
                                          help=choice_help(FORMATS, "verdicts and slopes as markdown "
                                                                              "tables or JSON")),
               out_: Optional[Path] = typer.Option(None, "--out", help="also draw RMS vs width per atom at the last "
                                                   "step (.png/.svg/.pdf)"),
               device: Device = "auto",
               quiet: Quiet = False):
    """μP-style coordinate check: per series, train every width of the grid a few steps on one
    fixed batch (seed and depth: the smallest; constant LR) and fit, per weight atom and step,
    the slope of log RMS against log width of its output, of its output's change since init and
    of its own step ΔW·x. A series passes when every |slope| <= --threshold (the logits and
    their change may shrink, not grow). Verdicts are data: the exit code is 0 whether series
    pass or fail (2 for bad input)."""
    from ..analysis.coordcheck import coordcheck as check
    from ..report.coordcheck import render
    from ..report.render import check_format
    from ..sweep import load_experiment
    check_format(format, FORMATS)
    target = plots.check_out(out_)
    exp = load_experiment(experiment, set_)
    result = check(exp, steps=steps, lr=lr, threshold=threshold, series=series or None, device=device,
                   on_width=None if quiet else lambda s, w: say(f"{s}: width {w}", err))
    if target is not None:  # drawn in full before anything is written
        from ..plots.coordcheck import figure
        plots.save(figure(result), target)
        say(f"wrote {target}", err)
    text = render(result, format)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
