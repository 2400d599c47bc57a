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

from ..report import render
from ..analysis.transfer import metric_spec, optimum
from ..choices import SAMPLERS
from ..errors import UserError
from ..run.flops import FlopCounter
from ..results.store import FINISHED, ResultStore
from .config import Experiment, run_id
from .queue import open_storage
from ..run.train import execute, resolve_device
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


def _regret(value: float, best: float, metric: str) -> float:
    """How much worse ``value`` is than ``best`` (≥ 0, as the report clips it: one seed can beat a
    seed mean by noise); inf for a run that did not finish, NaN without a grid."""
    if not math.isfinite(best):
        return math.nan
    if not math.isfinite(value):
        return math.inf
    return max(metric_spec(metric).sign * (value - best), 0.0)


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
    spec = metric_spec(metric)
    if trials < 1:
        raise UserError(f"--trials: must be >= 1, got {trials}")
    resolve_device(device)
    column = spec.column
    cells = experiment.cells()
    labels = list(dict.fromkeys(c.series for c in cells))
    check_series(series, labels)
    axis = _transfer_axis(experiment.scale_axes(), axis)
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
    flops = FlopCounter(str(resolve_device(device)))
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
            return _trial_value(trial, _run_cached(tune_store, values_for(tp, base), device), metric,
                                lambda row: on_run and on_run(label, base, row))

        study = _resume_study(f"{experiment.name}.tune.{label}", storage_obj, _sampler(sampler, seed),
                              objective, trials)
        best = study.best_params
        result = TuneResult(series=label, axis=axis, base_scale=base, lr=2.0 ** best["log2_lr"],
                            params={k: v for k, v in best.items() if k != "log2_lr"}, trials=trials)
        tuned_ids = {t.user_attrs.get("run_id") for t in study.get_trials(states=(TrialState.COMPLETE,))}
        tune_rows = tune_store.load_runs()
        searched = tune_rows[tune_rows["run_id"].isin(tuned_ids)]
        result.tune_seconds = float(searched["wall_seconds"].sum())
        result.tune_flops = sum(flops.run(r) for r in searched.to_dict("records"))
        gmine = grid[(grid["series"] == label)] if not grid.empty else grid
        if not gmine.empty:
            result.grid_runs = int(gmine["status"].isin(FINISHED).sum())
            result.grid_flops = sum(flops.run(r) for r in gmine[gmine["status"].isin(FINISHED)].to_dict("records"))
            base_rows = gmine[(gmine[axis] == base) & (gmine["status"] == "done")]
            if not base_rows.empty:  # the grid's optimum, refined between grid points like `report`
                means = base_rows.groupby("lr")[column].mean()
                result.grid_base_lr = optimum(means.index, spec.sign * means.values)["lr_fit"]
        for scale in scales:
            row = _run_cached(tune_store, values_for(best, scale), device) if scale != base else \
                tune_store.row(study.best_trial.user_attrs["run_id"])
            if on_run and scale != base:
                on_run(label, scale, row)
            if scale != base:
                result.tune_seconds += float(row["wall_seconds"])
                result.tune_flops += flops.run(row)
                # tuning here instead would cost `trials` runs at this scale's price
                result.target_tuning_seconds += trials * float(row["wall_seconds"])
                result.target_tuning_flops += trials * flops.steps(row, int(row["steps"]))
            grid_best = math.nan
            if not gmine.empty:
                at = gmine[(gmine[axis] == scale) & (gmine["status"] == "done")]
                if not at.empty:
                    grid_best = _grid_best(at, metric)
            value = float(row.get(column)) if row["status"] == "done" else math.nan
            result.rows.append({"scale": scale, "loss": value, "status": row["status"], "grid_best": grid_best,
                                "regret": _regret(value, grid_best, metric)})
        out.append(result)
    return out


def check_series(series: list[str] | None, labels: list[str]) -> None:
    """UserError naming a ``--series`` the experiment does not have, the nearest one and the rest."""
    from ..errors import nearest
    for s in series or []:
        if s not in labels:
            raise UserError(f"--series {s!r}: not in the experiment{nearest(s, labels)}; series: {', '.join(labels)}")


def _transfer_axis(axes: list[str], axis: str | None) -> str:
    """The scale axis to transfer along: ``axis`` if the experiment varies it, else its first
    varying axis; UserError when there is none to transfer along."""
    if not axes:
        raise UserError("tune: the experiment varies neither width nor depth (each has one value), so there is "
                        "no larger scale to transfer to; give the grid a width or depth list, "
                        "e.g. --set width=[32,128]")
    if axis is not None and axis not in axes:
        raise UserError(f"--axis {axis}: the experiment varies only {', '.join(axes)}")
    return axis or axes[0]


def tune_table(results: list[TuneResult]) -> pd.DataFrame:
    """One row per series and scale: the tuned LR, the value reached there, the grid's best and
    the regret (≥ 0)."""
    rows = []
    for r in results:
        for s in r.rows:
            rows.append({"series": r.series, "axis": r.axis, "scale": s["scale"], "tuned_lr": r.lr,
                         "tuned_log2_lr": math.log2(r.lr), "loss": s["loss"], "grid_best": s["grid_best"],
                         "regret": s["regret"], "status": s["status"]})
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


def _log2_text(x) -> str:
    return "—" if render.missing(x) or not x > 0 else f"2^{math.log2(x):.2f}"


TUNE_COLUMNS = [render.Column("scale", "scale", str, True), render.Column("status", "status"),
                render.Column("loss", "{metric}", render.num, True),
                render.Column("grid_best", "grid best (seed mean)", render.num, True),
                render.Column("regret", "regret", render.num, True)]


def render_tune(results: list[TuneResult], format: str = "markdown", metric: str = "train_loss") -> str:
    """``tune``'s results as text: markdown (per series a line, its table, its compute), or the
    table as JSON records (``{"scales": [...], "compute": [...]}``) or CSV (the per-scale table)."""
    table, compute = tune_table(results), compute_table(results)
    if format == "json":
        return render.to_json({"metric": metric, "scales": render.records(render.rounded(table)),
                               "compute": render.records(render.rounded(compute))})
    if format == "csv":
        return render.to_csv(table)
    columns = [render.Column(c.key, c.header.format(metric=metric), c.fmt, c.right) for c in TUNE_COLUMNS]
    blocks = []
    for r, cost in zip(results, compute.to_dict("records")):
        grid = (f"; the grid's optimum at the base scale is {_log2_text(r.grid_base_lr)}, "
                f"{r.octaves_from_grid:.2f} octaves away" if r.grid_base_lr else "")
        head = f"**{r.series}**: tuned LR {_log2_text(r.lr)} at {r.axis}={r.base_scale} in {r.trials} runs{grid}"
        rows = table[table["series"] == r.series].to_dict("records")
        flops = (f"compute (training FLOPs, counted by torch): {render.flops(r.tune_flops)} to tune small and "
                 f"transfer ({cost['runs']} runs) vs {render.flops(r.target_tuning_flops)} to tune at every "
                 f"larger scale ({cost['flops_ratio']:.1f}x)"
                 + (f"; the full grid: {render.flops(r.grid_flops)} in {r.grid_runs} runs" if r.grid_runs else "")
                 + f". Wall time: {render.seconds(r.tune_seconds)} vs ~{render.seconds(r.target_tuning_seconds)}.")
        blocks.append("\n\n".join([head, render.markdown_table(rows, columns), flops]))
    return "\n\n".join(blocks) + "\n"




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
    """The 1-D tuning that the lr·wd trajectory invariance allows: at the base (smallest) scale,
    hold lr fixed (``lr``, or the series' lr / the middle of its LR grid) and search only the
    product lr·wd (weight_decay = product / lr), log-uniformly over the products the
    experiment's (lr, weight_decay) grid spans (wd > 0), with the same optuna study machinery as
    ``tune`` (study ``<experiment>.tune-lrwd.<series>``, resumable; runs under ``<results>/tune``).
    Reports the best product and its loss, the runs used, the compute saved against the 2-D
    grid at that scale (by runs and by steps), and, where the grid's results are in the results
    directory, how far the best 1-D product is from the grid's best cell (seed-mean) and the
    loss difference. UserError when a series has no weight_decay axis."""
    spec = metric_spec(metric)
    if trials < 1:
        raise UserError(f"--trials: must be >= 1, got {trials}")
    column = spec.column
    cells = experiment.cells()
    labels = list(dict.fromkeys(c.series for c in cells))
    check_series(series, labels)
    axes = experiment.scale_axes()
    # a 1-D search at one scale needs no scale axis: without one, the whole grid is that scale
    axis = _transfer_axis(axes, axis) if axes or axis is not None else None
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
            return _trial_value(trial, _run_cached(tune_store, values_for(log2_product), device), metric,
                                lambda row: on_run and on_run(label, base, row))

        study = _resume_study(f"{experiment.name}.tune-lrwd.{label}", storage_obj, _sampler(sampler, seed),
                              objective, trials)
        best_row = tune_store.row(study.best_trial.user_attrs["run_id"])
        loss = float(best_row[column]) if best_row["status"] == "done" else math.nan
        grid_cells = {(v["lr"], v["weight_decay"]): v.get("steps", 0) for v in at_base}
        grid_steps = sum(grid_cells.values())
        used_steps = trials * template.get("steps", 0)
        result = LrwdTuneResult(series=label, axis=axis, base_scale=base, lr=fixed_lr,
                                product=2.0 ** study.best_params["log2_product"], loss=loss,
                                status=str(best_row["status"]), trials=trials, product_range=(p_lo, p_hi),
                                grid_cells=len(grid_cells), saved=1 - trials / len(grid_cells),
                                saved_steps=1 - used_steps / grid_steps if grid_steps else math.nan,
                                sign=spec.sign)
        if not grid.empty and "weight_decay" in grid:
            g = grid[(grid["series"] == label) & (grid["status"] == "done") & (grid["weight_decay"] > 0)]
            if axis is not None:
                g = g[g[axis] == base]
            if not g.empty:  # the 2-D grid's best cell, seed mean
                means = g.groupby(["lr", "weight_decay"])[column].mean()
                best = means.idxmax() if spec.maximize else means.idxmin()
                (best_lr, best_wd), result.grid_best_loss = best, float(means[best])
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


def render_lrwd(results: list[LrwdTuneResult], format: str = "markdown", metric: str = "train_loss") -> str:
    """``tune_lrwd``'s results as text: markdown (per series a line and its compute), or the
    table (``lrwd_tune_table``) as JSON records or CSV."""
    table = lrwd_tune_table(results)
    if format == "json":
        return render.to_json(render.records(render.rounded(table)))
    if format == "csv":
        return render.to_csv(table)
    blocks = []
    for r in results:
        where = f" at {r.axis}={r.base_scale}" if r.axis else ""
        grid = (f"; the grid's best cell has lr·wd {_log2_text(r.grid_best_product)} "
                f"({r.octaves_from_grid:.2f} octaves away), {metric} {render.num(r.grid_best_loss)}"
                + (f" ({render.signed(r.loss_above_grid, 4)} worse here)" if r.loss_above_grid is not None else "")
                if r.grid_best_product else "")
        blocks.append(f"**{r.series}**: best lr·wd {_log2_text(r.product)} (wd {r.weight_decay:.3g} at fixed lr "
                      f"{r.lr:g}){where}, {metric} {render.num(r.loss)}, in {r.trials} runs over lr·wd "
                      f"[{r.product_range[0]:.3g}, {r.product_range[1]:.3g}]{grid}\n\n"
                      f"compute: {r.trials} runs vs {r.grid_cells} cells of the lr x weight_decay grid: "
                      f"{100 * r.saved:.0f}% saved ({100 * r.saved_steps:.0f}% of the steps)")
    return "\n\n".join(blocks) + "\n"
