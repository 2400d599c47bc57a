"""Reading a results directory: ``report``, ``plot`` and ``compare``."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .. import plots
from ..analysis.dynamics import RegimeOptions
from ..errors import UserError
from .common import (AXIS_HELP, Axis, Format, Metric, RegimeAlpha, RegimeBlocks, RegimeWindow, ResultsDir, app,
                     axis_name,
                     choice_help, err, say, user_errors)

KIND_HELP = "; ".join(f"{kind.name}: {kind.help}" for kind in plots.KINDS.values())
FIGURE_NAMES = ", ".join(kind.stem.format(quantity="QUANTITY") for kind in plots.KINDS.values())
SECOND_FIGURES = ", ".join(f"{kind.stem} -> {kind.second}" for kind in plots.KINDS.values() if kind.second)


REGIME = RegimeOptions()  # the defaults the --regime-* options show


def regime_options(window: float, alpha: float, blocks: int) -> RegimeOptions:
    """The --regime-* options, checked: a UserError names the one the regimes cannot use."""
    return RegimeOptions(window=window, alpha=alpha, blocks=blocks)


def parse_labels(pairs: list[str]) -> dict:
    """``--label series=Name`` options as {series: name}."""
    labels = {}
    for text in pairs:
        name, sep, label = text.partition("=")
        if not sep or not name.strip() or not label.strip():
            raise UserError(f"--label {text!r}: expected SERIES=NAME, e.g. normed_adam='normed Adam'")
        labels[name.strip()] = label.strip()
    return labels


def parse_predict(pairs: list[str]) -> dict:
    """``--predict KEY=VALUE`` options as {key: [values]} (the analysis checks the key is a scale
    axis of the runs and the value a positive number)."""
    targets: dict = {}
    for text in pairs:
        key, sep, value = text.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UserError(f"--predict {text!r}: expected KEY=VALUE, a scale axis and a positive number, "
                            f"e.g. width=4096")
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"--predict {text}: the {key.strip()} must be a positive number (the scale to predict "
                            f"the optimal LR at), e.g. {key.strip()}=4096") from None
        targets.setdefault(key.strip(), []).append(number)
    return targets


PREDICT_HELP = ("KEY=VALUE: also predict the optimal LR at this scale (e.g. width=4096) from the optimum's law, "
                "log2 η* = intercept + slope·log2 scale fitted through every scale's optimum, with a prediction "
                "interval (repeat for more)")


@app.command(examples=(
    "lrtransfer plot results/quickstart  # lr_curves.png and transfer.png in the directory",
    "lrtransfer plot results/quickstart --metric test_acc --out acc.svg  # writes acc.svg and acc_transfer.svg",
    "lrtransfer plot results/quickstart --series normed_adam --scales 32 --scales 512 --label normed_adam='normed Adam'",
    "lrtransfer plot results/quickstart --kind curves --scale 128 --logy --out curves.svg"))
@user_errors
def plot(results_dir: ResultsDir,
         kind: str = typer.Option("lr", "--kind", metavar="KIND", help=KIND_HELP),
         metric: Metric = "train_loss",
         axis: Optional[Axis] = typer.Option(None, metavar="KEY", help="scale axis: " + AXIS_HELP
                                             + " (default: every scale-like key that varies); one with a single "
                                               "value is an error"),
         out_: Optional[Path] = typer.Option(None, "--out", help=f"figure path (.png/.svg/.pdf); default RESULTS_DIR/"
                                             f"KIND.png, named after the kind: {FIGURE_NAMES}. --kind lr (with two or "
                                             f"more scales) and lrwd also write a second figure beside it: "
                                             f"NAME_transfer / NAME_lrwd_curves ({SECOND_FIGURES})"),
         series: List[str] = typer.Option([], "--series", help="draw only this series (repeat for more; default all)"),
         scales: List[int] = typer.Option([], "--scales", metavar="SCALE", help="draw only this scale, a "
                                          "value of the axis (repeat for more; default all); the transfer view uses "
                                          "the smallest as base"),
         label: List[str] = typer.Option([], "--label", help="display name of a series in titles and legends, "
                                         "e.g. normed_adam='normed Adam' (repeat for more)"),
         logy: bool = typer.Option(False, "--logy", help="log y axis (every value drawn must be > 0)"),
         ci: float = typer.Option(0.9, "--ci", help="confidence level of the bars on the fitted optima (bootstrap "
                                  "over seeds)"),
         tolerance: float = typer.Option(1.0, "--tolerance", help="octaves of drift over the scale range that still "
                                         "count as transfer"),
         steps: bool = typer.Option(False, "--steps", help="the same as --kind curves"),
         scale: Optional[int] = typer.Option(None, "--scale", help="curves, diagnostics, lrwd: the scale (a value of "
                                             "the axis) to show (default the largest; with --color-by scale, "
                                             "default all)"),
         lr: Optional[float] = typer.Option(None, "--lr", help="curves, diagnostics: only the runs at this LR (the "
                                            "effective LR where elr is swept) (default: all LRs, or with --color-by "
                                            "scale / diagnostics each one's best)"),
         color_by: str = typer.Option("lr", "--color-by", metavar="COLOR_BY",
                                      help=choice_help(plots.COLOR_BY, "curves: one line per lr (at one scale) or "
                                                                   "per scale")),
         quantity: str = typer.Option("relative_update", "--quantity", metavar="QUANTITY",
                                      help=choice_help(plots.QUANTITIES, "diagnostics: the per-atom quantity")),
         predict: List[str] = typer.Option([], "--predict", metavar="KEY=VALUE",
                                           help=PREDICT_HELP + "; the transfer view extends the law (dashed) to it"),
         regime_window: RegimeWindow = REGIME.window, regime_alpha: RegimeAlpha = REGIME.alpha,
         regime_blocks: RegimeBlocks = REGIME.blocks):
    """Figures of a sweep: loss vs LR per scale and series, with optimal LR and regret vs scale (default).

    Or training curves, per-atom diagnostics, sphere regimes, or the lr x weight decay view (--kind).
    Every figure is drawn before any file is written: a request the data cannot answer (an axis
    with one value, an unknown series or scale) exits 2 and leaves the old figures as they were.
    """
    written = plots.draw(results_dir, "curves" if steps else kind, out_, series=series, scales=scales,
                         labels=parse_labels(label), logy=logy, metric=metric, axis=axis_name(axis), ci=ci,
                         tolerance=tolerance, scale=scale, lr=lr, color_by=color_by, quantity=quantity,
                         regime=regime_options(regime_window, regime_alpha, regime_blocks),
                         predict=parse_predict(predict) or None, note=lambda text: say(text, err))
    say("wrote " + " and ".join(str(path) for path in written))


@app.command(examples=("lrtransfer report results/quickstart",
                       "lrtransfer report results/quickstart --metric test_acc  # rank LRs by test accuracy (max)",
                       "lrtransfer report results/quickstart --format json --ci 0.95 --tolerance 0.5",
                       "lrtransfer report results/quickstart --predict width=4096  # the law's LR at width 4096"))
@user_errors
def report(results_dir: ResultsDir,
           metric: Metric = "train_loss",
           axis: Optional[Axis] = typer.Option(None, metavar="KEY", help="scale axis to analyse: " + AXIS_HELP + " "
                                               "(default: every scale-like key that varies; none varies: no verdict, "
                                               "a note)"),
           format: Format = typer.Option(Format.markdown, help="csv: the per-scale table with the verdicts merged in"),
           min_runs: int = typer.Option(3, help="fewer finished LRs at a scale than this is flagged"),
           ci: float = typer.Option(0.9, "--ci", help="confidence level of the intervals (bootstrap over seeds)"),
           tolerance: float = typer.Option(1.0, "--tolerance", help="a drift CI inside ±this many octaves over the "
                                           "scale range is 'transfers'"),
           n_boot: int = typer.Option(1000, "--n-boot", help="bootstrap replicates"),
           seed: int = typer.Option(0, "--seed", help="bootstrap random seed (reports are reproducible)"),
           predict: List[str] = typer.Option([], "--predict", metavar="KEY=VALUE",
                                             help=PREDICT_HELP + "; markdown: a Prediction section, JSON: key "
                                             "\"prediction\""),
           contrast: List[str] = typer.Option([], "--contrast", metavar="A:B",
                                              help="contrast series A with series B (repeatable; default: every "
                                              "pair on the same axis): |drift| and slope differences with CIs"),
           regime_window: RegimeWindow = REGIME.window, regime_alpha: RegimeAlpha = REGIME.alpha,
           regime_blocks: RegimeBlocks = REGIME.blocks):
    """Per series and axis: a transfer verdict (transfers / drifts / inconclusive) from the
    bootstrap CI of the drift (octaves the optimal LR moves from the base scale to the largest,
    by the optimum's law: the least-squares line of the fitted log2 optimum on log2 scale through
    every scale), with slope, intercept, endpoint-drift and regret CIs, then the optimum per scale.
    Fewer than 3 seeds: inconclusive, flagged few-seeds (the CI is not calibrated there).

    Grid drift: max − min of the grid (unfitted) log2 optimal LR over the scales, in octaves.
    Flags (informational): flat, a scale whose LRs within one standard error of the best loss
    span 2 octaves or more (the optimum is poorly determined); worse-with-scale, a series whose
    loss at the base LR is worse at the largest scale than at the base scale, its CI wholly on
    the worse side. Details: docs/analysis.md.

    A "Regimes" section follows when the runs set an effective LR or train on the sphere, and an
    "lr·wd invariance" section when weight_decay takes two or more values (JSON: keys "regimes"
    and "lrwd"). Where no scale axis varies (one width, depth, batch size, ...) there is no
    verdict: a one-line note instead (JSON: empty "transfer" and "drift", a "note"; CSV exits 2)."""
    from ..analysis.transfer import metric_spec
    from ..report.results import results_report
    metric_spec(metric)
    regime = regime_options(regime_window, regime_alpha, regime_blocks)
    sys.stdout.write(results_report(results_dir, metric=metric, axis=axis_name(axis), format=format.value,
                                    min_runs=min_runs, ci=ci, tolerance=tolerance, n_boot=n_boot, seed=seed,
                                    regime=regime, predict=parse_predict(predict), contrast_pairs=contrast))


@app.command(examples=("lrtransfer compare results/quickstart results/quickstart_wd",
                       "lrtransfer compare results/quickstart results/quickstart_wd --out compare.svg --format json"))
@user_errors
def compare(results_dirs: List[Path] = typer.Argument(..., help="two or more results directories"),
            metric: Metric = "train_loss",
            axis: Optional[Axis] = typer.Option(None, metavar="KEY", help="scale axis to analyse: " + AXIS_HELP + " "
                                                "(default: every scale-like key that varies)"),
            format: Format = typer.Option(Format.markdown, help="csv: the per-scale table"),
            out_: Optional[Path] = typer.Option(None, "--out", help="also draw the overlaid loss-vs-LR curves "
                                                "here (.png/.svg/.pdf)"),
            ci: float = typer.Option(0.9, "--ci", help="confidence level (bootstrap over seeds)"),
            tolerance: float = typer.Option(1.0, "--tolerance", help="octaves of drift that still count as transfer")):
    """Did a change move the optimum? The transfer numbers of several results directories side by
    side: verdict and drift per series, each series' contrast with the same series in the first
    directory (how much less its optimum drifts, with a CI), the fitted optimal LR per scale with
    its shift from the first directory, and (with --out) their loss-vs-LR curves overlaid."""
    from ..analysis import compare as comparison
    from ..analysis.transfer import metric_spec
    from ..report.compare import render_comparison
    metric_spec(metric)
    target = plots.check_out(out_)
    runs_by_dir = comparison.load(results_dirs)
    scales, verdicts, contrasts = comparison.comparison(runs_by_dir, metric=metric, axis=axis_name(axis), ci=ci,
                                                       tolerance=tolerance)
    figure = plots.compare_curves(runs_by_dir, metric=metric, axis=axis_name(axis)) if target is not None else None
    sys.stdout.write(render_comparison(scales, verdicts, format.value, ci=ci, metric=metric, contrasts=contrasts))
    if figure is not None:
        plots.save(figure, target)
        say(f"wrote {target}", err)
