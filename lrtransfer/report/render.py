"""Renderers: numbers to text, one implementation for the report, tune and compare.

Pure formatting, no analysis: cell formatters (``num``, ``signed``, ``pow2``, ``interval``,
``pct``), a markdown table from rows and ``Column`` specs, strict JSON records (NaN ->
``null``, ±inf -> ``"inf"``/``"-inf"``, CI pairs ``<name>_lo``/``<name>_hi`` -> one list
``<name>_ci: [lo, hi]``) and CSV with rounded floats.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from ..analysis.common import missing
from ..errors import UserError

FORMATS = ("markdown", "json", "csv")   # what every report can be written as
CSV_DIGITS = 6   # significant digits of floats in CSV and JSON tables that are not the report's own


def check_format(format: str, allowed: tuple = FORMATS) -> None:
    """UserError naming ``--format`` unless it is one of ``allowed``."""
    if format not in allowed:
        raise UserError(f"--format {format!r}: allowed: {', '.join(allowed)}")


def json_value(v):
    """A strict-JSON scalar: NaN/missing -> None, ±inf -> "inf"/"-inf", numpy -> Python."""
    if missing(v):
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    return v if isinstance(v, str) else str(v)


def records(df: pd.DataFrame) -> list[dict]:
    """Strict-JSON rows; each ``<name>_lo``/``<name>_hi`` CI pair becomes ``<name>_ci: [lo, hi]``
    (``<name>`` already ending in ``_ci`` keeps its name)."""
    out = []
    for row in df.astype(object).to_dict("records"):
        rec = {}
        for k, v in row.items():
            k = str(k)
            if k.endswith("_lo") and f"{k[:-3]}_hi" in row:
                stem = k[:-3]
                rec[stem if stem.endswith("_ci") else f"{stem}_ci"] = [json_value(v), json_value(row[f"{stem}_hi"])]
            elif not (k.endswith("_hi") and f"{k[:-3]}_lo" in row):
                rec[k] = json_value(v)
        out.append(rec)
    return out


def to_json(doc) -> str:
    """Strict JSON text (no NaN), indented, newline-terminated."""
    return json.dumps(doc, indent=2, allow_nan=False, default=json_value) + "\n"


def rounded(df: pd.DataFrame, digits: int = CSV_DIGITS) -> pd.DataFrame:
    """Float columns to ``digits`` significant digits (inf and NaN kept)."""
    def sig(x):
        if not isinstance(x, (float, np.floating)) or not math.isfinite(x) or x == 0:
            return x
        return round(float(x), digits - 1 - int(math.floor(math.log10(abs(x)))))
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].map(sig)
    return out


def to_csv(df: pd.DataFrame, digits: int | None = CSV_DIGITS) -> str:
    """CSV text; floats to ``digits`` significant digits (None: as stored)."""
    return (rounded(df, digits) if digits else df).to_csv(index=False)


def num(x, digits: int = 4) -> str:
    if missing(x):
        return "—"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}f}"


def signed(x, digits: int = 2) -> str:
    """``+0.05`` / ``−0.31`` (a real minus sign), for numbers whose sign is the point."""
    if missing(x) or math.isinf(x):
        return num(x, digits)
    text = f"{abs(x):.{digits}f}"
    if float(text) == 0:
        return text
    return ("−" if x < 0 else "+") + text


def plus(x, digits: int = 2) -> str:
    """``+0.05`` / ``-0.31`` (ASCII sign, as the README's tables write drifts); "—" when missing."""
    if missing(x):
        return "—"
    return f"{x:+.{digits}f}"


def pow2(x) -> str:
    """An LR as 2^k (k with 2 decimals when off the power-of-two grid)."""
    if missing(x) or not np.isfinite(x) or x <= 0:
        return "—"
    k = math.log2(x)
    return f"2^{round(k)}" if abs(k - round(k)) < 1e-9 else f"2^{k:.2f}"


def interval(lo, hi, fmt: Callable = num) -> str:
    return "—" if missing(lo) or missing(hi) else f"[{fmt(lo)}, {fmt(hi)}]"


def pct(ci: float) -> str:
    return f"{ci * 100:g}%"


def seconds(x) -> str:
    """Wall time, rounded to what a reader compares: 0.42 s, 12.3 s, 4.1 min."""
    if missing(x):
        return "—"
    return f"{x:.2g} s" if x < 1 else f"{x:.1f} s" if x < 120 else f"{x / 60:.1f} min"


def flops(x) -> str:
    """A FLOP count with an SI prefix: 1.23 GFLOP."""
    if missing(x):
        return "—"
    for value, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= value:
            return f"{x / value:.3g} {prefix}FLOP"
    return f"{x:.3g} FLOP"


@dataclass(frozen=True)
class Column:
    """One markdown column: the row key, its header, how a value prints, its alignment."""
    key: str
    header: str
    fmt: Callable = str
    right: bool = False


def headed(columns: list[Column], **words) -> list[Column]:
    """``columns`` with ``{word}`` placeholders in their headers filled in."""
    return [Column(c.key, c.header.format(**words), c.fmt, c.right) for c in columns]


def markdown_table(rows: list[dict], columns: list[Column]) -> str:
    """A GitHub markdown table of ``rows`` (dicts), one line per row, no trailing newline."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |",
             "|" + "|".join("---:" if c.right else "---" for c in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c.fmt(row[c.key]) for c in columns) + " |")
    return "\n".join(lines)
