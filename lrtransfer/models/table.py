"""What a model's weights are to lrtransfer: one row per atom (``lrtransfer inspect``)."""
from __future__ import annotations

from ..modular import Module


def role_table(model: Module) -> list[dict]:
    """Per atom: its parameter name, shape, role and how the role was decided (``shapes``,
    ``set`` in [model] roles, or ``algebra``), the names it is tied to, and, once μP has been
    applied (``param.apply_param`` / ``wrapped.apply_mup``), its fan-in and fan-out width
    multipliers against the base model and μP's init, forward and LR multipliers."""
    weights = getattr(model, "weights", None)
    names = {id(p): n for n, p in model.named_parameters()}
    rows = []
    for k, (atom, role) in enumerate(zip(model.atoms(), model.roles())):
        w = weights[k] if weights is not None else None
        mup = getattr(atom, "mup", None) or {}
        rows.append({"name": w.name if w else names.get(id(atom.weight), f"atom {k}"),
                     "shape": list(atom.weight.shape), "role": role,
                     "found": w.found if w else "algebra",
                     "tied": list(w.aliases[1:]) if w else [],
                     "fan_in_mult": mup.get("fan_in_mult"), "fan_out_mult": mup.get("fan_out_mult"),
                     "init_mult": mup.get("init"), "forward_mult": mup.get("forward"), "lr_mult": mup.get("lr")})
    return rows
