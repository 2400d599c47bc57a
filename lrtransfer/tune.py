"""Tune small, transfer big: search the LR at the base scale with an optuna sampler, then run
the found LR at every larger scale and measure what it costs against a full grid.

The search is an optuna study (``<experiment>.tune.<series>``) in the same storage as the
grid, so it resumes after a kill: finished trials are kept and only the rest run. Runs are
recorded as parquet under ``<results>/tune/`` (same schema as the grid's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import optuna
import pandas as pd
from optuna.trial import TrialState

from .analysis import optimum
from .errors import UserError
from .store import FINISHED, ResultStore
from .sweep.config import Experiment, run_id
from .sweep.queue import open_storage
from .train import execute, resolve_device
from .sweep.sweep import check_same_experiment, results_dir_for

SAMPLERS = ("tpe", "gp", "random")
METRICS = {"train_loss": "final_train_loss", "test_loss": "final_test_loss"}


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

    @property
    def octaves_from_grid(self) -> float | None:
        if self.grid_base_lr is None:
            return None
        return abs(math.log2(self.lr) - math.log2(self.grid_base_lr))


def _sampler(name: str, seed: int):
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=4)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"--sampler {name!r}: allowed: {', '.join(SAMPLERS)}")


def _trial_value(trial, row: dict, column: str, report) -> float:
    """The objective of one tuning trial: the run's metric, or its first loss if it did not
    finish (a diverged run is no better than the start)."""
    report(row)
    trial.set_user_attr("run_id", row["run_id"])
    value = row.get(column)
    if row["status"] != "done" or value is None or not math.isfinite(value):
        return float(row.get("first_train_loss") or 1e6)
    return float(value)


def _resume_study(name: str, storage, sampler, objective, trials: int) -> optuna.Study:
    """Open (or resume) study ``name`` and run it up to ``trials`` completed trials; trials a
    killed tune left running are marked failed first."""
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="minimize",
                                load_if_exists=True)
    for t in study.get_trials(states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
    done = len(study.get_trials(states=(TrialState.COMPLETE,)))
    if done < trials:
        study.optimize(objective, n_trials=trials - done)
    return study


def _run_cached(store: ResultStore, values: dict, device: str) -> dict:
    """Run ``values`` unless the store already holds its finished result."""
    known = store.row(run_id(values))
    if known is not None and known["status"] in FINISHED:
        return known
    result = execute(values, device)
    store.write(result.row, result.curves, result.diagnostics)
    return result.row


def tune(experiment: Experiment, series: list[str] | None = None, trials: int = 8, sampler: str = "tpe",
         params: list[SearchParam] = (), axis: str | None = None, metric: str = "train_loss",
         results_dir=None, storage: str | None = None, device: str = "auto", seed: int = 0,
         on_run=None) -> list[TuneResult]:
    """Tune each series at its base (smallest) scale, then transfer the LR to the other scales."""
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r}: allowed: {', '.join(METRICS)}")
    if trials < 1:
        raise UserError(f"--trials: must be >= 1, got {trials}")
    resolve_device(device)
    column = METRICS[metric]
    cells = experiment.cells()
    labels = list(dict.fromkeys(c.series for c in cells))
    for s in series or []:
        if s not in labels:
            raise UserError(f"--series {s!r}: not in the experiment; series: {', '.join(labels)}")
    axes = experiment.scale_axes()
    axis = axis or (axes[0] if axes else None)
    if axis not in ("width", "depth") or axis not in axes:
        raise UserError(f"--axis {axis!r}: the experiment varies {', '.join(axes) or 'no scale'}; nothing to transfer")
    _sampler(sampler, seed)  # a bad --sampler fails here, before anything is written
    for p in params:
        if p.name not in cells[0].values or p.name in ("lr", "width", "depth", "series", "seed"):
            raise UserError(f"--param {p.name}: not a searchable train/model key of this experiment")
    root = results_dir_for(experiment, results_dir)
    check_same_experiment(experiment, root)
    grid_store, tune_store = ResultStore(root), ResultStore(root / "tune")
    tune_store.check_writable()
    grid = grid_store.load_runs()
    storage_obj = open_storage(storage, root)
    out = []
    for label in series or labels:
        mine = [c for c in cells if c.series == label]
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
            return _trial_value(trial, _run_cached(tune_store, values_for(tp, base), device), column,
                                lambda row: on_run and on_run(label, base, row))

        study = _resume_study(f"{experiment.name}.tune.{label}", storage_obj, _sampler(sampler, seed),
                              objective, trials)
        best = study.best_params
        result = TuneResult(series=label, axis=axis, base_scale=base, lr=2.0 ** best["log2_lr"],
                            params={k: v for k, v in best.items() if k != "log2_lr"}, trials=trials)
        tuned_ids = {t.user_attrs.get("run_id") for t in study.get_trials(states=(TrialState.COMPLETE,))}
        tune_rows = tune_store.load_runs()
        result.tune_seconds = float(tune_rows.loc[tune_rows["run_id"].isin(tuned_ids), "wall_seconds"].sum())
        gmine = grid[(grid["series"] == label)] if not grid.empty else grid
        if not gmine.empty:
            result.grid_runs = int(gmine["status"].isin(FINISHED).sum())
            base_rows = gmine[(gmine[axis] == base) & (gmine["status"] == "done")]
            if not base_rows.empty:  # the grid's optimum, refined between grid points like `report`
                means = base_rows.groupby("lr")[column].mean()
                result.grid_base_lr = optimum(means.index, means.values)["lr_fit"]
        for scale in scales:
            row = _run_cached(tune_store, values_for(best, scale), device) if scale != base else \
                tune_store.row(study.best_trial.user_attrs["run_id"])
            if on_run and scale != base:
                on_run(label, scale, row)
            if scale != base:
                result.tune_seconds += float(row["wall_seconds"])
                # tuning here instead would cost `trials` runs at this scale's price
                result.target_tuning_seconds += trials * float(row["wall_seconds"])
            grid_best = math.nan
            if not gmine.empty:
                at = gmine[(gmine[axis] == scale) & (gmine["status"] == "done")]
                if not at.empty:
                    grid_best = float(at.groupby("lr")[column].mean().min())
            loss = row.get(column) if row["status"] == "done" else math.inf
            result.rows.append({"scale": scale, "loss": loss, "status": row["status"], "grid_best": grid_best,
                                "regret": (loss - grid_best) if math.isfinite(grid_best) else math.nan})
        out.append(result)
    return out


def tune_table(results: list[TuneResult]) -> pd.DataFrame:
    rows = []
    for r in results:
        for s in r.rows:
            rows.append({"series": r.series, "axis": r.axis, "scale": s["scale"], "tuned_lr": r.lr,
                         "tuned_log2_lr": math.log2(r.lr), "loss": s["loss"], "grid_best": s["grid_best"],
                         "regret": s["regret"], "status": s["status"]})
    return pd.DataFrame(rows)


ALONG = ("lr", "lrwd")


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
        if self.grid_best_loss is None or not math.isfinite(self.loss):
            return None
        return self.loss - self.grid_best_loss


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
    """The 1-D tuning that the lr·wd trajectory invariance allows: at the base (smallest) scale,
    hold lr fixed (``lr``, or the series' lr / the middle of its LR grid) and search only the
    product lr·wd (weight_decay = product / lr), log-uniformly over the products the
    experiment's (lr, weight_decay) grid spans (wd > 0), with the same optuna study machinery as
    ``tune`` (study ``<experiment>.tune-lrwd.<series>``, resumable; runs under ``<results>/tune``).
    Reports the best product and its loss, the runs used, the compute saved against the 2-D
    grid at that scale (by runs and by steps), and, where the grid's results are in the results
    directory, how far the best 1-D product is from the grid's best cell (seed-mean) and the
    loss difference. UserError when a series has no weight_decay axis."""
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r}: allowed: {', '.join(METRICS)}")
    if trials < 1:
        raise UserError(f"--trials: must be >= 1, got {trials}")
    column = METRICS[metric]
    cells = experiment.cells()
    labels = list(dict.fromkeys(c.series for c in cells))
    for s in series or []:
        if s not in labels:
            raise UserError(f"--series {s!r}: not in the experiment; series: {', '.join(labels)}")
    axes = experiment.scale_axes()
    if axis is not None and axis not in axes:
        raise UserError(f"--axis {axis!r}: the experiment varies {', '.join(axes) or 'no scale'}")
    axis = axis or (axes[0] if axes else None)
    plans = []
    for label in series or labels:
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
        plans.append((label, base, at_base, _fixed_lr([v["lr"] for v in at_base], lr),
                      (min(products), max(products))))
    resolve_device(device)
    _sampler(sampler, seed)  # a bad --sampler fails here, before anything is written
    root = results_dir_for(experiment, results_dir)
    check_same_experiment(experiment, root)
    grid_store, tune_store = ResultStore(root), ResultStore(root / "tune")
    tune_store.check_writable()
    grid = grid_store.load_runs()
    storage_obj = open_storage(storage, root)
    out = []
    for label, base, at_base, fixed_lr, (p_lo, p_hi) in plans:
        template = dict(at_base[0])
        template["lr"] = fixed_lr

        def values_for(log2_product: float) -> dict:
            return {**template, "weight_decay": 2.0 ** log2_product / fixed_lr}

        def objective(trial: optuna.Trial) -> float:
            log2_product = trial.suggest_float("log2_product", math.log2(p_lo), math.log2(p_hi))
            return _trial_value(trial, _run_cached(tune_store, values_for(log2_product), device), column,
                                lambda row: on_run and on_run(label, base, row))

        study = _resume_study(f"{experiment.name}.tune-lrwd.{label}", storage_obj, _sampler(sampler, seed),
                              objective, trials)
        best_row = tune_store.row(study.best_trial.user_attrs["run_id"])
        loss = float(best_row[column]) if best_row["status"] == "done" else math.inf
        grid_cells = {(v["lr"], v["weight_decay"]): v.get("steps", 0) for v in at_base}
        grid_steps = sum(grid_cells.values())
        used_steps = trials * template.get("steps", 0)
        result = LrwdTuneResult(series=label, axis=axis, base_scale=base, lr=fixed_lr,
                                product=2.0 ** study.best_params["log2_product"], loss=loss,
                                status=str(best_row["status"]), trials=trials, product_range=(p_lo, p_hi),
                                grid_cells=len(grid_cells), saved=1 - trials / len(grid_cells),
                                saved_steps=1 - used_steps / grid_steps if grid_steps else math.nan)
        if not grid.empty and "weight_decay" in grid:
            g = grid[(grid["series"] == label) & (grid["status"] == "done") & (grid["weight_decay"] > 0)]
            if axis is not None:
                g = g[g[axis] == base]
            if not g.empty:  # the 2-D grid's best cell, seed mean
                means = g.groupby(["lr", "weight_decay"])[column].mean()
                (best_lr, best_wd), result.grid_best_loss = means.idxmin(), float(means.min())
                result.grid_best_product = float(best_lr * best_wd)
        out.append(result)
    return out


def lrwd_tune_table(results: list[LrwdTuneResult]) -> pd.DataFrame:
    """One row per series of ``tune_lrwd`` results."""
    return pd.DataFrame([{"series": r.series, "axis": r.axis, "scale": r.base_scale, "lr": r.lr,
                          "best_product": r.product, "best_log2_product": math.log2(r.product),
                          "weight_decay": r.weight_decay, "loss": r.loss, "status": r.status, "runs": r.trials,
                          "grid_cells": r.grid_cells, "saved": r.saved, "saved_steps": r.saved_steps,
                          "grid_best_product": r.grid_best_product, "grid_best_loss": r.grid_best_loss,
                          "octaves_from_grid": r.octaves_from_grid, "loss_above_grid": r.loss_above_grid}
                         for r in results])
