"""The command line: a thin shell over the Python API (``lrtransfer --help``)."""
from __future__ import annotations

import functools
import json
import math
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .analysis import METRIC_SPECS
from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Does a learning rate tuned on a small network stay optimal on a wider or deeper one?")
err = Console(stderr=True)
out = Console()


def _version(value: bool):
    if value:
        from . import __version__
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
        from .sweep.sweep import SweepInterrupted
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
Metric = Enum("Metric", {name: name for name in METRIC_SPECS}, type=str)
METRIC_HELP = ("what to rank LRs by: " + ", ".join(f"{m.name} ({'maximized' if m.maximize else 'minimized'})"
                                                  for m in METRIC_SPECS.values()))


class Format(str, Enum):
    markdown = "markdown"
    json = "json"
    csv = "csv"


class KeysFormat(str, Enum):
    markdown = "markdown"
    json = "json"


class Axis(str, Enum):
    width = "width"
    depth = "depth"


def _storage(url: Optional[str]) -> Optional[str]:
    from .sweep.queue import STORAGE_ENV
    return url or os.environ.get(STORAGE_ENV) or None


@app.command()
@user_errors
def sweep(experiment: Path = typer.Argument(..., help="experiment TOML file"),
          set_: List[str] = typer.Option([], "--set", help="override a key (run keys: `lrtransfer keys`): lr=0.01, width=[32,64], update=dualize, series.adam.lr={log2=[-10,-4],step=1}"),
          dry_run: bool = typer.Option(False, "--dry-run", help="print grid size, finished cells and a time estimate; run nothing"),
          jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="local worker processes (default: one per core, "
                                             "divided by the runs' threads); 1 runs in this process, 0 only enqueues"),
          rerun: bool = typer.Option(False, "--rerun", help="run every cell again, finished ones included"),
          device: str = typer.Option("auto", help="auto | cpu | cuda"),
          results: Optional[Path] = typer.Option(None, help="results directory (default results/<experiment name>)"),
          storage: Optional[str] = typer.Option(None, help="optuna storage URL (default: a journal file in the results directory)"),
          retries: int = typer.Option(2, help="re-runs of a run that raises, per sweep"),
          grace: float = typer.Option(60.0, help="seconds without a heartbeat before a running cell counts as lost"),
          quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Run every unfinished cell of an experiment's grid (finished runs are skipped, failed ones rerun).

    Exit codes: 0 all cells finished (done or diverged), 1 some runs failed (each distinct error
    is printed once), 2 bad input, 130 interrupted (claimed cells go back to the queue).
    """
    from .sweep import load_experiment, plan, run_sweep
    from .sweep.sweep import results_dir_for
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


@app.command()
@user_errors
def keys(format: KeysFormat = typer.Option(KeysFormat.markdown, help="markdown | json")):
    """The run keys an experiment file takes: section, default, allowed values, meaning.

    Example: lrtransfer keys --format json
    """
    from . import spec
    if format == KeysFormat.json:
        out.print_json(json.dumps(spec.as_records()))
    else:
        out.print(spec.markdown_table(), highlight=False, markup=False, soft_wrap=True)


@app.command()
@user_errors
def worker(study: str = typer.Option(..., help="study name (the experiment's name)"),
           storage: Optional[str] = typer.Option(None, help="optuna storage URL (or env LRTRANSFER_STORAGE); default: the journal in --results"),
           results: Optional[Path] = typer.Option(None, help="results directory (default: the one the sweep recorded in the study)"),
           device: str = typer.Option("auto"),
           grace: float = typer.Option(60.0, help="seconds without a heartbeat before a running cell counts as lost"),
           max_runs: Optional[int] = typer.Option(None, help="stop after this many runs"),
           parent_pid: Optional[int] = typer.Option(None, hidden=True),
           quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Claim and run cells of a study until none are left. Start as many as you like, anywhere."""
    from .store import ResultStore
    from .sweep import Queue, open_storage, work
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


@app.command()
@user_errors
def status(results_dir: Optional[Path] = typer.Argument(None, help="results directory"),
           storage: Optional[str] = typer.Option(None, help="optuna storage URL"),
           study: Optional[str] = typer.Option(None, help="study name (with --storage)"),
           format: str = typer.Option("table", help="table | json"),
           errors: bool = typer.Option(False, "--errors", help="list each distinct error of the failed runs")):
    """Cells waiting / running / done / diverged / failed per series and scale, with an ETA."""
    from .status import sweep_status
    if format not in ("table", "json"):
        raise UserError(f"--format {format!r}: allowed: table, json")
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
    table = Table(title=escape(f"{st['study']} ({st['storage']})"))
    cols = ["series", "scale", "waiting", "running", "done", "diverged", "failed"]
    for c in cols:
        table.add_column(c, justify="right" if c not in ("series", "scale") else "left")
    for row in st["rows"]:
        table.add_row(*(escape(str(row[c])) for c in cols))
    out.print(table)
    out.print("total: " + ", ".join(f"{n} {state}" for state, n in st["totals"].items()) + f"; eta {st['eta']}",
              highlight=False)


PLOT_KINDS = ("lr", "curves", "diagnostics", "regimes", "lrwd")
REGIME_HELP = {
    "window": "regimes: fraction of each run's logged points, at the end, that make up its 'late' window",
    "chance": "regimes: a late loss at or above this fraction of the chance loss ln(classes) counts as diverge",
    "slope": "regimes: a late slope of ln(loss) per ln(step) at or below this (< 0) counts as still converging",
    "angle": "regimes: a plateau whose scale-invariant weights still turn at least this many radians per step "
             "(mean over the late window) is chaotic; below it, converged",
}


def _regime_options(window: float, chance: float, slope: float, angle: float) -> dict:
    from .dynamics import check_regime_options
    check_regime_options(window, chance, slope, angle)
    return {"window": window, "chance_fraction": chance, "slope": slope, "angle": angle}


def _second_path(target: Path, stem: str, suffix: str) -> Path:
    """The second figure's path: ``stem`` swapped for ``suffix`` in the first one's name, else appended."""
    name = target.stem.replace(stem, suffix) if stem in target.stem else f"{target.stem}_{suffix}"
    return target.with_name(name).with_suffix(target.suffix)


@app.command()
@user_errors
def plot(results_dir: Path = typer.Argument(..., help="results directory of a sweep"),
         kind: str = typer.Option("lr", "--kind", help="lr: loss vs LR per scale and the transfer view | curves: loss "
                                  "vs step | diagnostics: a per-atom quantity vs step | regimes: final loss vs ELR "
                                  "coloured by regime | lrwd: loss over lr x weight decay and curves by lr·wd"),
         metric: Metric = typer.Option(Metric.train_loss, help=METRIC_HELP),
         axis: Optional[Axis] = typer.Option(None, help="scale axis (default: the one that varies)"),
         out_: Optional[Path] = typer.Option(None, "--out", help="figure path (.png/.svg/.pdf); default RESULTS_DIR/"
                                             "<lr_curves|loss_steps|diagnostics_QUANTITY|regimes|lrwd>.png"),
         ci: float = typer.Option(0.9, "--ci", help="confidence level of the bars on the fitted optima (bootstrap over seeds)"),
         tolerance: float = typer.Option(1.0, "--tolerance", help="octaves of drift over the scale range that still count as transfer"),
         steps: bool = typer.Option(False, "--steps", help="the same as --kind curves"),
         scale: Optional[int] = typer.Option(None, "--scale", help="curves, diagnostics, lrwd: the width or depth to show "
                                             "(default the largest; with --color-by scale, default all)"),
         lr: Optional[float] = typer.Option(None, "--lr", help="curves, diagnostics: only the runs at this LR (the effective LR where elr is swept) "
                                            "(default: all LRs, or with --color-by scale / diagnostics each one's best)"),
         color_by: str = typer.Option("lr", "--color-by", help="curves: one line per lr (at one scale) or per scale"),
         quantity: str = typer.Option("relative_update", "--quantity", help="diagnostics: relative_update | elr | "
                                      "condition | weight_norm | update_norm | angle"),
         regime_window: float = typer.Option(0.25, "--regime-window", help=REGIME_HELP["window"]),
         regime_chance: float = typer.Option(0.9, "--regime-chance", help=REGIME_HELP["chance"]),
         regime_slope: float = typer.Option(-0.1, "--regime-slope", help=REGIME_HELP["slope"]),
         regime_angle: float = typer.Option(1e-3, "--regime-angle", help=REGIME_HELP["angle"]),
         ):
    """Figures of a sweep: loss vs LR per scale and series with optimal LR / regret vs scale (default),
    or training curves, per-atom diagnostics, sphere regimes, or the lr x weight decay view (--kind).

    Example: lrtransfer plot results/quickstart --kind curves --scale 128 --out curves.svg
    """
    from . import plots
    from .store import load_diagnostics, load_results
    if steps:
        kind = "curves"
    if kind not in PLOT_KINDS:
        raise UserError(f"--kind {kind!r}: allowed: {', '.join(PLOT_KINDS)}")
    if quantity not in plots.QUANTITIES:
        raise UserError(f"--quantity {quantity!r}: allowed: {', '.join(plots.QUANTITIES)}")
    if color_by not in plots.COLOR_BY:
        raise UserError(f"--color-by {color_by!r}: allowed: {', '.join(plots.COLOR_BY)}")
    thresholds = _regime_options(regime_window, regime_chance, regime_slope, regime_angle)
    default = {"lr": "lr_curves", "curves": "loss_steps", "diagnostics": f"diagnostics_{quantity}",
               "regimes": "regimes", "lrwd": "lrwd"}[kind]
    runs, curves = load_results(results_dir)
    target = plots.check_out(out_ or results_dir / f"{default}.png")
    a = axis.value if axis else None
    m = metric.value
    # every figure is drawn before any is written: an error leaves the old figures intact
    if kind == "lr":
        second = _second_path(target, "lr_curves", "transfer")
        figures = [(plots.lr_curves(runs, metric=m, axis=a), target),
                   (plots.transfer_plot(runs, metric=m, axis=a, ci=ci, tolerance=tolerance), second)]
    elif kind == "curves":
        figures = [(plots.training_curves(runs, curves, color_by=color_by, metric=m, axis=a, scale=scale, lr=lr),
                    target)]
    elif kind == "diagnostics":
        figures = [(plots.diagnostics_plot(runs, load_diagnostics(results_dir), quantity=quantity, axis=a,
                                           scale=scale, lr=lr), target)]
    elif kind == "regimes":
        from . import dynamics
        table = dynamics.regimes(runs, curves, load_diagnostics(results_dir), **thresholds)
        x = "elr" if (dynamics.effective_lr(runs) > 0).any() else "lr"
        figures = [(plots.regime_plot(runs, table, x=x, metric=m), target)]
    else:
        second = _second_path(target, "lrwd", "lrwd_curves")
        figures = [(plots.lrwd_heatmap(runs, metric=m, axis=a, scale=scale), target),
                   (plots.curves_by_lrwd(runs, curves, metric=m, axis=a, scale=scale), second)]
    for fig, path in figures:
        plots.save(fig, path)
    out.print("wrote " + " and ".join(str(path) for _, path in figures), markup=False, highlight=False)


@app.command()
@user_errors
def report(results_dir: Path = typer.Argument(..., help="results directory of a sweep"),
           metric: Metric = typer.Option(Metric.train_loss, help=METRIC_HELP),
           axis: Optional[Axis] = typer.Option(None),
           format: Format = typer.Option(Format.markdown, help="markdown | json | csv (csv: the transfer table only)"),
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
    from . import analysis, dynamics
    from .store import load_diagnostics, load_results
    thresholds = _regime_options(regime_window, regime_chance, regime_slope, regime_angle)
    runs, curves = load_results(results_dir)
    text = analysis.report(runs, metric=metric.value, axis=axis.value if axis else None, format=format.value,
                           min_runs=min_runs, ci=ci, tolerance=tolerance, n_boot=n_boot, seed=seed)
    sections = {}
    if format != Format.csv and dynamics.has_regimes(runs):
        sections["regimes"] = dynamics.regime_summary(runs, curves, load_diagnostics(results_dir),
                                                      **thresholds)
    if format != Format.csv and dynamics.has_lrwd(runs):
        try:
            sections["lrwd"] = dynamics.lrwd_invariance(runs, curves, metric=metric.value, ci=ci, n_boot=n_boot,
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


@app.command()
@user_errors
def compare(results_dirs: List[Path] = typer.Argument(..., help="two or more results directories"),
            metric: Metric = typer.Option(Metric.train_loss, help=METRIC_HELP),
            axis: Optional[Axis] = typer.Option(None, help="scale axis (default: the one that varies)"),
            format: Format = typer.Option(Format.markdown, help="markdown | json | csv (csv: the per-scale table)"),
            out_: Optional[Path] = typer.Option(None, "--out", help="also draw the overlaid loss-vs-LR curves "
                                                "here (.png/.svg/.pdf)"),
            ci: float = typer.Option(0.9, "--ci", help="confidence level (bootstrap over seeds)"),
            tolerance: float = typer.Option(1.0, "--tolerance", help="octaves of drift that still count as transfer")):
    """Did a change move the optimum? The transfer numbers of several results directories side by
    side: verdict and drift per series, the fitted optimal LR per scale with its shift from the
    first directory, and (with --out) their loss-vs-LR curves overlaid.

    Example: lrtransfer compare results/quickstart results/quickstart_wd --out compare.png
    """
    from . import compare as comparison, plots
    target = plots.check_out(out_) if out_ is not None else None
    runs_by_dir = comparison.load(results_dirs)
    scales, verdicts = comparison.compare(runs_by_dir, metric=metric.value, axis=axis.value if axis else None,
                                          ci=ci, tolerance=tolerance)
    figure = plots.compare_curves(runs_by_dir, metric=metric.value, axis=axis.value if axis else None) \
        if target is not None else None
    if format == Format.json:
        out.print_json(json.dumps({"verdicts": json.loads(verdicts.to_json(orient="records")),
                                   "scales": json.loads(scales.to_json(orient="records"))}))
    elif format == Format.csv:
        sys.stdout.write(scales.to_csv(index=False))
    else:
        out.print(comparison.markdown(scales, verdicts, ci=ci), highlight=False, markup=False, soft_wrap=True)
    if figure is not None:
        plots.save(figure, target)
        err.print(f"wrote {target}", markup=False, highlight=False)


@app.command()
@user_errors
def tune(experiment: Path = typer.Argument(..., help="experiment TOML file (its grid gives the scales and LR window)"),
         set_: List[str] = typer.Option([], "--set", help="override a key, as in sweep"),
         series: List[str] = typer.Option([], "--series", help="series to tune (default: all)"),
         trials: int = typer.Option(8, help="search runs at the base scale"),
         sampler: str = typer.Option("tpe", help="tpe | gp | random"),
         param: List[str] = typer.Option([], "--param", help="also search name=low:high[:log], e.g. weight_decay=1e-5:1e-1:log"),
         axis: Optional[Axis] = typer.Option(None),
         metric: Metric = typer.Option(Metric.train_loss, help=METRIC_HELP),
         results: Optional[Path] = typer.Option(None),
         storage: Optional[str] = typer.Option(None),
         device: str = typer.Option("auto"),
         seed: int = typer.Option(0, help="sampler seed"),
         format: Format = typer.Option(Format.markdown),
         along: str = typer.Option("lr", "--along", help="lr: search the LR at the smallest scale and transfer it | "
                                   "lrwd: hold lr fixed and search only lr·weight_decay (needs a weight_decay grid)"),
         lr: Optional[float] = typer.Option(None, "--lr", help="with --along lrwd: the fixed LR (default: the series' "
                                            "lr, or the middle of its LR grid)")):
    """Search the LR at the smallest scale, run it at the larger ones, report regret and compute
    (or, with --along lrwd, search lr·wd at a fixed LR against the full lr x weight_decay grid)."""
    from .sweep import load_experiment
    from .tune import ALONG, SearchParam, render_tune, tune as run_tune
    if along not in ALONG:
        raise UserError(f"--along {along!r}: allowed: {', '.join(ALONG)}")
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
                            metric=metric.value, results_dir=results, storage=_storage(storage), device=device,
                            seed=seed, on_run=_tune_progress)
    sys.stdout.write(render_tune(results_list, format.value, metric.value))


def _tune_progress(series: str, scale, row: dict) -> None:
    """One line per tuning run on stderr: where, what it tried, how it ended."""
    where = f"{series}" + (f" at scale {scale}" if scale is not None else "")
    tried = f"lr {row['lr']:.3g}" + (f", wd {row['weight_decay']:.3g}" if row.get("weight_decay") else "")
    loss = row.get("final_train_loss")
    ended = f"{row['status']}" + (f", train loss {loss:.4f}" if isinstance(loss, float) and math.isfinite(loss) else "")
    err.print(f"{where}: {tried}: {ended}", highlight=False, markup=False)


def _tune_lrwd(exp, series, trials, sampler, lr, axis, metric, results, storage, device, seed, format) -> None:
    from .tune import render_lrwd, tune_lrwd
    found = tune_lrwd(exp, series or None, trials=trials, sampler=sampler, lr=lr, axis=axis.value if axis else None,
                      metric=metric.value, results_dir=results, storage=_storage(storage), device=device, seed=seed,
                      on_run=_tune_progress)
    sys.stdout.write(render_lrwd(found, format.value, metric.value))


@app.command()
@user_errors
def coordcheck(experiment: Path = typer.Argument(..., help="experiment TOML file (its width grid gives the widths)"),
               set_: List[str] = typer.Option([], "--set", help="override a key, as in sweep"),
               steps: int = typer.Option(5, "--steps", help="training steps on the fixed batch"),
               lr: Optional[float] = typer.Option(None, "--lr", help="one LR for every series (default: each series' "
                                                  "base-scale LR, the middle of its LR grid at the smallest width)"),
               threshold: float = typer.Option(0.1, "--threshold", help="largest |slope| of log RMS vs log width that passes"),
               series: List[str] = typer.Option([], "--series", help="series to check (default: all)"),
               format: str = typer.Option("markdown", "--format", help="markdown | json"),
               out_: Optional[Path] = typer.Option(None, "--out", help="also draw RMS vs width per atom at the last step (.png/.svg/.pdf)"),
               device: str = typer.Option("cpu", help="auto | cpu | cuda"),
               quiet: bool = typer.Option(False, "--quiet", "-q")):
    """μP-style coordinate check: per series, train every width of the grid a few steps on one
    fixed batch (seed and depth: the smallest; constant LR) and fit, per weight atom and step,
    the slope of log RMS against log width of its output, of its output's change since init and
    of its own step ΔW·x. A series passes when every |slope| <= --threshold (the logits and
    their change may shrink, not grow). Verdicts are data: the exit code is 0 whether series
    pass or fail (2 for bad input).

    Example: lrtransfer coordcheck experiments/quickstart.toml --set width=[64,256,1024] --steps 3 --out coord.png
    """
    from . import coordcheck as cc_mod
    from . import plots
    cc_mod.check_format(format)
    target = plots.check_out(out_)
    from .sweep import load_experiment
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
