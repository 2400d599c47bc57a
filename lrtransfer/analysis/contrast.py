"""Contrasts between methods: does one series' optimum move less with scale than another's?

The claim the normalization papers make is comparative — normalized updates transfer *better
than* plain ones — so it is tested as a difference, not read off two separate verdicts. For a
pair of series (a, b) on the same axis and group keys, from the same seed bootstrap as their
verdicts (``transfer.analyse_with_replicates``):

* ``slope_diff`` = slope_a − slope_b (octaves of LR per octave of scale);
* ``drift_diff`` = drift_a − drift_b (pooled drifts over the common scale range, octaves);
* ``abs_drift_diff`` = |drift_a| − |drift_b|: positive when b's optimum moves less than a's.

Each is a linear combination of the per-scale fitted optima of both series, which are
resampled independently (each scale over its own seeds), so its CI is ``pooled_interval`` over
the union of the two series' scales. |drift| is linearised at the point estimates' signs (its
derivative), which is exact when neither drift's interval straddles 0. Treating the two series
as independent ignores any correlation from sharing seeds; a positive correlation would make
the true interval narrower, so the stated one errs wide. Docs: docs/analysis.md §4.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import UserError
from .transfer import pooled_interval

CONTRAST_COLUMNS = ("series_a", "series_b", "axis", "base_scale", "max_scale", "n_seeds",
                    "slope_a", "slope_b", "slope_diff", "slope_diff_ci_lo", "slope_diff_ci_hi",
                    "drift_a", "drift_b", "drift_diff", "drift_diff_ci_lo", "drift_diff_ci_hi",
                    "abs_drift_diff", "abs_drift_diff_ci_lo", "abs_drift_diff_ci_hi", "decided", "ci")


def parse_pairs(specs) -> list[tuple[str, str]]:
    """``["normed_adam:adam", ...]`` -> ``[("normed_adam", "adam"), ...]`` (``UserError`` naming
    --contrast for anything that is not two different names around one colon)."""
    pairs = []
    for spec in specs or []:
        parts = str(spec).split(":")
        if len(parts) != 2 or not all(p.strip() for p in parts) or parts[0].strip() == parts[1].strip():
            raise UserError(f"--contrast {spec!r}: allowed: SERIES_A:SERIES_B, two different series names, "
                            "e.g. --contrast normed_adam:adam")
        pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


def _law_coefficients(u: np.ndarray) -> np.ndarray:
    """The weights c_k with least-squares slope = Σ c_k y_k over points (u_k, y_k)."""
    du = u - u.mean()
    return du / (du @ du)


def _combination(terms: list[tuple[float, dict]], ci: float) -> tuple[float, float, float]:
    """Point and CI of Σ w·(slope of group) for (w, boot) terms, over every group's scales."""
    point = sum(w * float(boot["slope"][0]) for w, boot in terms)
    coef, fits, n_seeds = [], [], []
    for w, boot in terms:
        u = np.asarray(boot["log2_scales"], dtype=float)
        if len(u) < 2:
            return math.nan, math.nan, math.nan
        coef += list(w * _law_coefficients(u))
        fits += list(boot["fits"])
        n_seeds += list(boot["n_seeds_per_scale"])
    lo, hi = pooled_interval(point, np.array(coef), fits, n_seeds, ci)
    return point, lo, hi


def contrast_row(label_a: str, label_b: str, row_a: dict, row_b: dict, boot_a: dict, boot_b: dict,
                 ci: float = 0.9) -> dict:
    """One pair's contrast (``CONTRAST_COLUMNS``) from two verdict-table rows and their replicates.

    The drifts are compared over the scale range both series cover (the narrower of the two), so
    a series swept over more octaves is not charged for its extra range."""
    u_a, u_b = np.asarray(boot_a["log2_scales"], float), np.asarray(boot_b["log2_scales"], float)
    span = min(np.ptp(u_a), np.ptp(u_b)) if len(u_a) > 1 and len(u_b) > 1 else math.nan
    slope = _combination([(1.0, boot_a), (-1.0, boot_b)], ci)
    drift = _combination([(span, boot_a), (-span, boot_b)], ci)
    sign_a = math.copysign(1.0, float(boot_a["slope"][0])) if len(u_a) > 1 else math.nan
    sign_b = math.copysign(1.0, float(boot_b["slope"][0])) if len(u_b) > 1 else math.nan
    absolute = _combination([(span * sign_a, boot_a), (-span * sign_b, boot_b)], ci)
    lo, hi = absolute[1], absolute[2]
    return {"series_a": label_a, "series_b": label_b, "axis": row_a["axis"],
            "base_scale": max(row_a["base_scale"], row_b["base_scale"]),
            "max_scale": min(row_a["max_scale"], row_b["max_scale"]),
            "n_seeds": min(int(row_a["n_seeds"]), int(row_b["n_seeds"])),
            "slope_a": float(boot_a["slope"][0]), "slope_b": float(boot_b["slope"][0]),
            "slope_diff": slope[0], "slope_diff_ci_lo": slope[1], "slope_diff_ci_hi": slope[2],
            "drift_a": span * float(boot_a["slope"][0]), "drift_b": span * float(boot_b["slope"][0]),
            "drift_diff": drift[0], "drift_diff_ci_lo": drift[1], "drift_diff_ci_hi": drift[2],
            "abs_drift_diff": absolute[0], "abs_drift_diff_ci_lo": lo, "abs_drift_diff_ci_hi": hi,
            "decided": bool(math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)), "ci": float(ci)}


def _key(row: pd.Series, keys: list[str]) -> tuple:
    return tuple(None if pd.isna(row[k]) else row[k] for k in keys)


def contrasts(summary: pd.DataFrame, boots: list[dict], pairs=None, ci: float = 0.9) -> pd.DataFrame:
    """Contrasts between the series of one verdict table (``analyse_with_replicates``' summary and
    boots): the ``pairs`` named (``(a, b)`` or "a:b" strings) or, by default, every pair of
    series on the same axis and group keys, in order of first appearance. ``UserError`` for a
    named series the table lacks."""
    from .transfer import group_columns
    named = parse_pairs([p if isinstance(p, str) else ":".join(p) for p in pairs]) if pairs else None
    keys = ["axis", *group_columns(summary)]
    series = list(dict.fromkeys(summary["series"]))
    if named:
        missing = sorted({s for pair in named for s in pair} - set(series))
        if missing:
            raise UserError(f"--contrast: no series {', '.join(map(repr, missing))} in these results; "
                            f"allowed: {', '.join(series)}")
    rows = []
    positions = {}
    for i, row in summary.iterrows():
        positions.setdefault(_key(row, keys), {})[row["series"]] = i
    for key, by_series in positions.items():
        order = [s for s in series if s in by_series]
        wanted = named if named else [(a, b) for j, a in enumerate(order) for b in order[j + 1:]]
        for a, b in wanted:
            if a not in by_series or b not in by_series:
                continue
            ia, ib = by_series[a], by_series[b]
            row = contrast_row(a, b, summary.loc[ia].to_dict(), summary.loc[ib].to_dict(),
                               boots[summary.index.get_loc(ia)], boots[summary.index.get_loc(ib)], ci)
            rows.append({**row, **dict(zip(keys[1:], key[1:]))})
    return pd.DataFrame(rows, columns=[*CONTRAST_COLUMNS, *keys[1:]])


def headline(row: dict, names: dict | None = None) -> str:
    """One sentence: which series' optimum moves less and by how much, with its CI, e.g.
    "normed Adam drifts 3.06 octaves less than Adam [90% CI +0.91, +5.21]"."""
    names = names or {}
    a, b = names.get(row["series_a"], row["series_a"]), names.get(row["series_b"], row["series_b"])
    d, lo, hi = row["abs_drift_diff"], row["abs_drift_diff_ci_lo"], row["abs_drift_diff_ci_hi"]
    level = f"{100 * row['ci']:g}%"
    if not math.isfinite(d):
        return f"{a} vs {b}: no contrast (fewer than 2 scales with an optimum)"
    # state it from the side of the series that drifts less
    less, more, d, lo, hi = (b, a, d, lo, hi) if d >= 0 else (a, b, -d, -hi, -lo)
    verdict = "" if row["decided"] else " (not decided: the interval contains 0)"
    return (f"{less} drifts {d:.2f} octaves less than {more} over {row['axis']} {row['base_scale']:g}→"
            f"{row['max_scale']:g} [{level} CI {lo:+.2f}, {hi:+.2f}]{verdict}")
