"""Which runs a figure draws: the series and scales asked for, one scale, one LR or each
group's best, and the panel grid (a column per series, a row per other varying key)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..analysis.transfer import metric_column, metric_spec, resolve_axes, scale_axes
from ..errors import UserError, nearest
from ..analysis.common import missing

CURVE_METRICS = ("train_loss", "test_loss")


def select(runs: pd.DataFrame, series=(), scales=(), axis: str | None = None) -> pd.DataFrame:
    """The runs of the given ``series`` and ``scales`` (of ``axis``, default the varying one);
    empty selections mean all. UserError naming an unknown series (with the nearest) or scale."""
    if series:
        known = list(dict.fromkeys(runs["series"]))
        for s in series:
            if s not in known:
                raise UserError(f"--series {s!r}: no such series here{nearest(s, known)}; series: {', '.join(known)}")
        runs = runs[runs["series"].isin(series)]
    if scales:
        ax_name = resolve_axes(runs, axis)[0]
        known = sorted(runs[ax_name].dropna().unique())
        for s in scales:
            if s not in known:
                raise UserError(f"--scales {s}: no runs at {ax_name}={s}; {ax_name}s: {', '.join(f'{k:g}' for k in known)}")
        runs = runs[runs[ax_name].isin(scales)]
    return runs


def plot_axes(runs: pd.DataFrame, axis: str | None) -> list[str]:
    """``resolve_axes``, refusing an explicitly requested axis along which nothing varies (a
    figure of it would be degenerate)."""
    axes = resolve_axes(runs, axis)
    if axis is not None and runs[axis].nunique() < 2:
        varying = scale_axes(runs)
        raise UserError(f"--axis {axis}: every run has {axis} = {runs[axis].iloc[0]}, nothing varies along it"
                        + (f"; the runs vary {', '.join(varying)}" if varying else ""))
    return axes


def single_scale(runs: pd.DataFrame, axis: str | None = None) -> str | None:
    """``"width=32"`` when the runs have a single scale along ``axis`` (default the varying one;
    no transfer view to draw), else None."""
    ax_name = plot_axes(runs, axis)[0]
    values = runs[ax_name].dropna().unique()
    return f"{ax_name}={values[0]}" if len(values) == 1 else None


def initial_loss(runs: pd.DataFrame, metric: str = "train_loss") -> float | None:
    """The median loss at initialisation (a cap on the y range of a loss); None for a maximized
    metric, where it means nothing."""
    if "first_train_loss" not in runs or metric_spec(metric).maximize:
        return None
    start = pd.to_numeric(runs["first_train_loss"], errors="coerce").astype(float)
    start = start[np.isfinite(start)]
    return float(start.median()) if len(start) else None


def best_index(values: pd.Series, metric: str):
    """The index of the best value: the minimum of a loss, the maximum of an accuracy."""
    return values.idxmax() if metric_spec(metric).maximize else values.idxmin()


def group_label(keys: list[str], values: tuple) -> str:
    """``", depth=4"``: the panel-title suffix of a group of runs."""
    return "".join(f", {k}={v}" for k, v in zip(keys, values) if not missing(v))


def in_group(c: pd.DataFrame, keys: list[str], values: tuple) -> pd.DataFrame:
    """The rows of ``c`` whose ``keys`` hold ``values`` (a missing value matches a missing one)."""
    for k, v in zip(keys, values):
        c = c[c[k].isna()] if missing(v) else c[c[k] == v]
    return c


def panel_groups(runs: pd.DataFrame) -> tuple[list[str], list, list[str]]:
    """Series (columns), the values of varying width/depth (rows) and their names."""
    from ..analysis.dynamics import scale_keys
    keys = scale_keys(runs)
    groups = list(dict.fromkeys(runs[keys].itertuples(index=False, name=None))) if keys else [()]
    return list(dict.fromkeys(runs["series"])), groups, keys


def swept_rate(runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The runs with the rate the experiment sweeps in the ``lr`` column, and its name: the
    effective LR where runs set one (sphere experiments hold ``lr`` fixed and sweep ``elr``),
    else the LR itself."""
    if "elr" in runs:
        elr = pd.to_numeric(runs["elr"], errors="coerce").fillna(0.0)
        if (elr > 0).all() and elr.nunique() > 1:
            return runs.assign(lr=elr), "elr"
    return runs, "lr"


def lr_text(lr: float) -> str:
    return f"2^{math.log2(lr):g}"


def check_curve_metric(metric: str) -> None:
    if metric not in CURVE_METRICS:
        raise UserError(f"--metric {metric}: loss curves are train_loss or test_loss")


def at_scale(runs: pd.DataFrame, ax_name: str, scale) -> tuple[pd.DataFrame, object]:
    """The runs at ``scale`` of ``ax_name`` (default the largest), checked; and the scale."""
    scales = sorted(runs[ax_name].dropna().unique())
    if scale is None:
        scale = scales[-1]
    elif scale not in scales:
        raise UserError(f"--scale {scale}: no runs at {ax_name}={scale}; {ax_name}s: "
                        f"{', '.join(str(s) for s in scales)}")
    return runs[runs[ax_name] == scale], scale


def at_lr(runs: pd.DataFrame, lr) -> pd.DataFrame:
    """The runs at learning rate ``lr`` (None: all), matched to 1e-9 relative (grids are 2^k floats)."""
    if lr is None:
        return runs
    hit = runs[np.isclose(runs["lr"].astype(float), float(lr), rtol=1e-9, atol=0)]
    if hit.empty:
        lrs = sorted(runs["lr"].dropna().unique())
        raise UserError(f"--lr {lr:g}: no runs at that learning rate here; lrs: "
                        f"{', '.join(f'{v:g}' for v in lrs)}")
    return hit


def best_lr_runs(runs: pd.DataFrame, metric: str, keys: list[str]) -> pd.DataFrame:
    """Per ``keys`` group, the runs at the LR with the lowest seed-mean final metric among the
    finished runs (groups where none finished are left out)."""
    col = metric_column(metric, runs)
    done = runs[(runs["status"] == "done") & np.isfinite(pd.to_numeric(runs[col], errors="coerce").astype(float))]
    if done.empty:
        return done
    means = done.groupby([*keys, "lr"], sort=False)[col].mean().reset_index()
    best = means.loc[means.groupby(keys, sort=False)[col].idxmin(), [*keys, "lr"]]
    return runs.merge(best, on=[*keys, "lr"])
