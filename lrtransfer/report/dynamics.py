"""The training-dynamics sections of a report: regimes and lr·wd invariance as JSON-able
summaries (the report's JSON) and as markdown, from ``analysis.dynamics``'s tables."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..analysis.dynamics import (LABELS, LRWD_ALPHA, LRWD_C_RANGE, LRWD_DEGREE, LRWD_METRICS, RegimeOptions,
                                 default_x, lrwd_cells, lrwd_table, regime_boundaries, regimes, scale_keys,
                                 seed_boundaries, with_dynamics_columns, x_values)
from ..analysis.dynamics import CONDITION_SETUP, condition_table
from ..run.provenance import MODEL_SCALE_AXES, SCALE_AXES
from .render import num, pct, pow2, records, signed
from .transfer import label


def seed_note(row: dict, x: str) -> str:
    """What to know about one seed's regimes: those never met, the unsettled runs, and where they
    step back along x."""
    notes = []
    if row.get("unsettled"):
        notes.append(f"unsettled at {x}=" + ", ".join(pow2(v) for v in row["unsettled"]))
    if row["absent"]:
        notes.append("no " + " / ".join(row["absent"]) + " runs")
    if row["steps_back"]:
        notes.append("out of order: " + ", ".join(f"{name} at {x}={pow2(at)} above {below} at {pow2(below_at)}"
                                                  for name, at, below, below_at in row["steps_back"]))
    return "; ".join(notes)


def _group_notes(per_seed: pd.DataFrame) -> list[str]:
    """Per group of ``regime_boundaries`` (same keys, same order): its seeds' notes, each with
    the seeds it holds for."""
    keys = [k for k in per_seed.columns if k in ("series", *SCALE_AXES)]
    out = []
    for _, g in per_seed.groupby(keys, sort=False, dropna=False):
        notes = g.groupby("note", sort=False)["seed"].apply(list)
        out.append("; ".join(f"seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}: {n}"
                             for n, s in notes.items() if n))
    return out


def regime_summary(runs: pd.DataFrame, curves: pd.DataFrame, diagnostics: pd.DataFrame | None = None, *,
                   x: str | None = None, options: RegimeOptions = RegimeOptions()) -> dict:
    """Regimes, per-seed and summarised boundaries, JSON-able. ``x`` defaults to ``default_x``.
    Keys: x, window, alpha, blocks, counts (runs per label, unsettled included), runs
    (``regimes`` rows with series, seed, scale and x), seed_boundaries, boundaries (each with a
    ``note``)."""
    table = regimes(runs, curves, diagnostics, options)
    x = x or default_x(runs)
    full = with_dynamics_columns(runs).assign(_x=x_values(runs, x))
    # the model's size always, the other scale-like keys where they vary
    shown = [k for k in SCALE_AXES if k in MODEL_SCALE_AXES or k in scale_keys(runs)]
    cols = [c for c in ("run_id", "series", *shown, "seed", "status") if c in full]
    per_run = full[cols + ["_x"]].rename(columns={"_x": x}).merge(table, on="run_id")
    per_seed = seed_boundaries(runs, table, x)
    per_seed["note"] = [seed_note(row, x) for row in per_seed.to_dict("records")]
    boundaries = regime_boundaries(runs, table, x)
    boundaries["note"] = _group_notes(per_seed)
    return {"x": x, "window": options.window, "alpha": options.alpha, "blocks": options.blocks,
            "counts": {name: int((table["regime"] == name).sum()) for name in LABELS},
            "runs": records(per_run),
            "seed_boundaries": records(per_seed.drop(columns=["absent", "steps_back", "unsettled"])),
            "boundaries": records(boundaries)}


def _octave_range(row: dict, name: str) -> str:
    lo, hi = row.get(f"{name}_log2_min"), row.get(f"{name}_log2_max")
    return "—" if lo is None or hi is None else f"[{lo:.2f}, {hi:.2f}]"


def _boundary_sentence(b: dict, x: str) -> str:
    """Where one group's regimes switch, in a sentence."""
    def at(name):
        if b[f"{name}_n"] == 0:
            return "not seen"
        std = b[f"{name}_log2_std"]
        return (f"{x} ≈ {pow2(b[name])} (log2 {b[f'{name}_log2']:.2f}"
                + (f" ± {std:.2f} octaves" if std is not None else "") + f", {b[f'{name}_n']} seed"
                + ("s" if b[f"{name}_n"] != 1 else "") + ")")
    order = "in order" if b["monotone"] else f"out of order in {b['n_out_of_order']} seed(s)"
    return (f"- {label(b, SCALE_AXES)}: converge→chaotic at {at('to_chaotic')}, chaotic→diverge at "
            f"{at('to_diverge')}; regimes {order}" + (f" ({b['note']})" if b["note"] else "") + ".")


def _evidence_table(summary: dict) -> list[str]:
    """Per (group, x): the regimes of its seeds and the evidence, seed means."""
    x = summary["x"]
    per_run = pd.DataFrame(summary["runs"])
    keys = [k for k in SCALE_AXES if k in per_run and per_run.groupby("series")[k].nunique().max() > 1]
    keys = ["series", *keys]
    lines = [f"| series | {x} | regimes (seeds) | late loss | late slope (p) | eff. grad norm "
             f"| angle (rad/step) | chance loss |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    ordered = per_run.sort_values([*keys, x], kind="stable")   # each group's rows along x
    for gkey, g in ordered.groupby([*keys, x], sort=False):
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        names = dict(zip(keys, gkey))
        regs = g["regime"].value_counts()
        text = ", ".join(f"{name} {regs[name]}" for name in LABELS if name in regs)
        lines.append(f"| {label(names, keys[1:])} | {pow2(gkey[-1])} | {text} | {num(_mean(g['late_loss']))} "
                     f"| {signed(_mean(g['late_slope']), 3)} ({_p_range(g['slope_p'])}) "
                     f"| {num(_mean(g['late_grad']))} | {num(_mean(g['late_angle']), 5)} "
                     f"| {num(_mean(g['chance_loss']))} |")
    return lines


def regime_report(summary: dict) -> str:
    """Markdown for a ``regime_summary``: one sentence per group, the boundary table, then the
    regime of every (group, x) with the evidence (seed means)."""
    x = summary["x"]
    counts = summary["counts"]
    lines = ["## Regimes", "",
             f"Runs by regime: {counts['converge']} converge, {counts['chaotic']} chaotic, "
             f"{counts['diverge']} diverge, {counts['unsettled']} unsettled. Each run is read from the trends "
             f"of its last {summary['window']:g} of logged points ({summary['blocks']} block means, tests at "
             f"level {summary['alpha']:g}): converge while ln(loss) falls against ln(step); diverge when the "
             f"loss is not below chance (ln classes) nor falling and the ELR lies above the seed's converge "
             f"and chaotic runs (or the run diverged); chaotic when the loss is flat below chance and above "
             f"the seed's converged level (its converge runs' lowest late loss) and the effective gradient "
             f"norm (else the angle per step) is flat and above 0; unsettled otherwise "
             f"(docs/analysis.md §8).", ""]
    lines += [_boundary_sentence(b, x) for b in summary["boundaries"]]
    lines += ["", f"| series | seeds | converge→chaotic {x} | log2 (min, max) | chaotic→diverge {x} "
                  f"| log2 (min, max) | in order |", "|---|---:|---:|---:|---:|---:|---|"]
    for b in summary["boundaries"]:
        lines.append(f"| {label(b, SCALE_AXES)} | {b['n_seeds']} | {pow2(b['to_chaotic'])} | {_octave_range(b, 'to_chaotic')} "
                     f"| {pow2(b['to_diverge'])} | {_octave_range(b, 'to_diverge')} "
                     f"| {'yes' if b['monotone'] else 'no'} |")
    lines += [""] + _evidence_table(summary)
    return "\n".join(lines) + "\n"


def _p_range(values) -> str:
    """The largest p of a group's runs ("p ≤ …"), the one that least rejects."""
    v = pd.to_numeric(pd.Series(list(values)), errors="coerce").astype(float)
    v = v[np.isfinite(v)]
    return "p —" if not len(v) else f"p ≤ {max(float(v.max()), 0.001):.3f}" if v.max() >= 0.001 else "p < 0.001"


def _mean(values) -> float:
    v = pd.to_numeric(pd.Series(list(values)), errors="coerce").astype(float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan


def lrwd_invariance(runs: pd.DataFrame, curves: pd.DataFrame, *, early: float = 0.1, metric: str = "train_loss",
                    ci: float = 0.9, n_boot: int = 1000, seed: int = 0) -> dict:
    """The lr·wd invariance numbers (docs/analysis.md §8), JSON-able. Keys: metric, column, early,
    ci, n_boot, seed, degree, c_range, alpha, n_runs, n_diverged, n_failed, n_zero_wd, skipped
    (groups without a usable grid), groups (``lrwd_table`` rows, CIs as ``<name>_c_ci: [lo, hi]``),
    cells (``lrwd_cells``). UserError when no group has both lr and weight_decay varying over
    enough cells."""
    table, counts = lrwd_table(runs, curves, early=early, metric=metric, ci=ci, n_boot=n_boot, seed=seed)
    cells = lrwd_cells(runs, curves, early=early, metric=metric)
    return {"metric": metric, "column": LRWD_METRICS[metric], "early": early, "ci": ci, "n_boot": n_boot,
            "seed": seed, "degree": LRWD_DEGREE, "c_range": list(LRWD_C_RANGE), "alpha": LRWD_ALPHA, **counts,
            "groups": records(table), "cells": records(cells)}


def _c_interval(group: dict, name: str) -> str | None:
    """c's CI as "[lo, hi]", or None without one (one seed)."""
    lo, hi = group[f"{name}_c_ci"]
    return None if lo is None or hi is None else f"[{_c(lo)}, {_c(hi)}]"


def _f_test(group: dict, name: str) -> str:
    """The lack-of-fit F with its degrees of freedom and p, or why there is none."""
    f, p = group[f"{name}_lof_f"], group[f"{name}_lof_p"]
    if f is None or p is None:
        one_seed = group[f"{name}_pe_df"] == 0
        return "no lack-of-fit test" + (" (one seed per cell: no seed noise to compare with)" if one_seed else "")
    df = f"({group[f'{name}_lof_df']:g}, {group[f'{name}_pe_df']:g})"
    p = _p(p)
    return f"lack-of-fit F{df} = {num(f, 2)}, p {p if p.startswith('<') else f'= {p}'}"


def _c(x) -> str:
    text = num(x, 2)
    return text.lstrip("-") if text not in ("—", "inf", "-inf") and float(text) == 0 else text


def _share(x) -> str:
    return "—" if x is None else f"{x:.2%}"


def _p(p) -> str:
    return "—" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _c_text(group: dict, name: str, level: str) -> str:
    interval = _c_interval(group, name)
    bound = "at the search bound; " if group[f"{name}_c_at_bound"] else ""
    return f"c = {_c(group[f'{name}_c'])} ({bound}{'no CI' if interval is None else f'{level} CI {interval}'})"


def lrwd_report(result: dict) -> str:
    """Markdown for an ``lrwd_invariance`` result: one sentence per group, what the statistic
    measures, then the table."""
    p = pct(result["ci"])
    lo, hi = result["c_range"]
    lines = ["## lr·wd invariance", ""]
    for g in result["groups"]:
        lines.append(f"- {label(g, SCALE_AXES)}: late {result['metric'].replace('_', ' ')} follows lr·wd: "
                     f"**{g['late_verdict']}** — {_c_text(g, 'late', p)}, the 1-D fit leaves "
                     f"{_share(g['late_unexplained'])} of the cell means' variance, "
                     f"{_f_test(g, 'late')}; early loss follows lr: **{g['early_verdict']}** — "
                     f"{_c_text(g, 'early', p)}, {_f_test(g, 'early')}; {g['n_cells']} (lr, wd) cells, "
                     f"{g['n_seeds']}+ seeds each.")
    excluded = [f"{result[k]} {k[2:].replace('_', ' ')}" for k in ("n_diverged", "n_failed") if result[k]]
    if result["n_zero_wd"]:
        excluded.append(f"{result['n_zero_wd']} with weight_decay 0")
    lines += ["", (f"c measures which combination of the two the loss follows: the loss is fitted as one smooth "
                   f"function of u = log2 lr + c·log2 wd (a degree-{result['degree']} polynomial in u, least "
                   f"squares on the seed-mean cells, c ∈ [{lo:g}, {hi:g}] minimising the residuals), so c = 1 is "
                   f"lr·wd, c = 0 lr alone, c = 2 lr·wd², a bound wd alone. Late loss = {result['column']}; "
                   f"early loss = mean train loss over the first {result['early']:g} of the steps. {p} CI of c "
                   f"from {result['n_boot']} seed resamples; the lack-of-fit F compares the cell means' scatter "
                   f"around the fit with the seeds' scatter within cells. Verdict: fails when that is significant "
                   f"(p < {result['alpha']:g}) or the CI excludes the stated c (1 late, 0 early); holds when the CI "
                   f"holds it but not the other one and the fit explains more than seed noise; else inconclusive. "
                   f"Runs: {result['n_runs']}" + (f", excluded {', '.join(excluded)}" if excluded else "") + "."
                   + (f" Skipped: {'; '.join(result['skipped'])}." if result["skipped"] else "")), "",
              f"| series | late: c | {p} CI | unexplained | lack-of-fit F | p | verdict "
              f"| early: c | {p} CI | lack-of-fit F | p | verdict | cells |",
              "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|"]
    for g in result["groups"]:
        late, early = (_c_interval(g, name) or "—" for name in ("late", "early"))
        lines.append(f"| {label(g, SCALE_AXES)} | {_c(g['late_c'])} | {late} | {_share(g['late_unexplained'])} "
                     f"| {num(g['late_lof_f'], 2)} | {_p(g['late_lof_p'])} | {g['late_verdict']} "
                     f"| {_c(g['early_c'])} | {early} | {num(g['early_lof_f'], 2)} | {_p(g['early_lof_p'])} "
                     f"| {g['early_verdict']} | {g['n_cells']} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- conditioning

def condition_summary(runs: pd.DataFrame, diagnostics: pd.DataFrame, metric: str = "train_loss") -> dict:
    """``condition_table`` as JSON-able records, with the metric it ranked LRs by. Keys: metric,
    axis (the first scale-like key that varies: width, depth, batch_size, ...), rows."""
    table = condition_table(runs, diagnostics, metric)
    axis = next((a for a in SCALE_AXES if a in table), None)
    return {"metric": metric, "axis": axis, "rows": records(table)}


def _kappa(x) -> str:
    return num(x, 1) if x is None or not np.isfinite(x) or x < 1e4 else f"{x:.2g}"


def condition_report(summary: dict, labels: dict | None = None) -> str:
    """Markdown for a ``condition_summary``: per series, parametrization and scale, the best LR's
    loss and the condition numbers of its matrices at the first and the last logged step.
    ``labels``: display names for series."""
    labels = labels or {}
    axis, rows = summary["axis"], summary["rows"]
    firsts = sorted({r["first_step"] for r in rows})
    first = ("the init (step 0)" if firsts == [0] else
             f"the first logged step (after {', '.join(map(str, firsts))} update{'s' if firsts != [1] else ''}; "
             f"the diagnostics hold no step-0 row)")
    setup = [c for c in CONDITION_SETUP if rows and c in rows[0]]
    scale_head = f" {axis} |" if axis else ""
    lines = ["## Condition numbers at the best LR", "",
             f"σ_max/σ_min (exact, SVD) of the matrices the forward pass uses (the conditioned weight "
             f"where condition is on), at each series' best seed-mean LR by {summary['metric'].replace('_', ' ')}"
             + (f" per {axis}" if axis else "") + f"; first: at {first}, last: at the last logged step. "
             f"Hidden: median (max) over the hidden matrices; input: the first layer; head: the last; "
             f"all averaged over seeds.", "",
             "| series |" + "".join(f" {c} |" for c in setup) + scale_head
             + " best lr | loss | hidden median, first | hidden median, last | hidden max, last "
               "| input, first | input, last | head, last |",
             "|---|" + "---|" * len(setup) + ("---:|" if axis else "") + "---:|" * 8]
    for r in rows:
        cells = [labels.get(r["series"], str(r["series"])), *(str(r[c]) for c in setup)]
        if axis:
            cells.append(str(r[axis]))
        cells += [pow2(r["lr"]), num(r["loss"], 3), _kappa(r["median_first"]), _kappa(r["median"]),
                  _kappa(r["max"]), _kappa(r["input_first"]), _kappa(r["input"]), _kappa(r["output"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
