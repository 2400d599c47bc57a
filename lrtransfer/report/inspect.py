"""The ``inspect`` table: each weight's role and μP multipliers, as markdown or JSON."""
from __future__ import annotations

from .render import Column, markdown_table, num, to_json

FORMATS = ("markdown", "json")


def _mult(x) -> str:
    return "" if x is None else num(x, 4)


COLUMNS = [Column("name", "parameter"), Column("shape", "shape", lambda s: "×".join(map(str, s))),
           Column("role", "role"), Column("found", "from"),
           Column("fan_in_mult", "fan-in ×", _mult, True), Column("fan_out_mult", "fan-out ×", _mult, True),
           Column("init_mult", "μP init ×", _mult, True), Column("forward_mult", "μP forward ×", _mult, True),
           Column("lr_mult", "μP LR ×", _mult, True), Column("tied", "tied to", lambda t: ", ".join(t))]


def render(header: dict, rows: list[dict], format: str = "markdown") -> str:
    """``header`` (what was built: builder, widths, rule) above the table of ``rows``
    (``models.table.role_table``)."""
    if format == "json":
        return to_json({**header, "weights": rows})
    lines = [f"- {k}: {v}" for k, v in header.items()]
    return "\n".join(lines) + "\n\n" + markdown_table(rows, COLUMNS)
