"""Optimizers by name: each one's rule, keys, μP rule and batching, in one record.

An optimizer is one ``OptimizerEntry`` passed to ``register``: the run spec lists its keys and
name, ``make_optimizer`` builds its rule, μP reads its ``mup`` rule, and bundles of cells
stack its steps when it is ``elementwise``. A rule's ``name`` attribute is its registry name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..models import MUP_RULES, Key
from .muon import Muon
from .rules import SGD, Adam, Sign


@dataclass(frozen=True)
class OptimizerEntry:
    name: str
    make: Callable            # (model, options) -> rule; options: its keys' values and ns_steps
    keys: tuple[Key, ...] = ()
    note: str = ""            # shown after its name in the `optimizer` key's help
    mup: str | None = None    # μP's LR rule for it (models.MUP_RULES); None: param = "mup" refuses it
    elementwise: bool = False  # the same arithmetic per element: bundles stack its cells' steps
    plain_only: str = ""      # why it takes only update = "plain" ("": any update)
    newton_schulz: bool = False  # its direction runs Newton–Schulz, in the forward's precision


OPTIMIZERS: dict[str, OptimizerEntry] = {}


def register(entry: OptimizerEntry) -> OptimizerEntry:
    """Make ``entry`` an allowed ``optimizer``; its keys become run keys."""
    if entry.name in OPTIMIZERS:
        raise ValueError(f"optimizer {entry.name!r} is already registered")
    if entry.mup is not None and entry.mup not in MUP_RULES:
        raise ValueError(f"optimizer {entry.name!r}: mup must be one of {', '.join(MUP_RULES)} or None")
    declared = {k.name: k for e in OPTIMIZERS.values() for k in e.keys}
    for key in entry.keys:
        if key.name in declared and declared[key.name] != key:
            raise ValueError(f"optimizer {entry.name!r}: key {key.name!r} is declared differently by another optimizer")
    OPTIMIZERS[entry.name] = entry
    return entry


def option_keys() -> list[Key]:
    """Every registered optimizer's keys, once each, in registration order."""
    out: dict[str, Key] = {}
    for entry in OPTIMIZERS.values():
        for key in entry.keys:
            out.setdefault(key.name, key)
    return list(out.values())


def _key(name: str, default: float, help: str, **bounds) -> Key:
    return Key(name, float, default, help, "optim", **bounds)


EPS = _key("eps", 1e-8, "adam epsilon", minimum=0)

register(OptimizerEntry("sgd", lambda model, o: SGD(momentum=o["momentum"]),
                        keys=(_key("momentum", 0.9, "sgd momentum", minimum=0),), mup="sgd", elementwise=True))
register(OptimizerEntry("adam", lambda model, o: Adam(betas=(o["beta1"], o["beta2"]), eps=o["eps"]),
                        keys=(_key("beta1", 0.9, "adam beta1", minimum=0), _key("beta2", 0.99, "adam beta2", minimum=0),
                              EPS), mup="adam", elementwise=True))
register(OptimizerEntry("sign", lambda model, o: Sign(), note="ℓ∞ steepest descent", mup="adam", elementwise=True))
register(OptimizerEntry(
    "muon", lambda model, o: Muon([r == "hidden" for r in model.roles()], momentum=o["muon_momentum"],
                                  ns_steps=o["ns_steps"] or 5, adam_ratio=o["muon_adam_ratio"], eps=o["eps"]),
    keys=(EPS, _key("muon_momentum", 0.95, "muon: Nesterov momentum of the hidden weights", minimum=0),
          _key("muon_adam_ratio", 0.015, "muon: Adam's LR on embeddings, input and head as a fraction of lr",
               positive=True)),
    mup="muon", plain_only="orthogonalizes its own steps", newton_schulz=True))
