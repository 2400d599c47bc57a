"""``lrtransfer coordcheck``'s output: a ``CoordCheck`` as markdown (the verdicts and the worst
slope per quantity) or JSON (every fitted slope)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .render import FORMATS as REPORT_FORMATS, check_format, pow2, to_json

FORMATS = REPORT_FORMATS[:2]   # markdown and JSON: the slopes are no single table for a CSV

if TYPE_CHECKING:  # the check itself trains (torch); its output renders without it
    from ..analysis.coordcheck import CoordCheck


def to_dict(cc: CoordCheck) -> dict:
    """The check as JSON-able data: per row series, atom, step, quantity, slope (None when not
    finite) and pass; the verdicts, LRs, widths, steps, threshold and notes."""
    rows = [{"series": r["series"], "atom": r["atom"], "step": int(r["step"]), "quantity": r["quantity"],
             "slope": float(r["slope"]) if math.isfinite(r["slope"]) else None, "pass": bool(r["pass"])}
            for r in cc.slopes.to_dict("records")]
    return {"rows": rows, "verdict": {s: bool(v) for s, v in cc.verdict.items()},
            "lr": dict(cc.lrs), "widths": {s: list(w) for s, w in cc.widths.items()},
            "steps": cc.steps, "threshold": cc.threshold, "notes": dict(cc.notes)}


def to_markdown(cc: CoordCheck) -> str:
    """Per series: the verdict, then per quantity the worst slope (the row closest to failing,
    or failing by most), where it is and how many rows fail."""
    from ..analysis.coordcheck import QUANTITIES, violation
    lines = [f"Coordinate check: slope of log RMS vs log width over {cc.steps} steps on one fixed batch; "
             f"a row passes at |slope| <= {cc.threshold:g} (the logits and their change: "
             f"slope <= {cc.threshold:g}; ΔW·x of every atom: |slope|).", ""]
    for name, ok in cc.verdict.items():
        s = cc.slopes[cc.slopes["series"] == name]
        widths = ", ".join(str(w) for w in cc.widths[name])
        lines += [f"### {name}: **{'PASS' if ok else 'FAIL'}** (lr {pow2(cc.lrs[name])}, widths {widths})", "",
                  "| quantity | worst slope | atom | step | failing rows |", "|---|---|---|---|---|"]
        for q in QUANTITIES:
            g = s[s["quantity"] == q]
            if g.empty:
                continue
            worst = g.loc[violation(g).idxmax()]
            value = "nan" if not math.isfinite(worst["slope"]) else f"{worst['slope']:+.3f}"
            lines.append(f"| {q} | {value} | {worst['atom']} | {int(worst['step'])} | "
                         f"{int((~g['pass']).sum())}/{len(g)} |")
        for note in cc.notes.get(name, []):
            lines += ["", f"note: {note}"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render(cc: CoordCheck, format: str = "markdown") -> str:
    """The check in ``format`` (``FORMATS``)."""
    check_format(format, FORMATS)
    return to_json(to_dict(cc)) if format == "json" else to_markdown(cc)
