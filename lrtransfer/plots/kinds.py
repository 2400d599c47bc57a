"""The plot kinds ``lrtransfer plot --kind`` draws: each figure module registers its kind (name ->
a function of a ``Request``) and ``draw`` draws a results directory's figures of one kind,
every one before any file is written."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from ..analysis.dynamics import RegimeOptions
from ..errors import check_choice
from .runs import select
from .style import Style, check_out, save


@dataclass
class Request:
    """What a kind is asked to draw: the selected runs, their curves and the plot options."""
    results_dir: Path
    runs: pd.DataFrame
    curves: pd.DataFrame
    style: Style
    metric: str = "train_loss"
    axis: str | None = None
    ci: float = 0.9
    tolerance: float = 1.0
    scale: object = None
    lr: float | None = None
    color_by: str = "lr"
    quantity: str = "relative_update"
    regime: RegimeOptions = field(default_factory=RegimeOptions)
    predict: dict | None = None     # the transfer view: {axis: [scales]} to extend the optimum's law to
    note: Callable[[str], None] = lambda text: None   # told what was left undrawn, and why

    def diagnostics(self) -> pd.DataFrame:
        from ..results.store import load_diagnostics
        return load_diagnostics(self.results_dir)


@dataclass(frozen=True)
class Kind:
    """A plot kind: its figures, the default file name (``{quantity}`` filled in), the suffix
    of its second figure's name if it draws two, a line of help, and the values its options
    allow (option name -> allowed values, checked before anything is drawn)."""
    name: str
    figures: Callable[[Request], list]
    stem: str
    help: str
    second: str | None = None
    options: dict = field(default_factory=dict)


KINDS: dict[str, Kind] = {}


def register(name: str, stem: str, help: str, second: str | None = None, options: dict | None = None):
    """Decorator: ``fn(request) -> [Figure, ...]`` draws plot kind ``name``."""
    def add(fn):
        KINDS[name] = Kind(name, fn, stem, help, second, options or {})
        return fn
    return add


def second_path(target: Path, stem: str, suffix: str) -> Path:
    """The second figure's path: ``stem`` swapped for ``suffix`` in the first one's name, else appended."""
    name = target.stem.replace(stem, suffix) if stem in target.stem else f"{target.stem}_{suffix}"
    return target.with_name(name).with_suffix(target.suffix)


def _check_options(kind: str, options: dict) -> None:
    """The kind, and every option a kind registered allowed values for, before anything is drawn."""
    check_choice("--kind", kind, KINDS)
    for registered in KINDS.values():
        for name, allowed in registered.options.items():
            check_choice(f"--{name.replace('_', '-')}", options[name], allowed)


def draw(results_dir, kind: str = "lr", out=None, *, series=(), scales=(), labels: dict | None = None,
         logy: bool = False, **options) -> list[Path]:
    """Draw a results directory's figures of one ``kind`` (``KINDS``) and write them to ``out``
    (default ``RESULTS_DIR/<kind's name>.png``; a second figure beside it). ``series`` and
    ``scales`` select runs; ``labels`` name series (over the experiment's own); ``options`` are
    ``Request``'s fields. Every figure is drawn before any is written: a UserError leaves the
    old figures as they were. Returns the paths written."""
    from ..analysis.transfer import metric_spec
    from ..results.store import ResultStore, load_results
    request = Request(Path(results_dir), pd.DataFrame(), pd.DataFrame(), Style(), **options)
    _check_options(kind, vars(request))
    metric_spec(request.metric)
    runs, request.curves = load_results(results_dir)
    chosen = KINDS[kind]
    target = check_out(out or request.results_dir / f"{chosen.stem.format(quantity=request.quantity)}.png")
    request.runs = select(runs, series=series, scales=scales, axis=request.axis)
    recorded = ResultStore(results_dir).experiment() or {}
    request.style = Style(labels={**(recorded.get("labels") or {}), **(labels or {})}, logy=logy)
    figures = chosen.figures(request)
    paths = [target] + ([second_path(target, chosen.stem, chosen.second)] if len(figures) > 1 else [])
    for fig, path in zip(figures, paths):
        save(fig, path)
    return paths
