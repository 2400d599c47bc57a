"""The report of a results directory (``lrtransfer report``): the transfer report, then a
"Regimes" section when the runs set an effective LR or train on the sphere, and an "lr·wd
invariance" section when weight_decay takes two or more values (JSON: keys "regimes", "lrwd")."""
from __future__ import annotations

import json
from pathlib import Path

from ..analysis.dynamics import RegimeOptions, has_lrwd, has_regimes
from ..errors import UserError
from ..results.store import load_diagnostics, load_results
from .dynamics import lrwd_invariance, lrwd_report, regime_report, regime_summary
from .render import check_format, to_json
from .transfer import report


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
                   regime: RegimeOptions = RegimeOptions()) -> str:
    """The report text of ``results_dir`` in ``format`` (markdown | json | csv; CSV has the
    transfer table alone), newline-terminated."""
    check_format(format)
    results_dir = Path(results_dir)
    runs, curves = load_results(results_dir)
    text = report(runs, metric=metric, axis=axis, format=format, min_runs=min_runs, ci=ci, tolerance=tolerance,
                  n_boot=n_boot, seed=seed)
    sections = {} if format == "csv" else _sections(results_dir, runs, curves, metric, ci, n_boot, seed, regime)
    if format == "json":
        return to_json({**json.loads(text), **sections})
    if sections:
        text = text.rstrip("\n") + "\n\n" + "\n".join(_section_markdown(k, v) for k, v in sections.items())
    return text if text.endswith("\n") else text + "\n"
