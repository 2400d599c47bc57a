"""Sweeps: experiment files, the grid as an optuna study, runs, workers, tuning.

The names below load on first use, so that a light submodule (``sweep.search``, whose names
the CLI's help shows) can be imported without the training stack behind the others.
"""
from importlib import import_module

_EXPORTS = {"Experiment": "config", "RunConfig": "config", "experiment_from_dict": "config",
            "load_experiment": "config", "run_id": "config", "Queue": "queue", "open_storage": "queue",
            "redact": "queue", "Plan": "sweep", "plan": "sweep", "prepare": "sweep", "results_dir_for": "sweep",
            "run_sweep": "sweep", "work": "worker", "Reproduction": "reproduce", "run_refinement": "rounds",
            "refinement_estimate": "rounds", "RefinementResult": "rounds", "parse_budget": "refine",
            "plan_round": "refine"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
