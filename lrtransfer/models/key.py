"""A run key's declaration: its type, default, bounds and help.

Model families, optimizers and the run spec declare their keys with it; it lives in the
lowest stage that declares keys so that all of them can import it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Key:
    name: str
    type: type                       # int, float, bool or str
    default: object
    help: str
    owner: str                       # models, optim, train, data
    section: str = "train"           # model or train
    choices: tuple | None = None
    minimum: float | None = None     # inclusive lower bound
    positive: bool = False           # strictly > 0
