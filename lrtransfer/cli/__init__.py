"""The command line: a thin shell over the Python API (``lrtransfer --help``)."""
from __future__ import annotations

import functools
import json
import math
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional, get_args

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from .. import choices
from ..analysis.transfer import AXES, METRIC_SPECS
from ..report.render import FORMATS
from ..errors import UserError

# what a repeatable option's value looks like, by option name (--help shows it instead of a type)
LIST_METAVARS = {"--set": "KEY=VALUE", "--series": "NAME", "--param": "NAME=LOW:HIGH[:log]",
                 "--scales": "SCALE", "--label": "SERIES=NAME"}


def _metavar(param) -> str | None:
    """A readable metavar for a parameter that has none: nothing for a flag, the value's shape
    for a repeatable option, INT / NUMBER / PATH / TEXT, or the choices a|b|c."""
    if isinstance(param, TyperOption) and param.is_bool_flag:
        return ""
    if isinstance(param, TyperArgument):
        return param.name.upper()
    desc = param.type_descriptor
    if desc.is_list:
        return next((LIST_METAVARS[o] for o in param.opts if o in LIST_METAVARS), "VALUE")
    if desc.is_choice:
        return choices.metavar(str(c.value if isinstance(c, Enum) else c) for c in desc.choices)
    if desc.is_path:
        return "PATH"
    kind = desc.annotation
    kind = next((a for a in get_args(kind) if a is not type(None)), kind)   # Optional[int] -> int
    return {int: "INT", float: "NUMBER"}.get(kind, "TEXT")


class _Readable:
    """Every parameter gets a readable metavar (typer's default reads <bool>, <list[str]>)."""

    def _readable(self) -> None:
        for param in self.params:
            if param.metavar is None:
                param.metavar = _metavar(param)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class ReadableCommand(_Readable, TyperCommand):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._readable()


class ReadableGroup(_Readable, TyperGroup):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._readable()


class App(typer.Typer):
    """typer.Typer whose commands take ``examples``: shown under "Examples" at the end of --help."""

    def command(self, *args, examples: tuple[str, ...] = (), **kwargs):
        kwargs.setdefault("cls", ReadableCommand)
        if examples:
            kwargs["epilog"] = "\b\nExamples:\n" + "\n".join(f"  {e}" for e in examples)
        return super().command(*args, **kwargs)


app = App(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=ReadableGroup,
          context_settings={"help_option_names": ["-h", "--help"]},
          help="Does a learning rate tuned on a small network stay optimal on a wider or deeper one?",
          epilog="\b\nA new user's first commands:\n"
                 "  lrtransfer keys                                            # what an experiment file takes\n"
                 "  lrtransfer sweep experiments/quickstart.toml --dry-run     # grid size and a time estimate\n"
                 "  lrtransfer sweep experiments/quickstart.toml               # run it (resumes)\n"
                 "  lrtransfer report results/quickstart                       # verdicts\n"
                 "  lrtransfer plot results/quickstart                         # figures\n"
                 "Every command has examples: lrtransfer COMMAND -h")
err = Console(stderr=True)
out = Console()
DEVICE_HELP = f"{' | '.join(choices.DEVICES)} (auto: cuda when available)"
QUIET_HELP = "no progress lines on stderr (the summary and errors are still printed)"


def _choice(option: str, value: str, allowed) -> str:
    """``value`` if it is one of ``allowed``, else a UserError naming the option, the nearest
    allowed value and all of them."""
    allowed = list(allowed)
    if value not in allowed:
        from ..errors import nearest
        raise UserError(f"{option} {value!r}: allowed: {', '.join(allowed)}{nearest(value, allowed)}")
    return value


def _version(value: bool):
    if value:
        from .. import __version__
        out.print(f"lrtransfer {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")):
    """Does a learning rate tuned on a small network stay optimal on a wider or deeper one?"""


def user_errors(fn):
    """Bad input: one message naming the key/path/value, exit code 2, nothing written.
    Ctrl-C: one line saying where things stand, exit code 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..sweep.sweep import SweepInterrupted
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            # user text (keys, values, paths) is printed literally: no rich markup in it
            err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except SweepInterrupted as e:
            err.print(escape(e.summary), highlight=False, soft_wrap=True)
            raise typer.Exit(130)
        except KeyboardInterrupt:
            err.print("interrupted", highlight=False)
            raise typer.Exit(130)
    return wrapper


# choices come from the code's own constants: a metric declared in analysis is a choice here
METRIC_CHOICES = choices.metavar(METRIC_SPECS)
METRIC_HELP = ("what to rank LRs by: " + ", ".join(f"{m.name} ({'maximized' if m.maximize else 'minimized'})"
                                                  for m in METRIC_SPECS.values()))


Format = Enum("Format", {f: f for f in FORMATS}, type=str)          # the report's, tune's and compare's
KeysFormat = Enum("KeysFormat", {f: f for f in ("markdown", "json")}, type=str)
Axis = Enum("Axis", {a: a for a in AXES}, type=str)


def _storage(url: Optional[str]) -> Optional[str]:
    from ..sweep.queue import STORAGE_ENV
    return url or os.environ.get(STORAGE_ENV) or None


@app.command(examples=(
    "lrtransfer sweep experiments/quickstart.toml --dry-run              # grid size, finished cells, time estimate",
    "lrtransfer sweep experiments/quickstart.toml                        # run it; resumes where it stopped",
    "lrtransfer sweep experiments/quickstart.toml --set width=[64,256] --set seeds=5",
    "lrtransfer sweep experiments/quickstart.toml --jobs 1 --device cuda"))
@user_errors
def sweep(experiment: Path = typer.Argument(..., help="experiment TOML file"),
          set_: List[str] = typer.Option([], "--set", help="override a key (run keys: `lrtransfer keys`): lr=0.01, width=[32,64], update=dualize, series.adam.lr={log2=[-10,-4],step=1}"),
          dry_run: bool = typer.Option(False, "--dry-run", help="print grid size, finished cells and a time estimate; run nothing"),
          jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="local worker processes (default: one per core, "
                                             "divided by the runs' threads); 1 runs in this process, 0 only enqueues"),
          rerun: bool = typer.Option(False, "--rerun", help="run every cell again, finished ones included"),
          device: str = typer.Option("auto", help=DEVICE_HELP),
          results: Optional[Path] = typer.Option(None, help="results directory (default results/<experiment name>)"),
          storage: Optional[str] = typer.Option(None, help="optuna storage URL (default: a journal file in the results directory)"),
          retries: int = typer.Option(2, help="re-runs of a run that raises, per sweep"),
          grace: float = typer.Option(60.0, help="seconds without a heartbeat before a running cell counts as lost"),
          quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP)):
    """Run every unfinished cell of an experiment's grid (finished runs are skipped, failed ones rerun).

    Exit codes: 0 all cells finished (done or diverged), 1 some runs failed (each distinct error
    is printed once), 2 bad input, 130 interrupted (claimed cells go back to the queue).
    """
    from ..sweep import load_experiment, plan, run_sweep
    from ..sweep.sweep import results_dir_for
    exp = load_experiment(experiment, set_)
    if dry_run:
        p = plan(exp, results, device, rerun=rerun, jobs=jobs)
        out.print(f"{exp.name} -> {results_dir_for(exp, results)}", markup=False, highlight=False)
        out.print(p.summary(), highlight=False, markup=False)
        return
    result = run_sweep(exp, results, storage=_storage(storage), jobs=jobs, device=device, retries=retries,
                       grace=grace, rerun=rerun, progress=not quiet, console=err)
    runs = result.runs
    counts = runs["status"].value_counts().to_dict() if not runs.empty else {}
    out.print(f"{results_dir_for(exp, results)}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
              markup=False, highlight=False)
    if len(result.failed):
        err.print(f"{len(result.failed)} runs failed:", style="red", highlight=False)
        for e in result.errors():
            err.print(f"  {e['count']}x {e['error']}  (e.g. {e['example']})", markup=False, highlight=False,
                      soft_wrap=True)
        err.print(f"details: lrtransfer status {results_dir_for(exp, results)} --errors", markup=False, highlight=False)
        raise typer.Exit(1)


@app.command(examples=("lrtransfer keys                  # the table: key, section, default, allowed, meaning",
                       "lrtransfer keys --format json"))
@user_errors
def keys(format: KeysFormat = typer.Option(KeysFormat.markdown, help="table as markdown, or JSON records")):
    """The run keys an experiment file takes: section, default, allowed values, meaning."""
    from ..run import spec
    if format == KeysFormat.json:
        out.print_json(json.dumps(spec.as_records()))
    else:
        out.print(spec.markdown_table(), highlight=False, markup=False, soft_wrap=True)


@app.command(examples=(
    "lrtransfer worker --study quickstart --results results/quickstart   # beside a sweep --jobs 0",
    "LRTRANSFER_STORAGE=postgresql://user:pass@db/lrt lrtransfer worker --study quickstart --device cuda"))
@user_errors
def worker(study: str = typer.Option(..., help="study name (the experiment's name)"),
           storage: Optional[str] = typer.Option(None, help="optuna storage URL (or env LRTRANSFER_STORAGE); default: the journal in --results"),
           results: Optional[Path] = typer.Option(None, help="results directory (default: the one the sweep recorded in the study)"),
           device: str = typer.Option("auto", help=DEVICE_HELP),
           grace: float = typer.Option(60.0, help="seconds without a heartbeat before a running cell counts as lost"),
           max_runs: Optional[int] = typer.Option(None, help="stop after this many runs"),
           parent_pid: Optional[int] = typer.Option(None, hidden=True),
           wait_for_go: bool = typer.Option(False, "--wait-for-go", hidden=True),
           quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP)):
    """Claim and run cells of a study until none are left. Start as many as you like, anywhere."""
    from ..run import batched  # noqa: F401  the training stack (torch: seconds), before any wait
    from ..results.store import ResultStore
    from ..sweep import Queue, open_storage, work
    if wait_for_go:   # started by a sweep before it enqueued the cells (sweep.run_sweep)
        try:
            if sys.stdin.readline().strip() != "go":
                raise typer.Exit(0)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
    url = _storage(storage)
    if url is None and results is None:
        raise UserError("worker: give --storage URL (or LRTRANSFER_STORAGE) or --results DIR holding the journal")
    queue = Queue(open_storage(url, results, create=False), study, create=False)
    root = results or queue.study.user_attrs.get("results_dir")
    if root is None:
        raise UserError(f"--study {study}: the study records no results directory; pass --results")
    store = ResultStore(root)

    def on_finish(trial, row):
        if not quiet:
            err.print(f"[{os.getpid()}] {row['run_id']} {row['status']}", highlight=False, markup=False)

    try:
        # workers a sweep started leave the merging to it; free-standing ones merge when the queue drains
        n = work(queue, store, device, max_runs=max_runs, grace=grace, parent_pid=parent_pid,
                 on_finish=on_finish, merge=parent_pid is None)
    except KeyboardInterrupt:
        if not quiet:
            err.print(f"worker {os.getpid()}: interrupted; its cell went back to the queue", highlight=False)
        raise typer.Exit(130)
    if not quiet:
        err.print(f"worker {os.getpid()}: ran {n} cells")


@app.command(examples=("lrtransfer status results/quickstart",
                       "lrtransfer status results/quickstart --errors     # each distinct error of the failed runs",
                       "lrtransfer status --storage \"$LRTRANSFER_STORAGE\" --study quickstart --format json"))
@user_errors
def status(results_dir: Optional[Path] = typer.Argument(None, help="results directory"),
           storage: Optional[str] = typer.Option(None, help="optuna storage URL"),
           study: Optional[str] = typer.Option(None, help="study name (with --storage)"),
           format: str = typer.Option("table", metavar=choices.metavar(choices.STATUS_FORMATS),
                                      help="a table, or everything as JSON"),
           errors: bool = typer.Option(False, "--errors", help="list each distinct error of the failed runs")):
    """Cells waiting / running / done / diverged / failed per series and scale, with an ETA."""
    from ..sweep.status import status_table, sweep_status
    _choice("--format", format, choices.STATUS_FORMATS)
    st = sweep_status(results_dir, _storage(storage), study)
    if errors:
        if format == "json":
            out.print_json(json.dumps(st["errors"], default=str))
            return
        if not st["errors"]:
            out.print("no failed runs", highlight=False)
        for e in st["errors"]:
            out.print(f"{e['count']}x {e['error']}", markup=False, highlight=False, soft_wrap=True)
            out.print(f"   e.g. {e['example']}; run ids: {', '.join(e['run_ids'][:5])}"
                      + (" …" if len(e["run_ids"]) > 5 else ""), markup=False, highlight=False, soft_wrap=True)
        return
    if format == "json":
        out.print_json(json.dumps(st, default=str))
        return
    out.print(status_table(st))


REGIME_HELP = {
    "window": "regimes: fraction of each run's logged points, at the end, that make up its 'late' window",
    "chance": "regimes: a late loss at or above this fraction of the chance loss ln(classes) counts as diverge",
    "slope": "regimes: a late slope of ln(loss) per ln(step) at or below this (< 0) counts as still converging",
    "angle": "regimes: a plateau whose scale-invariant weights still turn at least this many radians per step "
             "(mean over the late window) is chaotic; below it, converged",
}


def _regime_options(window: float, chance: float, slope: float, angle: float) -> dict:
    from ..analysis.dynamics import check_regime_options
    check_regime_options(window, chance, slope, angle)
    return {"window": window, "chance_fraction": chance, "slope": slope, "angle": angle}


def _second_path(target: Path, stem: str, suffix: str) -> Path:
    """The second figure's path: ``stem`` swapped for ``suffix`` in the first one's name, else appended."""
    name = target.stem.replace(stem, suffix) if stem in target.stem else f"{target.stem}_{suffix}"
    return target.with_name(name).with_suffix(target.suffix)


def _labels(pairs: list[str], results_dir: Path | None = None) -> dict:
    """Display names of series: the experiment's own (``label = "…"`` in a series table, as
    the results directory recorded it), then ``--label series=Name`` options over them."""
    from ..results.store import ResultStore
    recorded = ResultStore(results_dir).experiment() if results_dir is not None else None
    labels = dict((recorded or {}).get("labels") or {})
    for text in pairs:
        name, sep, label = text.partition("=")
        if not sep or not name.strip() or not label.strip():
            raise UserError(f"--label {text!r}: expected SERIES=NAME, e.g. normed_adam='normed Adam'")
        labels[name.strip()] = label.strip()
    return labels


SECOND_FIGURE = {"lr": ("lr_curves", "transfer"), "lrwd": ("lrwd", "lrwd_curves")}
DEFAULT_FIGURE = {"lr": "lr_curves", "curves": "loss_steps", "diagnostics": "diagnostics_{quantity}",
                  "regimes": "regimes", "lrwd": "lrwd"}


@app.command(examples=(
    "lrtransfer plot results/quickstart                        # lr_curves.png and transfer.png in the directory",
    "lrtransfer plot results/quickstart --metric test_acc --out acc.svg   # writes acc.svg and acc_transfer.svg",
    "lrtransfer plot results/quickstart --series normed_adam --scales 32 --scales 512 --label normed_adam='normed Adam'",
    "lrtransfer plot results/quickstart --kind curves --scale 128 --logy --out curves.svg"))
@user_errors
def plot(results_dir: Path = typer.Argument(..., help="results directory of a sweep"),
         kind: str = typer.Option("lr", "--kind", metavar=choices.metavar(choices.PLOT_KINDS),
                                  help="lr: loss vs LR per scale, and the transfer view as a second figure | curves: "
                                  "loss vs step | diagnostics: a per-atom quantity vs step | regimes: final loss vs "
                                  "ELR coloured by regime | lrwd: loss over lr x weight decay, and curves by lr·wd as "
                                  "a second figure"),
         metric: str = typer.Option("train_loss", metavar=METRIC_CHOICES, help=METRIC_HELP),
         axis: Optional[Axis] = typer.Option(None, help="scale axis (default: the one that varies); one with a single "
                                             "value is an error"),
         out_: Optional[Path] = typer.Option(None, "--out", help="figure path (.png/.svg/.pdf); default RESULTS_DIR/"
                                             "<lr_curves|loss_steps|diagnostics_QUANTITY|regimes|lrwd>.png. --kind lr "
                                             "(with two or more scales) and lrwd also write a second figure beside it: "
                                             "NAME_transfer / NAME_lrwd_curves (lr_curves -> transfer, lrwd -> "
                                             "lrwd_curves)"),
         series: List[str] = typer.Option([], "--series", help="draw only this series (repeat for more; default all)"),
         scales: List[int] = typer.Option([], "--scales", metavar="SCALE", help="draw only this width or depth "
                                          "(repeat for more; default all); the transfer view uses the smallest as base"),
         label: List[str] = typer.Option([], "--label", help="display name of a series in titles and legends, "
                                         "e.g. normed_adam='normed Adam' (repeat for more)"),
         logy: bool = typer.Option(False, "--logy", help="log y axis (every value drawn must be > 0)"),
         ci: float = typer.Option(0.9, "--ci", help="confidence level of the bars on the fitted optima (bootstrap over seeds)"),
         tolerance: float = typer.Option(1.0, "--tolerance", help="octaves of drift over the scale range that still count as transfer"),
         steps: bool = typer.Option(False, "--steps", help="the same as --kind curves"),
         scale: Optional[int] = typer.Option(None, "--scale", help="curves, diagnostics, lrwd: the width or depth to show "
                                             "(default the largest; with --color-by scale, default all)"),
         lr: Optional[float] = typer.Option(None, "--lr", help="curves, diagnostics: only the runs at this LR (the effective LR where elr is swept) "
                                            "(default: all LRs, or with --color-by scale / diagnostics each one's best)"),
         color_by: str = typer.Option("lr", "--color-by", metavar=choices.metavar(choices.COLOR_BY),
                                      help="curves: one line per lr (at one scale) or per scale"),
         quantity: str = typer.Option("relative_update", "--quantity", metavar=choices.metavar(choices.QUANTITIES),
                                      help="diagnostics: the per-atom quantity"),
         regime_window: float = typer.Option(0.25, "--regime-window", help=REGIME_HELP["window"]),
         regime_chance: float = typer.Option(0.9, "--regime-chance", help=REGIME_HELP["chance"]),
         regime_slope: float = typer.Option(-0.1, "--regime-slope", help=REGIME_HELP["slope"]),
         regime_angle: float = typer.Option(1e-3, "--regime-angle", help=REGIME_HELP["angle"]),
         ):
    """Figures of a sweep: loss vs LR per scale and series, with optimal LR and regret vs scale (default).

    Or training curves, per-atom diagnostics, sphere regimes, or the lr x weight decay view (--kind).
    Every figure is drawn before any file is written: a request the data cannot answer (an axis
    with one value, an unknown series or scale) exits 2 and leaves the old figures as they were.
    """
    from ..analysis import transfer as analysis
    from ..plots import figures as plots
    from ..results.store import load_diagnostics, load_results
    if steps:
        kind = "curves"
    _choice("--kind", kind, choices.PLOT_KINDS)
    _choice("--quantity", quantity, choices.QUANTITIES)
    _choice("--color-by", color_by, choices.COLOR_BY)
    analysis.metric_spec(metric)
    thresholds = _regime_options(regime_window, regime_chance, regime_slope, regime_angle)
    runs, curves = load_results(results_dir)
    target = plots.check_out(out_ or results_dir / f"{DEFAULT_FIGURE[kind].format(quantity=quantity)}.png")
    a = axis.value if axis else None
    runs = plots.select(runs, series=series, scales=scales, axis=a)
    style = plots.Style(labels=_labels(label, results_dir), logy=logy)
    m = metric
    # every figure is drawn before any is written: an error leaves the old figures intact
    if kind == "lr":
        figures = [plots.lr_curves(runs, metric=m, axis=a, style=style)]
        single = plots.single_scale(runs, a)
        if single is None:
            figures.append(plots.transfer_plot(runs, metric=m, axis=a, ci=ci, tolerance=tolerance, style=style))
        else:
            err.print(f"one {single}: no transfer view (it needs two or more); drew the loss-vs-LR curves only",
                      markup=False, highlight=False)
    elif kind == "curves":
        figures = [plots.training_curves(runs, curves, color_by=color_by, metric=m, axis=a, scale=scale, lr=lr,
                                         style=style)]
    elif kind == "diagnostics":
        figures = [plots.diagnostics_plot(runs, load_diagnostics(results_dir), quantity=quantity, axis=a,
                                          scale=scale, lr=lr, style=style)]
    elif kind == "regimes":
        from ..analysis import dynamics
        table = dynamics.regimes(runs, curves, load_diagnostics(results_dir), **thresholds)
        x = "elr" if (dynamics.effective_lr(runs) > 0).any() else "lr"
        figures = [plots.regime_plot(runs, table, x=x, metric=m, style=style)]
    else:
        figures = [plots.lrwd_heatmap(runs, metric=m, axis=a, scale=scale, style=style),
                   plots.curves_by_lrwd(runs, curves, metric=m, axis=a, scale=scale, style=style)]
    paths = [target] + ([_second_path(target, *SECOND_FIGURE[kind])] if len(figures) > 1 else [])
    for fig, path in zip(figures, paths):
        plots.save(fig, path)
    out.print("wrote " + " and ".join(str(path) for path in paths), markup=False, highlight=False)


@app.command(examples=("lrtransfer report results/quickstart",
                       "lrtransfer report results/quickstart --metric test_acc      # rank LRs by test accuracy (max)",
                       "lrtransfer report results/quickstart --format json --ci 0.95 --tolerance 0.5"))
@user_errors
def report(results_dir: Path = typer.Argument(..., help="results directory of a sweep"),
           metric: str = typer.Option("train_loss", metavar=METRIC_CHOICES, help=METRIC_HELP),
           axis: Optional[Axis] = typer.Option(None, help="scale axis to analyse: width or depth (default: the one that varies; both when both do)"),
           format: Format = typer.Option(Format.markdown, help="csv: the per-scale table with the verdicts merged in"),
           min_runs: int = typer.Option(3, help="fewer finished LRs at a scale than this is flagged"),
           ci: float = typer.Option(0.9, "--ci", help="confidence level of the intervals (bootstrap over seeds)"),
           tolerance: float = typer.Option(1.0, "--tolerance", help="a drift CI inside ±this many octaves over the scale range is 'transfers'"),
           n_boot: int = typer.Option(1000, "--n-boot", help="bootstrap replicates"),
           seed: int = typer.Option(0, "--seed", help="bootstrap random seed (reports are reproducible)"),
           regime_window: float = typer.Option(0.25, "--regime-window", help=REGIME_HELP["window"]),
           regime_chance: float = typer.Option(0.9, "--regime-chance", help=REGIME_HELP["chance"]),
           regime_slope: float = typer.Option(-0.1, "--regime-slope", help=REGIME_HELP["slope"]),
           regime_angle: float = typer.Option(1e-3, "--regime-angle", help=REGIME_HELP["angle"])):
    """Per series and axis: a transfer verdict (transfers / drifts / inconclusive) from the
    bootstrap CI of the fitted drift, with slope and regret CIs, then the optimum per scale.

    A "Regimes" section follows when the runs set an effective LR or train on the sphere, and an
    "lr·wd invariance" section when weight_decay takes two or more values (JSON: keys "regimes"
    and "lrwd")."""
    from ..analysis import transfer as analysis, dynamics
    analysis.metric_spec(metric)
    from ..results.store import load_diagnostics, load_results
    thresholds = _regime_options(regime_window, regime_chance, regime_slope, regime_angle)
    runs, curves = load_results(results_dir)
    text = analysis.report(runs, metric=metric, axis=axis.value if axis else None, format=format.value,
                           min_runs=min_runs, ci=ci, tolerance=tolerance, n_boot=n_boot, seed=seed)
    sections = {}
    if format != Format.csv and dynamics.has_regimes(runs):
        sections["regimes"] = dynamics.regime_summary(runs, curves, load_diagnostics(results_dir),
                                                      **thresholds)
    if format != Format.csv and dynamics.has_lrwd(runs):
        try:
            sections["lrwd"] = dynamics.lrwd_invariance(runs, curves, metric=metric, ci=ci, n_boot=n_boot,
                                                        seed=seed)
        except UserError as e:  # a wd axis this statistic cannot use (e.g. only 0 and one value) is not an error
            sections["lrwd"] = {"error": str(e)}
    if format == Format.json:
        doc = json.loads(text)
        doc.update(sections)
        text = dynamics.to_json(doc)
    elif sections:
        text = text.rstrip("\n") + "\n\n"
        text += "\n".join(dynamics.regime_report(v) if k == "regimes" else
                          f"## lr·wd invariance\n\nnot computed: {v['error']}\n" if "error" in v else
                          dynamics.lrwd_report(v) for k, v in sections.items())
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command(examples=("lrtransfer compare results/quickstart results/quickstart_wd",
                       "lrtransfer compare results/quickstart results/quickstart_wd --out compare.svg --format json"))
@user_errors
def compare(results_dirs: List[Path] = typer.Argument(..., help="two or more results directories"),
            metric: str = typer.Option("train_loss", metavar=METRIC_CHOICES, help=METRIC_HELP),
            axis: Optional[Axis] = typer.Option(None, help="scale axis to analyse: width or depth (default: the one that varies; both when both do)"),
            format: Format = typer.Option(Format.markdown, help="csv: the per-scale table"),
            out_: Optional[Path] = typer.Option(None, "--out", help="also draw the overlaid loss-vs-LR curves "
                                                "here (.png/.svg/.pdf)"),
            ci: float = typer.Option(0.9, "--ci", help="confidence level (bootstrap over seeds)"),
            tolerance: float = typer.Option(1.0, "--tolerance", help="octaves of drift that still count as transfer")):
    """Did a change move the optimum? The transfer numbers of several results directories side by
    side: verdict and drift per series, the fitted optimal LR per scale with its shift from the
    first directory, and (with --out) their loss-vs-LR curves overlaid."""
    from ..analysis import transfer as analysis, compare as comparison
    from ..plots import figures as plots
    analysis.metric_spec(metric)
    target = plots.check_out(out_) if out_ is not None else None
    runs_by_dir = comparison.load(results_dirs)
    scales, verdicts = comparison.compare(runs_by_dir, metric=metric, axis=axis.value if axis else None,
                                          ci=ci, tolerance=tolerance)
    figure = plots.compare_curves(runs_by_dir, metric=metric, axis=axis.value if axis else None) \
        if target is not None else None
    sys.stdout.write(comparison.render_comparison(scales, verdicts, format.value, ci=ci, metric=metric))
    if figure is not None:
        plots.save(figure, target)
        err.print(f"wrote {target}", markup=False, highlight=False)


@app.command(examples=("lrtransfer tune experiments/quickstart.toml --trials 8",
                       "lrtransfer tune experiments/quickstart.toml --series adam --param weight_decay=1e-5:1e-1:log",
                       "lrtransfer tune experiments/lrwd_resmlp_mnist1d.toml --along lrwd --format json"))
@user_errors
def tune(experiment: Path = typer.Argument(..., help="experiment TOML file (its grid gives the scales and LR window)"),
         set_: List[str] = typer.Option([], "--set", help="override a key, as in sweep"),
         series: List[str] = typer.Option([], "--series", help="series to tune (default: all)"),
         trials: int = typer.Option(8, help="search runs at the base scale"),
         sampler: str = typer.Option("tpe", metavar=choices.metavar(choices.SAMPLERS), help="optuna sampler"),
         param: List[str] = typer.Option([], "--param", help="also search name=low:high[:log], e.g. weight_decay=1e-5:1e-1:log"),
         axis: Optional[Axis] = typer.Option(None, help="scale axis to transfer along (default: the one that varies)"),
         metric: str = typer.Option("train_loss", metavar=METRIC_CHOICES, help=METRIC_HELP),
         results: Optional[Path] = typer.Option(None, help="results directory (default results/<experiment name>; "
                                                "its grid, if any, is the reference for the regret)"),
         storage: Optional[str] = typer.Option(None, help="optuna storage URL (default: the journal in the results directory)"),
         device: str = typer.Option("auto", help=DEVICE_HELP),
         seed: int = typer.Option(0, help="sampler seed"),
         format: Format = typer.Option(Format.markdown, help="json/csv: the per-scale table (json: and the compute)"),
         along: str = typer.Option("lr", "--along", metavar=choices.metavar(choices.ALONG), help="lr: search the LR at the smallest scale and transfer it | "
                                   "lrwd: hold lr fixed and search only lr·weight_decay (needs a weight_decay grid)"),
         lr: Optional[float] = typer.Option(None, "--lr", help="with --along lrwd: the fixed LR (default: the series' "
                                            "lr, or the middle of its LR grid)")):
    """Search the LR at the smallest scale, run it at the larger ones, report regret and compute
    (or, with --along lrwd, search lr·wd at a fixed LR against the full lr x weight_decay grid)."""
    from ..sweep import load_experiment
    from ..analysis.transfer import metric_spec
    from ..sweep.tune import SearchParam, render_tune, tune as run_tune
    _choice("--along", along, choices.ALONG)
    _choice("--sampler", sampler, choices.SAMPLERS)
    metric_spec(metric)
    if along == "lr" and lr is not None:
        raise UserError("--lr: only with --along lrwd (--along lr searches the LR)")
    if along == "lrwd" and param:
        raise UserError(f"--param {param[0]}: only with --along lr (--along lrwd searches lr·wd alone)")
    exp = load_experiment(experiment, set_)
    if along == "lrwd":
        _tune_lrwd(exp, series, trials, sampler, lr, axis, metric, results, storage, device, seed, format)
        return
    results_list = run_tune(exp, series or None, trials=trials, sampler=sampler,
                            params=[SearchParam.parse(p) for p in param], axis=axis.value if axis else None,
                            metric=metric, results_dir=results, storage=_storage(storage), device=device,
                            seed=seed, on_run=_tune_progress)
    sys.stdout.write(render_tune(results_list, format.value, metric))


def _tune_progress(series: str, scale, row: dict) -> None:
    """One line per tuning run on stderr: where, what it tried, how it ended."""
    where = f"{series}" + (f" at scale {scale}" if scale is not None else "")
    tried = f"lr {row['lr']:.3g}" + (f", wd {row['weight_decay']:.3g}" if row.get("weight_decay") else "")
    loss = row.get("final_train_loss")
    ended = f"{row['status']}" + (f", train loss {loss:.4f}" if isinstance(loss, float) and math.isfinite(loss) else "")
    err.print(f"{where}: {tried}: {ended}", highlight=False, markup=False)


def _tune_lrwd(exp, series, trials, sampler, lr, axis, metric, results, storage, device, seed, format) -> None:
    from ..sweep.tune import render_lrwd, tune_lrwd
    found = tune_lrwd(exp, series or None, trials=trials, sampler=sampler, lr=lr, axis=axis.value if axis else None,
                      metric=metric, results_dir=results, storage=_storage(storage), device=device, seed=seed,
                      on_run=_tune_progress)
    sys.stdout.write(render_lrwd(found, format.value, metric))


@app.command(examples=(
    "lrtransfer export results/quickstart --to tensorboard           # event files in results/quickstart/tensorboard",
    "tensorboard --logdir results/quickstart/tensorboard",
    "lrtransfer export results/quickstart --to mlflow                # sqlite:///results/quickstart/mlflow.db",
    "lrtransfer export results/quickstart --to mlflow --uri http://localhost:5000 --experiment qs"))
@user_errors
def export(results_dir: Path = typer.Argument(..., help="results directory of a sweep"),
           to: str = typer.Option(..., "--to", metavar=choices.metavar(choices.EXPORT_TARGETS),
                                  help="where to: TensorBoard event files or an MLflow tracking store "
                                       "(extras: lrtransfer[tensorboard], lrtransfer[mlflow])"),
           uri: Optional[str] = typer.Option(None, "--uri", help="tensorboard: the log directory (default "
                                             "RESULTS_DIR/tensorboard, replaced whole); mlflow: any tracking URI "
                                             "(default sqlite:///RESULTS_DIR/mlflow.db)"),
           experiment: Optional[str] = typer.Option(None, "--experiment", help="mlflow: the experiment to log into "
                                                    "(default: the results' experiment name)")):
    """Every run of a results directory into TensorBoard or MLflow: its config as hyperparameters,
    its training curve as steps, its final metrics, status and run id (re-exporting to MLflow adds
    only new runs)."""
    from ..results.export import export as run_export
    done = run_export(results_dir, to, uri=uri, experiment=experiment)
    out.print(f"{done.target}: {done.written} runs written to {done.where}"
              + (f" ({done.skipped} already there)" if done.skipped else ""), markup=False, highlight=False)


@app.command(examples=(
    "lrtransfer coordcheck experiments/quickstart.toml --set width=[64,256,1024] --steps 3 --out coord.png",
    "lrtransfer coordcheck experiments/methods_width_mnist1d.toml --series sp_adam --series mup_adam --format json"))
@user_errors
def coordcheck(experiment: Path = typer.Argument(..., help="experiment TOML file (its width grid gives the widths)"),
               set_: List[str] = typer.Option([], "--set", help="override a key, as in sweep"),
               steps: int = typer.Option(5, "--steps", help="training steps on the fixed batch"),
               lr: Optional[float] = typer.Option(None, "--lr", help="one LR for every series (default: each series' "
                                                  "base-scale LR, the middle of its LR grid at the smallest width)"),
               threshold: float = typer.Option(0.1, "--threshold", help="largest |slope| of log RMS vs log width that passes"),
               series: List[str] = typer.Option([], "--series", help="series to check (default: all)"),
               format: str = typer.Option("markdown", "--format", metavar="markdown|json", help="verdicts and slopes as markdown tables or JSON"),
               out_: Optional[Path] = typer.Option(None, "--out", help="also draw RMS vs width per atom at the last step (.png/.svg/.pdf)"),
               device: str = typer.Option("cpu", help=DEVICE_HELP),
               quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP)):
    """μP-style coordinate check: per series, train every width of the grid a few steps on one
    fixed batch (seed and depth: the smallest; constant LR) and fit, per weight atom and step,
    the slope of log RMS against log width of its output, of its output's change since init and
    of its own step ΔW·x. A series passes when every |slope| <= --threshold (the logits and
    their change may shrink, not grow). Verdicts are data: the exit code is 0 whether series
    pass or fail (2 for bad input)."""
    from ..analysis import coordcheck as cc_mod
    from ..plots import figures as plots
    cc_mod.check_format(format)
    target = plots.check_out(out_)
    from ..sweep import load_experiment
    exp = load_experiment(experiment, set_)
    result = cc_mod.coordcheck(exp, steps=steps, lr=lr, threshold=threshold, series=series or None, device=device,
                               on_width=None if quiet else lambda s, w: err.print(f"{s}: width {w}", highlight=False,
                                                                                   markup=False))
    if target is not None:  # drawn in full before anything is written
        plots.save(cc_mod.figure(result), target)
        err.print(f"wrote {target}", markup=False, highlight=False)
    text = cc_mod.render(result, format)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def main():
    app()


if __name__ == "__main__":
    main()
