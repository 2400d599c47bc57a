"""``coordcheck``: the μP-style coordinate check of an experiment's series."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .. import plots
from ..errors import UserError
from ..report.coordcheck import FORMATS
from .common import Device, Overrides, Quiet, app, choice_help, err, say, user_errors

# analysis.coordcheck's defaults, written out so that --help does not import torch
# (tests/test_coordcheck.py checks they agree)
SPAN, SEEDS, MARGIN, CONFIDENCE = 16, 8, 0.25, 0.90


def parse_widths(text: Optional[str]) -> Optional[list[int]]:
    """``--widths 64,256,1024`` as a list of ints (None: the default widths)."""
    if text is None:
        return None
    try:
        return [int(w) for w in text.split(",")]
    except ValueError:
        raise UserError(f"--widths {text!r}: must be comma-separated positive integers, e.g. 64,256,1024") from None


@app.command(examples=(
    "lrtransfer coordcheck experiments/methods_width_mnist1d.toml --out coord.png",
    "lrtransfer coordcheck experiments/quickstart.toml --widths 64,256,1024 --steps 3 --seeds 6",
    "lrtransfer coordcheck experiments/methods_width_mnist1d.toml --series sp_adam --series mup_adam --format json"))
@user_errors
def coordcheck(experiment: Path = typer.Argument(..., help="experiment TOML file (its smallest width starts the "
                                                 "default widths)"),
               set_: Overrides = [],
               widths: Optional[str] = typer.Option(None, "--widths", metavar="W1,W2,...",
                                                    help="widths to train (default: the experiment's smallest "
                                                         f"width and its doublings up to {SPAN}× it, whatever the "
                                                         "experiment's grid)"),
               seeds: int = typer.Option(SEEDS, "--seeds", help="seeds per width (>= 2): the pass rule's "
                                         "confidence interval comes from their spread"),
               steps: int = typer.Option(5, "--steps", help="training steps on the fixed batch"),
               lr: Optional[float] = typer.Option(None, "--lr", help="one LR for every series (default: each series' "
                                                  "base-scale LR, the middle of its LR grid at the smallest width)"),
               margin: float = typer.Option(MARGIN, "--margin", help="a row passes when its slope's confidence "
                                            "interval lies within ±margin (default ¼: half the smallest width "
                                            "exponent, ½, separating the parametrizations compared)"),
               confidence: float = typer.Option(CONFIDENCE, "--confidence", help="confidence of the seeds' "
                                                "Student-t interval of each slope (0.9: two one-sided t tests "
                                                "at 5%)"),
               series: List[str] = typer.Option([], "--series", help="series to check (default: all)"),
               format: str = typer.Option("markdown", "--format", metavar="FORMAT",
                                          help=choice_help(FORMATS, "verdicts and slopes as markdown "
                                                                    "tables or JSON")),
               out_: Optional[Path] = typer.Option(None, "--out", help="also draw RMS vs width per atom at the last "
                                                   "step (.png/.svg/.pdf)"),
               device: Device = "auto",
               quiet: Quiet = False):
    """μP-style coordinate check: per series, train each width a few steps on one fixed batch
    (depth: the smallest; constant LR) for several seeds, and fit per seed, atom and step the
    slope of log RMS against log width of the atom's output, of its output's change since init
    and of its own step ΔW·x. A row passes when the seeds' confidence interval of its slope
    lies within ±--margin (the logits and their change may shrink, not grow); a series passes
    when every row does. Verdicts are data: the exit code is 0 whether series pass or fail (2
    for bad input)."""
    from ..analysis.coordcheck import coordcheck as check
    from ..report.coordcheck import render
    from ..report.render import check_format
    from ..sweep import load_experiment
    check_format(format, FORMATS)
    target = plots.check_out(out_)
    chosen = parse_widths(widths)
    exp = load_experiment(experiment, set_)
    result = check(exp, steps=steps, lr=lr, widths=chosen, seeds=seeds, margin=margin, confidence=confidence,
                   series=series or None, device=device,
                   on_width=None if quiet else lambda s, seed, w: say(f"{s}: seed {seed}, width {w}", err))
    if target is not None:  # drawn in full before anything is written
        from ..plots.coordcheck import figure
        plots.save(figure(result), target)
        say(f"wrote {target}", err)
    text = render(result, format)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
