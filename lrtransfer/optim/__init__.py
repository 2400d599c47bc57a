"""Update rules (SGD, Adam, sign, Muon; registry.py) applied plain, normalized or dualized in
the modular norm, and LR schedules."""
from .constraint import CONSTRAINTS, Sphere, elr_for_lr, lr_for_elr, scale_invariant_atoms, sphere_radius
from .muon import Muon
from .optimizer import UPDATES, Diverged, Optimizer, make_optimizer
from .registry import OPTIMIZERS, OptimizerEntry, option_keys, register
from .rules import SGD, Adam, Sign
from .schedule import SCHEDULES, Schedule

__all__ = ["Optimizer", "make_optimizer", "Diverged", "SGD", "Adam", "Sign", "Muon", "OPTIMIZERS",
           "OptimizerEntry", "register", "option_keys", "UPDATES", "Schedule", "SCHEDULES", "CONSTRAINTS",
           "Sphere", "sphere_radius", "lr_for_elr", "elr_for_lr", "scale_invariant_atoms"]
