"""``lrtransfer coordcheck``'s output: a ``CoordCheck`` as markdown (the verdicts and the worst
slope per quantity, with its interval) or JSON (every fitted slope)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .render import FORMATS as REPORT_FORMATS, check_format, pow2, to_json

FORMATS = REPORT_FORMATS[:2]   # markdown and JSON: the slopes are no single table for a CSV

if TYPE_CHECKING:  # the check itself trains (torch); its output renders without it
    from ..analysis.coordcheck import CoordCheck


def _num(x) -> float | None:
    return float(x) if math.isfinite(x) else None


def to_dict(cc: CoordCheck) -> dict:
    """The check as JSON-able data: per row series, atom, step, quantity, slope (the mean over
    seeds), se, lo, hi (its confidence interval; None when not finite) and pass; the verdicts,
    LRs, widths, seeds, steps, margin, confidence and notes."""
    rows = [{"series": r["series"], "atom": r["atom"], "step": int(r["step"]), "quantity": r["quantity"],
             "slope": _num(r["slope"]), "se": _num(r["se"]), "lo": _num(r["lo"]), "hi": _num(r["hi"]),
             "pass": bool(r["pass"])}
            for r in cc.slopes.to_dict("records")]
    return {"rows": rows, "verdict": {s: bool(v) for s, v in cc.verdict.items()},
            "lr": dict(cc.lrs), "widths": {s: list(w) for s, w in cc.widths.items()},
            "seeds": {s: [int(x) for x in v] for s, v in cc.seeds.items()},
            "steps": cc.steps, "margin": cc.margin, "confidence": cc.confidence, "notes": dict(cc.notes)}


def _slope(r) -> str:
    if not (math.isfinite(r["lo"]) and math.isfinite(r["hi"])):
        return "nan"
    return f"{r['slope']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]"


def to_markdown(cc: CoordCheck) -> str:
    """Per series: the verdict, then per quantity the worst slope with its interval (the row
    closest to failing, or failing by most), where it is and how many rows fail."""
    from ..analysis.coordcheck import QUANTITIES, violation
    m, conf = f"{cc.margin:g}", f"{100 * cc.confidence:g}%"
    lines = [f"Coordinate check: slope of log RMS vs log width over {cc.steps} steps on one fixed batch, "
             f"fitted per seed; a row passes when the seeds' {conf} interval of the slope lies within "
             f"[-{m}, {m}] (the logits and their change: its upper end <= {m}; ΔW·x of every atom: "
             f"two-sided).", ""]
    for name, ok in cc.verdict.items():
        s = cc.slopes[cc.slopes["series"] == name]
        widths = ", ".join(str(w) for w in cc.widths[name])
        lines += [f"### {name}: **{'PASS' if ok else 'FAIL'}** (lr {pow2(cc.lrs[name])}, widths {widths}, "
                  f"{len(cc.seeds[name])} seeds)", "",
                  f"| quantity | worst slope [{conf} interval] | atom | step | failing rows |", "|---|---|---|---|---|"]
        for q in QUANTITIES:
            g = s[s["quantity"] == q]
            if g.empty:
                continue
            worst = g.loc[violation(g).idxmax()]
            lines.append(f"| {q} | {_slope(worst)} | {worst['atom']} | {int(worst['step'])} | "
                         f"{int((~g['pass']).sum())}/{len(g)} |")
        for note in cc.notes.get(name, []):
            lines += ["", f"note: {note}"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render(cc: CoordCheck, format: str = "markdown") -> str:
    """The check in ``format`` (``FORMATS``)."""
    check_format(format, FORMATS)
    return to_json(to_dict(cc)) if format == "json" else to_markdown(cc)
