"""Reference results: run every shipped experiment, write results/<experiment>/, and the README.

    python scripts/reference.py                 # sweep what is not current, then write everything
    python scripts/reference.py quickstart      # only these experiments
    python scripts/reference.py --readme        # only regenerate the README sections from results/
    python scripts/reference.py --check         # exit 1 if the README and results/ disagree
    python scripts/reference.py --estimate      # also record each sweep's --dry-run estimate

Each results/<experiment>/ keeps what is committed: runs.parquet and curves.parquet (the
merged tables, curves at the experiment's log_every), lr_curves and transfer figures as PNG
and SVG, REPORT.md (the markdown report, the verdicts quoted first) and reference.json (when
and how long the sweep ran); diagnostics.parquet only where the report reads it (the sphere
experiments' regimes, the conditioning experiment's condition numbers: .gitignore). The per-run files, the queue journal and the event log stay out
of git (.gitignore); the merged tables alone let `lrtransfer sweep --dry-run` see that every
cell is current.

The README's generated sections sit between ``<!-- reference:NAME -->`` and
``<!-- /reference:NAME -->`` markers; tests/test_readme.py fails when they differ from what
this script makes of results/.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from lrtransfer import plots  # noqa: E402
from lrtransfer.analysis import coordcheck as coordcheck_analysis, transfer as analysis, dynamics  # noqa: E402
from lrtransfer.report import dynamics as dynamics_report, transfer as transfer_report  # noqa: E402
from lrtransfer.results.store import ResultStore, atomic_write, load_diagnostics, load_results, write_json  # noqa: E402

EXPERIMENTS = ROOT / "experiments"
EXAMPLES = ROOT / "examples"          # your-own-model experiments, beside their model files
RESULTS = ROOT / "results"
README = ROOT / "README.md"
# The order the README lists them in: the quickstart, then width beside depth per family.
ORDER = ("quickstart", "horizon_mnist1d", "batch_mnist1d", "mlp_width_cifar10", "mlp_depth_cifar10", "resnet_width_cifar10",
         "resnet_depth_cifar10", "gpt_width_shakespeare", "gpt_depth_shakespeare",
         "methods_width_mnist1d", "methods_width_cifar10", "methods_width_shakespeare",
         "sphere_resmlp_mnist1d", "sphere_rescnn_cifar10", "lrwd_resmlp_mnist1d", "condition_width_mnist1d",
         "nanogpt_width", "resnet_width")
# Plain-PyTorch models of examples/ (the README's "Your own model" table, and INSPECT.md each).
OWN_MODELS = ("nanogpt_width", "resnet_width")
METHODS = "methods_width_mnist1d"  # the README's side-by-side table
SPHERES = ("sphere_resmlp_mnist1d", "sphere_rescnn_cifar10")   # the README's regimes table
LRWD = "lrwd_resmlp_mnist1d"                                   # the README's lr·wd numbers
CONDITION = "condition_width_mnist1d"                          # the README's conditioning table
# The coordinate check at its defaults on every methods experiment (the README's table).
COORDCHECKED = ("methods_width_mnist1d", "methods_width_cifar10", "methods_width_shakespeare", *OWN_MODELS)
CI, TOLERANCE = 0.9, 1.0
# Experiments along an axis other than width or depth (the README's "other axes" table), each with
# the scale its law is extrapolated to.
AXES = {"horizon_mnist1d": ("steps", 6400), "batch_mnist1d": ("batch_size", 2048)}
# The contrasts the README states (first: the series expected to drift less); an experiment with
# two series and none listed contrasts its second with its first.
CONTRASTS = {"methods_width_mnist1d": ("mup_adam:sp_adam", "normed_adam:modular_adam", "dualized:modular_adam"),
             "methods_width_cifar10": ("mup_adam:sp_adam", "normed_adam:modular_adam", "dualized:modular_adam"),
             "methods_width_shakespeare": ("mup_adam:sp_adam", "normed_adam:modular_adam", "dualized:modular_adam"),
             "condition_width_mnist1d": ("conditioned_adam:adam", "sp_conditioned_adam:sp_adam"),
             "nanogpt_width": ("mup_adam:sp_adam", "normed_adam:sp_adam", "muon:sp_adam"),
             "resnet_width": ("mup_adam:sp_adam", "normed_adam:sp_adam", "muon:sp_adam")}
LABELS = {"adam": "Adam", "normed_adam": "normed Adam", "sgd": "SGD", "normed_sgd": "normed SGD",
          "sp_adam": "SP Adam", "mup_adam": "μP Adam", "modular_adam": "Adam (modular, plain)",
          "dualized": "dualized momentum (modular Muon)", "muon": "Muon", "sign": "sign descent",
          "conditioned_adam": "conditioned Adam",
          "sp_conditioned_adam": "SP conditioned Adam", "adamw": "AdamW", "sphere_sgd": "SGD on the sphere"}


def experiment_files(names=()) -> list[Path]:
    files = {p.stem: p for p in (*EXPERIMENTS.glob("*.toml"), *EXAMPLES.glob("*.toml"))}
    unknown = [n for n in names if n not in files]
    if unknown:
        raise SystemExit(f"unknown experiment(s) {', '.join(unknown)}; shipped: {', '.join(sorted(files))}")
    chosen = list(names) or [n for n in ORDER if n in files] + sorted(set(files) - set(ORDER))
    return [files[n] for n in chosen]


def sweep(path: Path, estimate: bool = False) -> None:
    """Run what is not current of one experiment into results/<name>/ and time it; with
    ``estimate``, first what `sweep --dry-run` says it will take, to set beside what it took."""
    from lrtransfer.sweep import load_experiment, plan, run_sweep
    exp = load_experiment(path)
    root = RESULTS / exp.name
    todo = plan(exp, root, estimate=False).todo
    if todo:
        estimated = plan(exp, root, device="cpu", estimate=True).estimate_seconds if estimate else None
        started = time.perf_counter()
        result = run_sweep(exp, root, device="cpu")
        if len(result.failed):
            raise SystemExit(f"{exp.name}: {len(result.failed)} runs failed; see lrtransfer status {root} --errors")
        meta = {"experiment": exp.name, "cells": len(exp.cells()), "ran": todo,
                "wall_seconds": round(time.perf_counter() - started, 1),
                "estimated_seconds": None if estimated is None else round(estimated, 1),
                "jobs": result.jobs, "host_cores": result.cores, "device": "cpu",
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "python": platform.python_version()}
        write_json(meta, root / "reference.json")
        if todo == meta["cells"]:  # a whole sweep: its time is the experiment's time here
            stamp_header(path, meta)
    ResultStore(root).consolidate()


HEADER = re.compile(r"^# Time here.*$", re.M)


def stamp_header(path: Path, meta: dict) -> None:
    """Write the measured time into the experiment file's header comment."""
    line = (f"# Time here ({meta['host_cores']} CPU cores, --jobs {meta['jobs']}): "
            f"{_minutes(meta['wall_seconds'])} for {meta['cells']} runs, measured by `make reference`.")
    text = path.read_text()
    if HEADER.search(text):
        atomic_write(path, lambda tmp: Path(tmp).write_text(HEADER.sub(line, text, count=1)))


def figure_stems(runs: pd.DataFrame) -> list[str]:
    """The figures an experiment's results directory keeps (by what the experiment varies)."""
    if dynamics.has_regimes(runs):
        return ["regimes", "loss_steps"]
    if dynamics.has_lrwd(runs):
        return ["lrwd", "lrwd_curves"]
    return ["lr_curves", "transfer"]


def figures_and_report(name: str) -> None:
    """The figures and REPORT.md of one experiment: the transfer view for a width or depth
    sweep; regimes and training curves for a sphere (ELR) sweep; the heatmap and curves by
    lr·wd for a weight-decay grid (whose report leads with the invariance numbers)."""
    root = RESULTS / name
    runs, curves = load_results(root)
    diagnostics = load_diagnostics(root)
    stems = figure_stems(runs)
    if stems[0] == "regimes":
        summary = dynamics_report.regime_summary(runs, curves, diagnostics)
        table = dynamics.regimes(runs, curves, diagnostics)
        figures = [plots.regime_plot(runs, table, x=summary["x"]),
                   plots.training_curves(runs, curves, color_by="lr")]
        text = dynamics_report.regime_report(summary)
    elif stems[0] == "lrwd":
        figures = [plots.lrwd_heatmap(runs), plots.curves_by_lrwd(runs, curves)]
        text = dynamics_report.lrwd_report(dynamics_report.lrwd_invariance(runs, curves, ci=CI))
    else:
        figures = [plots.lr_curves(runs), plots.transfer_plot(runs, ci=CI, tolerance=TOLERANCE)]
        text = transfer_report.report(runs, format="markdown", ci=CI, tolerance=TOLERANCE)
        if name == CONDITION:
            figures.append(plots.diagnostics_plot(runs, diagnostics, quantity="condition"))
            stems = stems + ["diagnostics_condition"]
            text += "\n" + condition_markdown(runs, diagnostics)
    for fig, stem in zip(figures, stems):
        for ext in ("png", "svg"):
            plots.save(fig, root / f"{stem}.{ext}")
    meta = reference_meta(name)
    head = [f"# {name}", "", f"Generated by `make reference` from `{source(name)}`: "
            f"{meta.get('cells', len(runs))} runs; the last sweep ran {meta.get('ran', '?')} of them in "
            f"{_minutes(meta.get('wall_seconds'))} on {meta.get('host_cores', '?')} CPU cores "
            f"(--jobs {meta.get('jobs', '?')}).", ""]
    atomic_write(root / "REPORT.md", lambda tmp: Path(tmp).write_text("\n".join(head) + "\n" + text))


def source(name: str) -> str:
    """The experiment file of ``name``, relative to the repository (experiments/ or examples/)."""
    return experiment_files([name])[0].relative_to(ROOT).as_posix()


def condition_markdown(runs: pd.DataFrame, diagnostics: pd.DataFrame) -> str:
    """Condition numbers of the trained matrices at each series' best LR per scale."""
    return dynamics_report.condition_report(dynamics_report.condition_summary(runs, diagnostics), labels=LABELS)


def reference_meta(name: str) -> dict:
    path = RESULTS / name / "reference.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _minutes(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown time"
    return f"{seconds / 60:.1f} min"


def _f(x, digits=2, signed=True) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—" if x is None or math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ci(lo, hi, digits=2, signed=True) -> str:
    return f"[{_f(lo, digits, signed)}, {_f(hi, digits, signed)}]"


def verdicts(name: str) -> pd.DataFrame:
    runs, _ = load_results(RESULTS / name)
    return analysis.verdict_table(runs, ci=CI, tolerance=TOLERANCE)


def contrasts(name: str) -> pd.DataFrame:
    """The README's contrasts of one experiment (``CONTRASTS``, else second vs first series)."""
    from lrtransfer.analysis import contrast
    runs, _ = load_results(RESULTS / name)
    _, summary, boots = analysis.analyse_with_replicates(runs, ci=CI, tolerance=TOLERANCE)
    series = list(dict.fromkeys(summary["series"]))
    pairs = CONTRASTS.get(name) or ([f"{series[1]}:{series[0]}"] if len(series) == 2 else [])
    return contrast.contrasts(summary, boots, pairs, CI) if pairs else pd.DataFrame()


def headlines(name: str) -> list[str]:
    from lrtransfer.analysis import contrast
    return [contrast.headline(r, LABELS) for r in contrasts(name).to_dict("records")]


def _verdict_cell(r: dict) -> str:
    """Verdict, flags and, when undecided, what would decide it (``analysis.to_decide``)."""
    flags = f" ({r['flags']})" if r.get("flags") else ""
    decide = analysis.to_decide(r, brief=True)
    return f"**{r['verdict']}**{flags}" + (f"; to decide: {decide}" if decide else "")


def _scale(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def quickstart_section() -> str:
    v = verdicts("quickstart")
    lines = ["| series | verdict | drift, octaves (90% CI) | slope, octaves/octave (90% CI) "
             "| regret at the largest width, nats (90% CI) |", "|---|---|---|---|---|"]
    for r in v.to_dict("records"):
        lines.append(f"| {LABELS.get(r['series'], r['series'])} | {_verdict_cell(r)} "
                     f"| {_f(r['drift'])} {_ci(r['drift_ci_lo'], r['drift_ci_hi'])} "
                     f"| {_f(r['slope'])} {_ci(r['slope_ci_lo'], r['slope_ci_hi'])} "
                     f"| {_f(r['regret'], 3, False)} {_ci(r['regret_ci_lo'], r['regret_ci_hi'], 3, False)} |")
    first = v.iloc[0]
    meta = reference_meta("quickstart")
    lines += ["", f"Widths {_scale(first['base_scale'])} → {_scale(first['max_scale'])}, "
              f"{int(v['n_seeds'].min())} seeds per cell, {meta.get('cells', '?')} runs "
              f"({_minutes(meta.get('wall_seconds'))} here); tolerance ±{TOLERANCE:g} octave over the whole "
              f"range; bootstrap over seeds. From `results/quickstart/REPORT.md`.", ""]
    lines += [f"Contrast: {h}." for h in headlines("quickstart")]
    return "\n".join(lines)


def table_section() -> str:
    lines = ["| experiment | axis | series | verdict | drift (90% CI) | slope (90% CI) | regret (90% CI) "
             "| runs, time here |", "|---|---|---|---|---|---|---|---|"]
    for path in experiment_files():
        name = path.stem
        if name in ("quickstart", METHODS, LRWD, *SPHERES, *AXES, *OWN_MODELS) or not (RESULTS / name).exists():
            continue
        meta = reference_meta(name)
        for i, r in enumerate(verdicts(name).to_dict("records")):
            where = (f"`{name}`", f"{meta.get('cells', '?')}, {_minutes(meta.get('wall_seconds'))}") if i == 0 else ("", "")
            lines.append(f"| {where[0]} | {r['axis']} {_scale(r['base_scale'])}→{_scale(r['max_scale'])} "
                         f"| {LABELS.get(r['series'], r['series'])} | {_verdict_cell(r)} "
                         f"| {_f(r['drift'])} {_ci(r['drift_ci_lo'], r['drift_ci_hi'])} "
                         f"| {_f(r['slope'])} {_ci(r['slope_ci_lo'], r['slope_ci_hi'])} "
                         f"| {_f(r['regret'], 3, False)} {_ci(r['regret_ci_lo'], r['regret_ci_hi'], 3, False)} "
                         f"| {where[1]} |")
    lines += ["", pooled_vs_endpoint()]
    said = [(name, h) for path in experiment_files()
            if (name := path.stem) not in ("quickstart", METHODS, LRWD, *SPHERES, *AXES, *OWN_MODELS)
            and (RESULTS / name).exists()
            for h in headlines(name)]
    lines += ["", "Contrasts: which series' optimum moves less, and by how many octaves over the scales both "
              "cover, with the 90% CI of the difference (`lrtransfer report DIR --contrast A:B`):", ""]
    lines += [f"* `{name}`: {h}" for name, h in said]
    return "\n".join(lines)


REFINED = "quickstart_refined"   # the quickstart's grid, refined with `sweep --until decided`
REFINE_BUDGET = "15m"


def refine_quickstart() -> None:
    """results/quickstart_refined/: the committed quickstart grid refined until decided (`lrtransfer
    sweep experiments/quickstart.toml --results results/quickstart_refined --until decided --budget
    15m` on a copy of its tables); re-run when the quickstart's runs change."""
    import shutil
    from lrtransfer.report.results import results_report
    from lrtransfer.sweep import load_experiment, parse_budget, run_refinement
    source, root = RESULTS / "quickstart", RESULTS / REFINED
    base = pd.read_parquet(source / "runs.parquet")
    current = ((root / "refinement.json").exists() and (root / "runs.parquet").exists()
               and set(base["run_id"]) <= set(pd.read_parquet(root / "runs.parquet")["run_id"]))
    if not current:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        for name in ("runs.parquet", "curves.parquet", "experiment.json"):
            shutil.copy2(source / name, root / name)
        exp = load_experiment(EXPERIMENTS / "quickstart.toml")
        run_refinement(exp, parse_budget(REFINE_BUDGET), root, device="cpu", sweep_grid=True)
        ResultStore(root).consolidate()
    text = results_report(root, ci=CI, tolerance=TOLERANCE)
    command = (f"lrtransfer sweep experiments/quickstart.toml --results results/{REFINED} --until decided "
               f"--budget {REFINE_BUDGET}")
    atomic_write(root / "REPORT.md", lambda tmp: Path(tmp).write_text(
        f"# {REFINED}\n\nThe committed quickstart grid refined: `{command}`.\n\n{text}"))


def refined_section() -> str:
    """The quickstart before and after `--until decided`: verdicts, runs and time added."""
    root = RESULTS / REFINED
    if not (root / "refinement.json").exists():
        return "(no refined quickstart in results/ yet: `make reference`)"
    record = json.loads((root / "refinement.json").read_text())
    before, after = verdicts("quickstart").set_index("series"), verdicts(REFINED).set_index("series")
    lines = ["| series | fixed grid: verdict, drift (90% CI) | refined: verdict, drift (90% CI) |", "|---|---|---|"]
    for name, r in after.iterrows():
        b = before.loc[name]
        lines.append(f"| {LABELS.get(name, name)} | **{b['verdict']}** {_f(b['drift'])} "
                     f"{_ci(b['drift_ci_lo'], b['drift_ci_hi'])} | **{r['verdict']}** {_f(r['drift'])} "
                     f"{_ci(r['drift_ci_lo'], r['drift_ci_hi'])} |")
    rounds = record["rounds"]
    cells = sum(len(r["cells"]) for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    base_runs = len(pd.read_parquet(RESULTS / "quickstart" / "runs.parquet"))
    lines += ["", f"{len(rounds)} round{'s' if len(rounds) != 1 else ''} added {cells} runs to the grid's "
              f"{base_runs} ({_minutes(seconds)} here); from `results/{REFINED}/refinement.json` and "
              f"`REPORT.md`. Refined contrast: {'; '.join(headlines(REFINED))}."]
    return "\n".join(lines)


def pooled_vs_endpoint() -> str:
    """How much narrower the pooled drift CI (the verdict's) is than the endpoint one, over every
    shipped transfer verdict with both."""
    ratios = []
    for path in experiment_files():
        name = path.stem
        if name in (LRWD, *SPHERES) or not (RESULTS / name / "runs.parquet").exists():
            continue
        v = verdicts(name)
        width = (v["drift_ci_hi"] - v["drift_ci_lo"]) / (v["endpoint_drift_ci_hi"] - v["endpoint_drift_ci_lo"])
        ratios += [float(x) for x in width if math.isfinite(x)]
    if not ratios:
        return ""
    q = pd.Series(ratios).quantile([0.0, 0.5, 1.0])
    return (f"The verdicts rest on the pooled drift (the optimum's law through every scale) rather than on the "
            f"two endpoints: over the {len(ratios)} transfer verdicts of the shipped experiments its 90% CI is "
            f"{q[0.5]:.2f}× as wide as the endpoint drift's (median; range {q[0.0]:.2f}–{q[1.0]:.2f}); with "
            f"three evenly spaced scales the two drifts are the same number and only the interval differs "
            f"(docs/analysis.md §3 has the coverage of both on synthetic designs).")


def axes_section() -> str:
    """The experiments along training length and batch size: verdict, the optimum's law and its
    prediction beyond the swept range, and the contrast."""
    lines = ["| experiment | axis | series | verdict | exponent (slope, 90% CI) | drift (90% CI) "
             "| predicted LR at the target (90% PI) | runs, time here |", "|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, (axis, target) in AXES.items():
        if not (RESULTS / name / "runs.parquet").exists():
            continue
        runs, _ = load_results(RESULTS / name)
        v = analysis.verdict_table(runs, axis=axis, ci=CI, tolerance=TOLERANCE)
        pred = analysis.predict(runs, {axis: target}, ci=CI).set_index("series")
        meta = reference_meta(name)
        for i, r in enumerate(v.to_dict("records")):
            p = pred.loc[r["series"]]
            where = (f"`{name}`", f"{meta.get('cells', '?')}, {_minutes(meta.get('wall_seconds'))}") if i == 0 else ("", "")
            lines.append(f"| {where[0]} | {axis} {_scale(r['base_scale'])}→{_scale(r['max_scale'])} "
                         f"| {LABELS.get(r['series'], r['series'])} | {_verdict_cell(r)} "
                         f"| {_f(r['slope'])} {_ci(r['slope_ci_lo'], r['slope_ci_hi'])} "
                         f"| {_f(r['drift'])} {_ci(r['drift_ci_lo'], r['drift_ci_hi'])} "
                         f"| {axis} {target}: 2^{p['pred_log2_lr']:.2f} {_ci(p['pred_log2_lr_lo'], p['pred_log2_lr_hi'], 2, False)} "
                         f"({p['octaves_beyond']:.0f} octaves beyond) | {where[1]} |")
        notes += [f"* `{name}`: {h}" for h in headlines(name)]
    lines += ["", "Exponent: the slope of log2 η* against log2 of the axis (η* ∝ axis^exponent); PI: the "
              "prediction interval of log2 η* (`lrtransfer report DIR --predict KEY=VALUE`). Contrasts:", ""] + notes
    return "\n".join(lines)


def methods_section() -> str:
    """The methods experiment side by side: verdict, drift and slope with CIs, best loss."""
    if not (RESULTS / METHODS).exists():
        return f"(no committed results for `{METHODS}` yet: `make reference` writes them)"
    runs, _ = load_results(RESULTS / METHODS)
    table = analysis.transfer_table(runs, axis="width")   # best_loss: the seed-mean curve's minimum
    top = int(table["scale"].max())
    best = table[table["scale"] == top].set_index("series")["best_loss"]
    lines = [f"| series | verdict | drift, octaves (90% CI) | slope, octaves/octave (90% CI) "
             f"| best seed-mean train loss at width {top} |", "|---|---|---|---|---|"]
    for r in verdicts(METHODS).to_dict("records"):
        lines.append(f"| {LABELS.get(r['series'], r['series'])} | {_verdict_cell(r)} "
                     f"| {_f(r['drift'])} {_ci(r['drift_ci_lo'], r['drift_ci_hi'])} "
                     f"| {_f(r['slope'])} {_ci(r['slope_ci_lo'], r['slope_ci_hi'])} "
                     f"| {best.get(r['series'], float('nan')):.3f} |")
    meta = reference_meta(METHODS)
    lines += ["", f"{meta.get('cells', '?')} runs ({_minutes(meta.get('wall_seconds'))} here), 3 seeds per cell; "
              f"from `results/{METHODS}/REPORT.md`.", ""]
    lines += [f"* {h}" for h in headlines(METHODS)]
    return "\n".join(lines)


def _octaves(r: dict, name: str) -> str:
    if not r.get(f"{name}_n"):
        return "— (not reached)"
    return (f"2^{r[f'{name}_log2']:.1f} ± {r[f'{name}_log2_std']:.1f} "
            f"[2^{r[f'{name}_log2_min']:.1f}, 2^{r[f'{name}_log2_max']:.1f}] ({r[f'{name}_n']} seeds)")


def dynamics_section() -> str:
    """Regime boundaries of the sphere experiments, the lr·wd invariance numbers, and the
    condition numbers with and without weight conditioning."""
    lines = ["| experiment | runs: converge / chaotic / diverge / unsettled | in ELR order (seeds) "
             "| ELR converge → chaotic | ELR chaotic → diverge |", "|---|---|---|---|---|"]
    for name in SPHERES:
        if not (RESULTS / name).exists():
            continue
        runs, curves = load_results(RESULTS / name)
        summary = dynamics_report.regime_summary(runs, curves, load_diagnostics(RESULTS / name))
        counts = summary["counts"]
        per_seed = summary["seed_boundaries"]
        ordered = sum(bool(r["monotone"]) for r in per_seed)
        for r in summary["boundaries"]:
            lines.append(f"| `{name}` | {counts['converge']} / {counts['chaotic']} / {counts['diverge']} / "
                         f"{counts['unsettled']} "
                         f"| {ordered} of {len(per_seed)} | {_octaves(r, 'to_chaotic')} | {_octaves(r, 'to_diverge')} |")
    lines += ["", "Boundary: per seed, the geometric midpoint between the largest ELR of the lower regime "
              "and the smallest of the upper one; mean ± std over seeds in log2 units (octaves), "
              "[min, max], unsettled runs left out; — where no run of the experiment met that regime's "
              "rule. The rule: *The regime rule* below.", ""]
    if (RESULTS / LRWD).exists():
        runs, curves = load_results(RESULTS / LRWD)
        res = dynamics_report.lrwd_invariance(runs, curves, ci=CI)
        def fit(g, name, stated):
            lo, hi = g[f"{name}_c_ci"]
            p = g[f"{name}_lof_p"]
            return (f"c = {g[f'{name}_c']:.2f} (90% CI [{lo:.2f}, {hi:.2f}]; c = {stated}), lack-of-fit "
                    f"F({g[f'{name}_lof_df']:g}, {g[f'{name}_pe_df']:g}) = {g[f'{name}_lof_f']:.1f}, "
                    + ("p < 0.001" if p < 0.001 else f"p = {p:.3f}"))
        for g in res["groups"]:
            lines.append(f"`{LRWD}` ({g['n_cells']} lr × wd cells, {res['n_runs']} runs), each loss fitted as one "
                         f"cubic in log2 lr + c·log2 wd: late loss follows lr·wd — **{g['late_verdict']}**: "
                         f"{fit(g, 'late', '1 is lr·wd')}, {g['late_unexplained']:.1%} of the cell means' variance "
                         f"left; early loss follows lr — **{g['early_verdict']}**: {fit(g, 'early', '0 is lr alone')}.")
        lines.append("")
    if (RESULTS / CONDITION).exists():
        runs, _ = load_results(RESULTS / CONDITION)
        drifts = "; ".join(f"{LABELS.get(r['series'], r['series'])} **{r['verdict']}**, drift {_f(r['drift'])} "
                           f"{_ci(r['drift_ci_lo'], r['drift_ci_hi'])} octaves"
                           for r in verdicts(CONDITION).to_dict("records"))
        lines.append(f"`{CONDITION}` (width {_scale(runs['width'].min())} → {_scale(runs['width'].max())}): {drifts}. "
                     + condition_markdown(runs, load_diagnostics(RESULTS / CONDITION)).split("\n", 2)[2].rstrip())
    return "\n".join(lines)


def coordcheck_section() -> str:
    """Per methods experiment and series: the coordinate check's verdict at its defaults and its
    worst row by the pass rule's own measure (``analysis.coordcheck.violation``: the logits may
    shrink, so a falling logit slope is not the worst row)."""
    names = [n for n in COORDCHECKED if (RESULTS / n / "coordcheck.json").exists()]
    if not names:
        return "(no coordinate checks in results/ yet: `make reference`)"
    data = {n: json.loads((RESULTS / n / "coordcheck.json").read_text()) for n in names}
    series = list(dict.fromkeys(s for d in data.values() for s in d["verdict"]))
    lines = ["| series | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
    for name in series:
        cells = []
        for n in names:
            d = data[n]
            if name not in d["verdict"]:
                cells.append("—")
                continue
            rows = pd.DataFrame([r for r in d["rows"] if r["series"] == name])
            rows["role"] = rows["atom"].str.split(":").str[1]  # atoms are named "index:role"
            rows[["lo", "hi"]] = rows[["lo", "hi"]].astype(float)
            worst = rows.loc[coordcheck_analysis.violation(rows).idxmax()]
            slope = ("nan" if not math.isfinite(worst["lo"]) else
                     f"{worst['slope']:+.2f} [{worst['lo']:+.2f}, {worst['hi']:+.2f}]")
            cells.append(f"**{'pass' if d['verdict'][name] else 'FAIL'}** ({slope}, {worst['quantity']}, "
                         f"{worst['atom']}, step {worst['step']})")
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    first = data[names[0]]
    widths = sorted({tuple(w) for d in data.values() for w in d["widths"].values()})
    lines += ["", f"Worst row per cell: slope of log RMS against log width, mean over "
              f"{len(next(iter(first['seeds'].values())))} seeds [{100 * first['confidence']:g}% interval], "
              f"then the quantity, atom and step; widths "
              + "; ".join("–".join(str(x) for x in (w[0], w[-1])) for w in widths)
              + f"; pass: every row's interval within ±{first['margin']:g}. Times: "
              + ", ".join(f"`{n}` {data[n]['seconds'] / 60:.1f} min" for n in names)
              + " (from `results/<experiment>/COORDCHECK.md`)."]
    return "\n".join(lines)


def examples_section() -> str:
    """The examples' verdicts (plain-PyTorch models, examples/) and their contrasts."""
    lines = ["| experiment | series | verdict | drift (90% CI) | slope (90% CI) | regret (90% CI) | runs, time here |",
             "|---|---|---|---|---|---|---|"]
    said = []
    for name in OWN_MODELS:
        if not (RESULTS / name / "runs.parquet").exists():
            continue
        meta = reference_meta(name)
        for i, r in enumerate(verdicts(name).to_dict("records")):
            where = (f"`{name}` ({r['axis']} {_scale(r['base_scale'])}→{_scale(r['max_scale'])})",
                     f"{meta.get('cells', '?')}, {_minutes(meta.get('wall_seconds'))}") if i == 0 else ("", "")
            lines.append(f"| {where[0]} | {LABELS.get(r['series'], r['series'])} | {_verdict_cell(r)} "
                         f"| {_f(r['drift'])} {_ci(r['drift_ci_lo'], r['drift_ci_hi'])} "
                         f"| {_f(r['slope'])} {_ci(r['slope_ci_lo'], r['slope_ci_hi'])} "
                         f"| {_f(r['regret'], 3, False)} {_ci(r['regret_ci_lo'], r['regret_ci_hi'], 3, False)} "
                         f"| {where[1]} |")
        said += [f"* `{name}`: {h}" for h in headlines(name)]
    if len(lines) == 2:
        return "(no example results in results/ yet: `make reference`)"
    return "\n".join(lines + ["", "Contrasts (which series' optimum moves less, 90% CI of the difference):", ""] + said)


def inspect_model(name: str) -> None:
    """results/<name>/INSPECT.md: what `lrtransfer inspect` prints for the example's μP series."""
    import subprocess
    command = ["inspect", source(name), "--series", "mup_adam"]
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), *command], capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"lrtransfer {' '.join(command)} failed: {r.stderr}")
    atomic_write(RESULTS / name / "INSPECT.md", lambda tmp: Path(tmp).write_text(
        f"# {name}: what lrtransfer makes of the model\n\n`lrtransfer {' '.join(command)}`\n\n{r.stdout}"))


def keys_section() -> str:
    from lrtransfer.run import spec
    return spec.markdown_table()


BENCHMARKS = RESULTS / "benchmarks"


def speed_section() -> str:
    """Estimates against measured sweep times (reference.json, benchmarks/sweep_times.py),
    batched against one-by-one steps (benchmarks/batched_speedup.py), a step against torch's
    and the quickstart's compute floor (benchmarks/step_efficiency.py) and the suite against a
    hand-written sweep (benchmarks/grid_vs_naive.py), all from files under results/."""
    estimated = []
    for path in experiment_files():
        ref = RESULTS / path.stem / "reference.json"
        meta = json.loads(ref.read_text()) if ref.exists() else {}
        if meta.get("estimated_seconds") is None or meta.get("ran") != meta.get("cells"):
            continue
        est, took = meta["estimated_seconds"], meta["wall_seconds"]
        estimated.append(f"| `{path.stem}` | {meta['cells']} | {meta['jobs']} | {est:.0f} s | {took:.0f} s | "
                         f"{100 * (est - took) / took:+.0f}% |")
    lines = []
    if estimated:   # `make reference` run with --estimate
        lines = ["| experiment | runs | --jobs | `--dry-run` estimate | took | estimate error |",
                 "|---|---|---|---|---|---|", *estimated, ""]
    sweeps = BENCHMARKS / "sweep_times.json"
    if sweeps.exists():
        rows = json.loads(sweeps.read_text())["rows"]
        lines += ["Whole sweeps timed one after another in one run of `python benchmarks/sweep_times.py` "
                  "(fresh directories; the estimate is the dry run's, just before):", "",
                  "| experiment | --jobs | batch_cells | runs (bundled) | estimate | took | estimate error |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| `{r['experiment']}` | {r['jobs']} | {r['batch_cells']} | {r['runs']} ({r['bundled_runs']}) | "
                  f"{r['estimate_seconds']:.0f} s | {r['wall_seconds']:.0f} s | {100 * r['error']:+.0f}% |" for r in rows]
        lines.append("")
    bench = BENCHMARKS / "batched_speedup.json"
    if bench.exists():
        b = json.loads(bench.read_text())
        lines += [f"A training step of one cell alone against {b['cells']} cells trained together (per cell), "
                  "warm, in one run of `python benchmarks/batched_speedup.py --compile`:", "",
                  "| experiment | series | arch | width | alone ms/step | together ms/step per cell | speed-up |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| `{r['experiment']}` | {r.get('series', '')} | {r['arch']} | {r['width']} | {r['alone_ms']:.2f} | "
                  f"{r['together_ms_per_cell']:.2f} | {r['speedup']:.2f}× |" for r in b["rows"]]
        if b.get("compile"):
            lines += ["", "`compile = true` on the quickstart's plain Adam step: " + "; ".join(
                f"width {c['width']} {c['eager_ms']:.2f} → {c['compiled_ms']:.2f} ms ({c['ratio']:.2f}×) after a "
                f"{c['compile_seconds']:.1f} s compile" for c in b["compile"]) + "."]
        lines.append("")
    efficiency = BENCHMARKS / "step_efficiency.json"
    if efficiency.exists():
        e = json.loads(efficiency.read_text())
        lines += ["One quickstart step (plain Adam, one thread) against the same shapes written as an `nn.Module` "
                  "with `torch.optim.Adam(foreach=True)`, and each as a fraction of this machine's measured GEMM "
                  "throughput, in one run of `python benchmarks/step_efficiency.py`:", "",
                  "| width | suite ms/step | torch ms/step | suite/torch | GEMM GFLOP/s | suite efficiency | torch efficiency |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['width']} | {r['suite_ms']:.2f} | {r['torch_ms']:.2f} | {r['suite_over_torch']:.2f} | "
                  f"{r['gemm_gflops']:.1f} | {100 * r['suite_efficiency']:.1f}% | {100 * r['torch_efficiency']:.1f}% |"
                  for r in e["rows"]]
        f = e.get("quickstart_floor")
        if f:
            lines += ["", f"The quickstart's {f['runs']} runs are {f['tflop']:.1f} TFLOP of matrix products (torch's "
                      f"FlopCounterMode over each run's first step and, for the rest, a later one; forward, backward and update): at the "
                      f"{f['gemm_gflops']:.0f} GFLOP/s measured there on each of this machine's {f['cores']} cores, all busy, that "
                      f"arithmetic alone takes {f['floor_seconds']:.0f} s; the reference sweep took "
                      f"{f['sweep_seconds']:.0f} s, {f['sweep_over_floor']:.1f}× that floor."]
        inside = e.get("quickstart_in_step")
        if inside:
            shapes = "; ".join(f"{r['series']} width {r['width']}, {r['product_ms']:.1f} ms of a {r['step_ms']:.1f} ms "
                               f"step ({r['in_step_gflops']:.0f} GFLOP/s)" for r in inside["rows"])
            lines += ["", f"Inside the suite's own step the products run slower than in that GEMM loop (cold caches: "
                      f"each product timed as it runs in a warm step of `train.execute`, diagnostics off): {shapes}. "
                      f"At that speed the {inside['runs']} of the {inside['of_runs']} runs that the sweep trained alone "
                      f"(not bundled) need {inside['product_seconds']:.0f} s for their products and "
                      f"{inside['step_seconds']:.0f} s for their whole steps on the {inside['cores']} cores, all busy, "
                      f"before the other {inside['of_runs'] - inside['runs']} runs, the start-up and the evaluations."]
        lines.append("")
    naive = BENCHMARKS / "grid_vs_naive.json"
    if naive.exists():
        n = json.loads(naive.read_text())
        pairs = n.get("pairs", [])
        spread = (f" (the median of {len(pairs)} alternating pairs in one run: "
                  + ", ".join(f"{q['ratio']:.2f}×" for q in pairs) + ")") if len(pairs) > 1 else ""
        lines.append(f"The quickstart's Adam grid ({n['cells']} cells, {n['steps']} steps, {n['parallel']} at a time), "
                     f"`python benchmarks/grid_vs_naive.py`: the suite {n['suite_seconds']:.1f} s, the same grid written "
                     f"by hand (a fresh python per cell, `nn.Sequential`, `torch.optim.Adam`, a `DataLoader`) "
                     f"{n['by_hand_seconds']:.1f} s: **{n['ratio']:.2f}× faster**{spread}.")
    return "\n".join(lines).rstrip()


SECTIONS = {"quickstart": quickstart_section, "refined": refined_section, "axes": axes_section, "table": table_section,
            "methods": methods_section, "examples": examples_section,
            "dynamics": dynamics_section, "coordcheck": coordcheck_section, "keys": keys_section, "speed": speed_section}


def render(readme: str) -> str:
    """The README with every generated section replaced by what results/ says now."""
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- reference:{name} -->\n).*?(<!-- /reference:{name} -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md: no <!-- reference:{name} --> ... <!-- /reference:{name} --> markers")
        readme = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), readme)
    return readme


# The README's `lrtransfer compare` example: the quickstart beside the conditioning experiment,
# whose `adam` series repeats the quickstart's Adam cells (shift 0 by construction) and adds
# conditioned Adam beside the quickstart's normed Adam.
COMPARED = ("quickstart", CONDITION)


def coordinate_check(name: str) -> None:
    """results/<name>/COORDCHECK.md and coordcheck.json: `lrtransfer coordcheck` at its defaults
    (widths w0 to 16·w0, its seeds, its pass rule), re-run only when the training code changed."""
    import time
    from lrtransfer.analysis.coordcheck import coordcheck
    from lrtransfer.report.coordcheck import to_dict, to_markdown
    from lrtransfer.run.provenance import code_fingerprint
    from lrtransfer.sweep.config import load_experiment
    root = RESULTS / name
    stored = root / "coordcheck.json"
    if stored.exists() and json.loads(stored.read_text()).get("code_fingerprint") == code_fingerprint():
        return
    started = time.perf_counter()
    cc = coordcheck(load_experiment(ROOT / source(name)))
    seconds = time.perf_counter() - started
    data = {**to_dict(cc), "code_fingerprint": code_fingerprint(), "seconds": round(seconds, 1)}
    write_json(data, stored)
    command = f"lrtransfer coordcheck {source(name)}"
    atomic_write(root / "COORDCHECK.md", lambda tmp: Path(tmp).write_text(
        f"# {name}: coordinate check\n\n`{command}` ({seconds / 60:.1f} min here)\n\n{to_markdown(cc)}"))


def comparison() -> None:
    """results/compare/: the overlaid curves (PNG, SVG) and the markdown table of COMPARED."""
    from lrtransfer.analysis import compare
    from lrtransfer.report.compare import render_comparison
    dirs = [RESULTS / name for name in COMPARED]
    if not all((d / "runs.parquet").exists() for d in dirs):
        return
    runs_by_dir = compare.load(dirs)
    scales, verdicts, contrasts_ = compare.comparison(runs_by_dir, ci=CI, tolerance=TOLERANCE)
    out = RESULTS / "compare"
    out.mkdir(exist_ok=True)
    fig = plots.compare_curves(runs_by_dir)
    for ext in ("png", "svg"):
        plots.save(fig, out / f"{'_vs_'.join(COMPARED)}.{ext}")
    text = render_comparison(scales, verdicts, "markdown", ci=CI, contrasts=contrasts_)
    command = f"lrtransfer compare {' '.join(f'results/{n}' for n in COMPARED)}"
    atomic_write(out / "COMPARE.md", lambda tmp: Path(tmp).write_text(f"`{command}`\n\n{text}"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiments", nargs="*", help="experiment names (default: every shipped one)")
    ap.add_argument("--readme", action="store_true", help="only regenerate the README sections")
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md and results/ disagree")
    ap.add_argument("--estimate", action="store_true", help="record each sweep's --dry-run estimate beside its time")
    args = ap.parse_args(argv)
    if args.check:
        current = README.read_text()
        if render(current) != current:
            print("README.md is out of date with results/: run `make readme`", file=sys.stderr)
            return 1
        return 0
    if not args.readme:
        for path in experiment_files(args.experiments):
            print(f"== {path.stem}", flush=True)
            sweep(path, estimate=args.estimate)
            figures_and_report(path.stem)
            if path.stem in COORDCHECKED:
                coordinate_check(path.stem)
            if path.stem in OWN_MODELS:
                inspect_model(path.stem)
        if not args.experiments or "quickstart" in args.experiments:
            refine_quickstart()
        comparison()
    current = README.read_text()   # read after the sweeps: an edit made while they ran is kept
    new = render(current)
    if new != current:
        atomic_write(README, lambda tmp: Path(tmp).write_text(new))
        print("README.md updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
