"""Update rules (SGD with momentum, Adam), plain or normalized in the modular norm, and LR schedules."""
from .optimizer import Diverged, Optimizer, make_optimizer
from .rules import RULES, SGD, Adam
from .schedule import SCHEDULES, Schedule

__all__ = ["Optimizer", "make_optimizer", "Diverged", "SGD", "Adam", "RULES", "Schedule", "SCHEDULES"]
