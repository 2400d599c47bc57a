"""Tune small, transfer big: search the LR at the base scale with an optuna sampler, then run
the found LR at every larger scale and measure what it costs against a full grid.

The search is an optuna study (``<experiment>.tune.<series>``) in the same storage as the
grid, so it resumes after a kill: finished trials are kept and only the rest run. Runs are
recorded as parquet under ``<results>/tune/`` (same schema as the grid's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from pathlib import Path
from typing import Callable

import optuna
import pandas as pd
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from ..analysis.transfer import group_columns, metric_spec, optimum, predict
from ..errors import UserError, check_choice, nearest
from ..results.store import FINISHED, ResultStore
from ..run.flops import FlopCounter
from ..run.provenance import MODEL_SCALE_AXES, SCALE_AXES
from ..run.train import execute, resolve_device
from .config import Experiment, run_id
from .queue import open_storage
from .search import SAMPLERS, make_sampler
from .sweep import check_same_experiment, results_dir_for


@dataclass
class SearchParam:
    """An extra hyperparameter to search besides the LR: a float in [low, high]."""
    name: str
    low: float
    high: float
    log: bool = False

    @classmethod
    def parse(cls, text: str) -> "SearchParam":
        """``name=low:high`` or ``name=low:high:log``."""
        try:
            name, rng = text.split("=", 1)
            parts = rng.split(":")
            low, high = float(parts[0]), float(parts[1])
            log = len(parts) > 2 and parts[2] == "log"
            if len(parts) > 3 or (len(parts) == 3 and parts[2] != "log"):
                raise ValueError
        except (ValueError, IndexError):
            raise UserError(f"--param {text!r}: expected name=low:high or name=low:high:log") from None
        if not low < high or (log and low <= 0):
            raise UserError(f"--param {text!r}: need low < high (and low > 0 with log)")
        return cls(name.strip(), low, high, log)


@dataclass
class TuneResult:
    series: str
    axis: str
    base_scale: int
    lr: float
    params: dict
    trials: int
    rows: list = field(default_factory=list)    # one per scale
    grid_runs: int = 0
    grid_base_lr: float | None = None
    tune_seconds: float = 0.0
    target_tuning_seconds: float = 0.0
    tune_flops: int = 0               # training FLOPs: the search at the base scale and the transfer runs
    target_tuning_flops: int = 0      # the same search run at every larger scale instead
    grid_flops: int = 0               # the full grid's recorded runs of this series
    law: dict = field(default_factory=dict)   # scale -> (LR, PI low, PI high) the grid's optimum's law predicts

    @property
    def octaves_from_grid(self) -> float | None:
        if self.grid_base_lr is None:
            return None
        return abs(math.log2(self.lr) - math.log2(self.grid_base_lr))


def _trial_value(trial, row: dict, metric: str, report) -> float:
    """The objective of one tuning trial, minimized: sign × the run's metric (``analysis``
    declares each metric's direction); a run that did not finish scores as its first loss (a
    diverged run is no better than the start), or accuracy 0 for a maximized metric."""
    report(row)
    trial.set_user_attr("run_id", row["run_id"])
    spec = metric_spec(metric)
    value = row.get(spec.column)
    if row["status"] != "done" or value is None or not math.isfinite(value):
        return 0.0 if spec.maximize else float(row.get("first_train_loss") or 1e6)
    return spec.sign * float(value)


def _grid_best(runs: pd.DataFrame, metric: str) -> float:
    """The best seed-mean value of ``metric`` over the LRs of ``runs`` (finished runs only)."""
    spec = metric_spec(metric)
    means = runs.groupby("lr")[spec.column].mean()
    return float(means.max() if spec.maximize else means.min())


def regret(value: float, best: float, metric: str) -> float:
    """How much worse ``value`` is than ``best`` (≥ 0, as the report clips it: one seed can beat a
    seed mean by noise); inf for a run that did not finish, NaN without a grid."""
    if not math.isfinite(best):
        return math.nan
    if not math.isfinite(value):
        return math.inf
    return max(metric_spec(metric).sign * (value - best), 0.0)


@dataclass
class TuneSession:
    """What ``tune`` and ``tune_lrwd`` share: the checked options, the experiment's cells and
    series, and (once ``open``) the results directory, the stores and the study storage."""
    experiment: Experiment
    trials: int
    sampler: str
    seed: int
    metric: str
    device: str
    on_run: Callable | None
    cells: list
    labels: list[str]
    root: Path | None = None
    tune_store: ResultStore | None = None
    grid: pd.DataFrame | None = None
    storage: BaseStorage | None = None

    @classmethod
    def check(cls, experiment: Experiment, series: list[str] | None, trials: int, sampler: str, seed: int,
              metric: str, device: str, on_run) -> "TuneSession":
        """The options checked, nothing written yet."""
        metric_spec(metric)
        if trials < 1:
            raise UserError(f"--trials: must be >= 1, got {trials}")
        resolve_device(device)
        check_choice("--sampler", sampler, SAMPLERS)
        cells = experiment.cells()
        labels = list(dict.fromkeys(c.series for c in cells))
        check_series(series, labels)
        return cls(experiment, trials, sampler, seed, metric, device, on_run, cells, labels)

    def open(self, results_dir, storage: str | None) -> None:
        """Check the results directory and open the stores: the first writes, after every check."""
        self.root = results_dir_for(self.experiment, results_dir)
        check_same_experiment(self.experiment, self.root)
        self.tune_store = ResultStore(self.root / "tune")
        self.tune_store.check_writable()
        self.grid = ResultStore(self.root).load_runs()
        self.storage = open_storage(storage, self.root)

    def run(self, values: dict) -> dict:
        """Run ``values`` unless the tune store already holds its finished result."""
        known = self.tune_store.row(run_id(values))
        if known is not None and known["status"] in FINISHED:
            return known
        result = execute(values, self.device)
        self.tune_store.write(result.row, result.curves, result.diagnostics)
        return result.row

    def report(self, label: str, scale, row: dict) -> None:
        if self.on_run:
            self.on_run(label, scale, row)

    def score(self, trial: optuna.Trial, values: dict, label: str, scale) -> float:
        """Run one trial's ``values`` and return its objective."""
        return _trial_value(trial, self.run(values), self.metric, lambda row: self.report(label, scale, row))

    def study(self, name: str, objective) -> optuna.Study:
        """Open (or resume) study ``name`` and run it up to ``trials`` completed trials; trials a
        killed tune left running are marked failed first."""
        study = optuna.create_study(study_name=name, storage=self.storage, sampler=make_sampler(self.sampler, self.seed),
                                    direction="minimize", load_if_exists=True)
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            study.tell(t.number, state=TrialState.FAIL)
        done = len(study.get_trials(states=(TrialState.COMPLETE,)))
        if done < self.trials:
            study.optimize(objective, n_trials=self.trials - done)
        return study


def tune(experiment: Experiment, series: list[str] | None = None, trials: int = 8, sampler: str = "tpe",
         params: list[SearchParam] = (), axis: str | None = None, metric: str = "train_loss",
         results_dir=None, storage: str | None = None, device: str = "auto", seed: int = 0,
         on_run=None) -> list[TuneResult]:
    """Tune each series at its base (smallest) scale, then transfer the LR to the other scales."""
    session = TuneSession.check(experiment, series, trials, sampler, seed, metric, device, on_run)
    axes = experiment.scale_axes()
    axis = _transfer_axis(axes, axis)
    # the model's size and every scale the experiment varies are what the LR transfers across
    fixed = ("lr", "series", "seed", *MODEL_SCALE_AXES, *axes)
    for p in params:
        if p.name not in session.cells[0].values or p.name in fixed:
            raise UserError(f"--param {p.name}: not a searchable train/model key of this experiment")
    session.open(results_dir, storage)
    flops = FlopCounter(str(resolve_device(device)))
    return [_tune_series(session, label, axis, params, flops) for label in series or session.labels]


def _tune_series(session: TuneSession, label: str, axis: str, params, flops: FlopCounter) -> TuneResult:
    """Search ``label``'s LR (and ``params``) at its base scale, then run the best at every scale."""
    mine = [c for c in session.cells if c.series == label]
    scales = sorted({c.values[axis] for c in mine})
    base = scales[0]
    template = dict(next(c for c in mine if c.values[axis] == base).values)
    lrs = [c.values["lr"] for c in mine]
    lo, hi = math.log2(min(lrs)), math.log2(max(lrs))

    def values_for(trial_params: dict, scale) -> dict:
        v = dict(template)
        v[axis] = scale
        v["lr"] = 2.0 ** trial_params["log2_lr"]
        for p in params:
            v[p.name] = trial_params[p.name]
        return v

    def objective(trial: optuna.Trial) -> float:
        tp = {"log2_lr": trial.suggest_float("log2_lr", lo, hi)}
        for p in params:
            tp[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
        return session.score(trial, values_for(tp, base), label, base)

    study = session.study(f"{session.experiment.name}.tune.{label}", objective)
    best = study.best_params
    result = TuneResult(series=label, axis=axis, base_scale=base, lr=2.0 ** best["log2_lr"],
                        params={k: v for k, v in best.items() if k != "log2_lr"}, trials=session.trials)
    tuned_ids = {t.user_attrs.get("run_id") for t in study.get_trials(states=(TrialState.COMPLETE,))}
    tune_rows = session.tune_store.load_runs()
    searched = tune_rows[tune_rows["run_id"].isin(tuned_ids)]
    result.tune_seconds = float(searched["wall_seconds"].sum())
    result.tune_flops = sum(flops.run(r) for r in searched.to_dict("records"))
    grid = session.grid
    mine_grid = grid[(grid["series"] == label)] if not grid.empty else grid
    _compare_with_grid(result, mine_grid, session.metric, flops)
    result.law = _law_lrs(mine_grid, axis, scales, template, session.metric)
    for scale in scales:
        if scale == base:
            row = session.tune_store.row(study.best_trial.user_attrs["run_id"])
        else:
            row = session.run(values_for(best, scale))
            session.report(label, scale, row)
            result.tune_seconds += float(row["wall_seconds"])
            result.tune_flops += flops.run(row)
            # tuning here instead would cost `trials` runs at this scale's price
            result.target_tuning_seconds += session.trials * float(row["wall_seconds"])
            result.target_tuning_flops += session.trials * flops.steps(row, int(row["steps"]))
        result.rows.append(_scale_row(row, mine_grid, axis, scale, session.metric))
    return result


def _compare_with_grid(result: TuneResult, grid: pd.DataFrame, metric: str, flops: FlopCounter) -> None:
    """Fill ``result``'s grid numbers from the series' grid runs: their count and FLOPs, and the
    grid's optimal LR at the base scale (refined between grid points like ``report``)."""
    if grid.empty:
        return
    spec = metric_spec(metric)
    finished = grid[grid["status"].isin(FINISHED)]
    result.grid_runs = len(finished)
    result.grid_flops = sum(flops.run(r) for r in finished.to_dict("records"))
    base_rows = grid[(grid[result.axis] == result.base_scale) & (grid["status"] == "done")]
    if not base_rows.empty:
        means = base_rows.groupby("lr")[spec.column].mean()
        result.grid_base_lr = optimum(means.index, spec.sign * means.values)["lr_fit"]


def _law_lrs(grid: pd.DataFrame, axis: str, scales: list, template: dict, metric: str) -> dict:
    """Per scale, the optimal LR (and its 90% prediction interval) that the optimum's law fitted to
    the series' grid predicts there (``analysis.transfer.predict``); empty when the grid has fewer
    than two scales with a finished run. Where the grid splits the series into groups (another
    varying key), the group of the tuned configuration."""
    if grid.empty or grid.loc[grid["status"] == "done", axis].nunique() < 2:
        return {}
    law = predict(grid, {axis: [float(s) for s in scales]}, metric)
    for key in group_columns(law):
        if key in template:
            law = law[law[key] == template[key]]
    return {row["target"]: (row["pred_lr"], row["pred_lr_lo"], row["pred_lr_hi"])
            for row in law.to_dict("records")}


def _scale_row(row: dict, grid: pd.DataFrame, axis: str, scale, metric: str) -> dict:
    """The tuned LR's run at ``scale`` against the grid's best there."""
    grid_best = math.nan
    if not grid.empty:
        at = grid[(grid[axis] == scale) & (grid["status"] == "done")]
        if not at.empty:
            grid_best = _grid_best(at, metric)
    value = float(row.get(metric_spec(metric).column)) if row["status"] == "done" else math.nan
    return {"scale": scale, "loss": value, "status": row["status"], "grid_best": grid_best,
            "regret": regret(value, grid_best, metric)}


def check_series(series: list[str] | None, labels: list[str]) -> None:
    """UserError naming a ``--series`` the experiment does not have, the nearest one and the rest."""
    for s in series or []:
        if s not in labels:
            raise UserError(f"--series {s!r}: not in the experiment{nearest(s, labels)}; series: {', '.join(labels)}")


def _transfer_axis(axes: list[str], axis: str | None) -> str:
    """The scale axis to transfer along: ``axis`` if the experiment varies it, else its first
    varying axis; UserError when there is none to transfer along."""
    if not axes:
        raise UserError(f"tune: the experiment varies neither width nor depth nor any other scale-like key "
                        f"({', '.join(SCALE_AXES[2:])}; each has one value), so there is no larger scale to transfer "
                        f"to; give the grid a list of one, e.g. --set width=[32,128]")
    if axis is not None and axis not in axes:
        raise UserError(f"--axis {axis}: the experiment varies only {', '.join(axes)}")
    return axis or axes[0]


def tune_table(results: list[TuneResult]) -> pd.DataFrame:
    """One row per series and scale: the tuned LR, the value reached there, the grid's best and
    the regret (≥ 0), and the LR the grid's optimum's law predicts there (``law_lr``, its 90%
    prediction interval ``law_lr_lo``/``_hi``; NaN without a grid of two or more scales)."""
    rows = []
    for r in results:
        for s in r.rows:
            law_lr, law_lo, law_hi = r.law.get(s["scale"], (math.nan,) * 3)
            rows.append({"series": r.series, "axis": r.axis, "scale": s["scale"], "tuned_lr": r.lr,
                         "tuned_log2_lr": math.log2(r.lr), "loss": s["loss"], "grid_best": s["grid_best"],
                         "regret": s["regret"], "status": s["status"], "law_lr": law_lr, "law_lr_lo": law_lo,
                         "law_lr_hi": law_hi})
    return pd.DataFrame(rows)


def compute_table(results: list[TuneResult]) -> pd.DataFrame:
    """One row per series: training FLOPs (counted by torch) and wall time of tuning small and
    transferring, of tuning at every larger scale instead, and of the full grid."""
    return pd.DataFrame([{"series": r.series, "runs": r.trials + len(r.rows) - 1,
                          "tune_flops": r.tune_flops, "target_tuning_flops": r.target_tuning_flops,
                          "grid_runs": r.grid_runs, "grid_flops": r.grid_flops,
                          "flops_ratio": r.target_tuning_flops / r.tune_flops if r.tune_flops else math.nan,
                          "tune_seconds": r.tune_seconds, "target_tuning_seconds": r.target_tuning_seconds}
                         for r in results])


@dataclass
class LrwdTuneResult:
    """A 1-D search along lr·wd at a fixed lr (see ``tune_lrwd``)."""
    series: str
    axis: str | None
    base_scale: int | None
    lr: float                      # held fixed
    product: float                 # best lr·wd found
    loss: float
    status: str
    trials: int                    # runs used
    product_range: tuple           # (low, high) searched, from the experiment's grid
    grid_cells: int                # (lr, wd) cells of the 2-D grid at the base scale
    saved: float                   # 1 − runs used / grid cells
    saved_steps: float             # 1 − steps used / steps of the grid cells
    grid_best_product: float | None = None
    grid_best_loss: float | None = None
    sign: float = 1.0              # the metric's: +1 minimized, −1 maximized

    @property
    def weight_decay(self) -> float:
        return self.product / self.lr

    @property
    def octaves_from_grid(self) -> float | None:
        if self.grid_best_product is None:
            return None
        return abs(math.log2(self.product) - math.log2(self.grid_best_product))

    @property
    def loss_above_grid(self) -> float | None:
        """How much worse than the grid's best cell (signed: a single run can beat a seed mean)."""
        if self.grid_best_loss is None or not math.isfinite(self.loss):
            return None
        return self.sign * (self.loss - self.grid_best_loss)


def _fixed_lr(lrs: list[float], lr: float | None) -> float:
    """``lr`` if given, else the series' lr when it is not swept, else the middle of its LR grid
    (the upper of the two middle values for an even count)."""
    if lr is not None:
        if not lr > 0:
            raise UserError(f"--lr {lr}: must be > 0")
        return float(lr)
    values = sorted(set(lrs))
    return float(values[len(values) // 2])


def tune_lrwd(experiment: Experiment, series: list[str] | None = None, trials: int = 8, sampler: str = "tpe",
              lr: float | None = None, axis: str | None = None, metric: str = "train_loss", results_dir=None,
              storage: str | None = None, device: str = "auto", seed: int = 0, on_run=None) -> list[LrwdTuneResult]:
    """The 1-D tuning the lr·wd trajectory invariance allows: at the base (smallest) scale, hold
    lr fixed (``lr``, or the series' lr / the middle of its LR grid) and search only lr·wd
    (weight_decay = product / lr), log-uniformly over the products the experiment's
    (lr, weight_decay) grid spans (wd > 0). Study ``<experiment>.tune-lrwd.<series>``, resumable,
    runs under ``<results>/tune``. Each result holds the best product, the compute saved against
    the 2-D grid, and the grid's best cell where its results are recorded. UserError when a
    series has no weight_decay axis."""
    session = TuneSession.check(experiment, series, trials, sampler, seed, metric, device, on_run)
    axes = experiment.scale_axes()
    # a 1-D search at one scale needs no scale axis: without one, the whole grid is that scale
    axis = _transfer_axis(axes, axis) if axes or axis is not None else None
    plans = [_lrwd_plan(session.cells, label, axis, lr) for label in series or session.labels]
    session.open(results_dir, storage)
    return [_tune_lrwd_series(session, plan) for plan in plans]


@dataclass
class LrwdPlan:
    """One series' 1-D search: its base-scale cells, the fixed lr and the lr·wd range."""
    label: str
    axis: str | None
    base: int | None
    at_base: list[dict]
    lr: float
    products: tuple[float, float]


def _lrwd_plan(cells: list, label: str, axis: str | None, lr: float | None) -> LrwdPlan:
    mine = [c.values for c in cells if c.series == label]
    base = min(v[axis] for v in mine) if axis else None
    at_base = [v for v in mine if axis is None or v[axis] == base]
    wds = sorted({float(v.get("weight_decay", 0.0)) for v in at_base})
    if len(wds) < 2:
        raise UserError(f"--along lrwd: series {label} has no weight_decay axis (weight_decay = "
                        f"{', '.join(f'{w:g}' for w in wds)}); give a list, e.g. --set weight_decay=[1e-4,1e-3,1e-2]")
    products = [v["lr"] * v["weight_decay"] for v in at_base if v.get("weight_decay", 0) > 0]
    if len(set(products)) < 2:
        raise UserError(f"--along lrwd: series {label}: the grid spans a single lr·wd > 0; nothing to search")
    return LrwdPlan(label, axis, base, at_base, _fixed_lr([v["lr"] for v in at_base], lr),
                    (min(products), max(products)))


def _tune_lrwd_series(session: TuneSession, plan: LrwdPlan) -> LrwdTuneResult:
    """Search lr·wd of ``plan``'s series and measure it against the 2-D grid."""
    template = {**plan.at_base[0], "lr": plan.lr}
    p_lo, p_hi = plan.products

    def objective(trial: optuna.Trial) -> float:
        log2_product = trial.suggest_float("log2_product", math.log2(p_lo), math.log2(p_hi))
        values = {**template, "weight_decay": 2.0 ** log2_product / plan.lr}
        return session.score(trial, values, plan.label, plan.base)

    study = session.study(f"{session.experiment.name}.tune-lrwd.{plan.label}", objective)
    spec = metric_spec(session.metric)
    best_row = session.tune_store.row(study.best_trial.user_attrs["run_id"])
    loss = float(best_row[spec.column]) if best_row["status"] == "done" else math.nan
    grid_cells = {(v["lr"], v["weight_decay"]): v.get("steps", 0) for v in plan.at_base}
    grid_steps = sum(grid_cells.values())
    used_steps = session.trials * template.get("steps", 0)
    result = LrwdTuneResult(series=plan.label, axis=plan.axis, base_scale=plan.base, lr=plan.lr,
                            product=2.0 ** study.best_params["log2_product"], loss=loss,
                            status=str(best_row["status"]), trials=session.trials, product_range=plan.products,
                            grid_cells=len(grid_cells), saved=1 - session.trials / len(grid_cells),
                            saved_steps=1 - used_steps / grid_steps if grid_steps else math.nan,
                            sign=spec.sign)
    _best_grid_cell(result, session.grid, session.metric)
    return result


def _best_grid_cell(result: LrwdTuneResult, grid: pd.DataFrame, metric: str) -> None:
    """Fill ``result``'s grid numbers: the 2-D grid's best cell at its scale (seed mean), when recorded."""
    if grid.empty or "weight_decay" not in grid:
        return
    spec = metric_spec(metric)
    g = grid[(grid["series"] == result.series) & (grid["status"] == "done") & (grid["weight_decay"] > 0)]
    if result.axis is not None:
        g = g[g[result.axis] == result.base_scale]
    if not g.empty:
        means = g.groupby(["lr", "weight_decay"])[spec.column].mean()
        best = means.idxmax() if spec.maximize else means.idxmin()
        (best_lr, best_wd), result.grid_best_loss = best, float(means[best])
        result.grid_best_product = float(best_lr * best_wd)


def lrwd_tune_table(results: list[LrwdTuneResult]) -> pd.DataFrame:
    """One row per series of ``tune_lrwd`` results."""
    return pd.DataFrame([{"series": r.series, "axis": r.axis, "scale": r.base_scale, "lr": r.lr,
                          "best_product": r.product, "best_log2_product": math.log2(r.product),
                          "weight_decay": r.weight_decay, "loss": r.loss, "status": r.status, "runs": r.trials,
                          "grid_cells": r.grid_cells, "saved": r.saved, "saved_steps": r.saved_steps,
                          "grid_best_product": r.grid_best_product, "grid_best_loss": r.grid_best_loss,
                          "octaves_from_grid": r.octaves_from_grid, "loss_above_grid": r.loss_above_grid}
                         for r in results])
