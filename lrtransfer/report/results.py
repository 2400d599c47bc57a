"""The report of a results directory (``lrtransfer report``): the transfer report where a scale
axis varies (else a one-line note: ``transfer.no_transfer``), then a "Regimes" section when the
runs set an effective LR or train on the sphere, and an "lr·wd invariance" section when
weight_decay takes two or more values (JSON: keys "regimes", "lrwd")."""
from __future__ import annotations

import json
from pathlib import Path

from ..analysis.dynamics import RegimeOptions, has_lrwd, has_regimes
from ..analysis.transfer import check_options, metric_spec, prediction_targets, transfer_axes
from ..errors import UserError
from ..results.store import load_diagnostics, load_results
from ..sweep.refine import refined_counts, refinement_note
from .dynamics import lrwd_invariance, lrwd_report, regime_report, regime_summary
from .render import check_format, to_json
from .transfer import no_transfer, report


def _sections(results_dir: Path, runs, curves, metric: str, ci: float, n_boot: int, seed: int,
              regime: RegimeOptions) -> dict:
    """The dynamics sections the runs call for, as JSON-able summaries."""
    sections = {}
    if has_regimes(runs):
        sections["regimes"] = regime_summary(runs, curves, load_diagnostics(results_dir), options=regime)
    if has_lrwd(runs):
        try:
            sections["lrwd"] = lrwd_invariance(runs, curves, metric=metric, ci=ci, n_boot=n_boot, seed=seed)
        except UserError as e:  # a wd axis this statistic cannot use (e.g. only 0 and one value) is not an error
            sections["lrwd"] = {"error": str(e)}
    return sections


def _section_markdown(name: str, section: dict) -> str:
    if name == "regimes":
        return regime_report(section)
    if "error" in section:
        return f"## lr·wd invariance\n\nnot computed: {section['error']}\n"
    return lrwd_report(section)


def results_report(results_dir, metric: str = "train_loss", axis: str | None = None, format: str = "markdown",
                   min_runs: int = 3, ci: float = 0.9, tolerance: float = 1.0, n_boot: int = 1000, seed: int = 0,
                   regime: RegimeOptions = RegimeOptions(), predict: dict | None = None,
                   contrast_pairs=None) -> str:
    """The report text of ``results_dir`` in ``format`` (markdown | json | csv; CSV has the
    transfer table alone), newline-terminated; ``predict`` (``{axis: value or [values]}``) adds the
    optimum's law's prediction there and ``contrast_pairs`` (``["a:b", ...]``) name the contrasts
    between series (default: every pair; ``report.transfer.report``)."""
    check_format(format)
    results_dir = Path(results_dir)
    runs, curves = load_results(results_dir)
    options = dict(metric=metric, format=format, min_runs=min_runs, ci=ci, tolerance=tolerance, n_boot=n_boot,
                   seed=seed)
    # a verdict needs two or more scales: without them the transfer part is a note, not a section
    if runs.empty or transfer_axes(runs, axis):
        text = report(runs, axis=axis, predict=predict, contrast_pairs=contrast_pairs, **options)
    else:
        metric_spec(metric, runs)
        check_options(min_runs, ci, tolerance, n_boot, seed)
        if predict:  # no axis varies: its UserError says so
            prediction_targets(runs, predict)
        text = no_transfer(runs, axis=axis, **options)
    sections = {} if format == "csv" else _sections(results_dir, runs, curves, metric, ci, n_boot, seed, regime)
    # which runs `sweep --until decided` added beyond the grid (refinement.json), per series
    refined = None if format == "csv" else refined_counts(results_dir, runs)
    if format == "json":
        return to_json({**json.loads(text), **sections, **({"refinement": refined} if refined else {})})
    if refined:
        text = text.rstrip("\n") + "\n\n" + refinement_note(refined) + "\n"
    if sections:
        text = text.rstrip("\n") + "\n\n" + "\n".join(_section_markdown(k, v) for k, v in sections.items())
    return text if text.endswith("\n") else text + "\n"
