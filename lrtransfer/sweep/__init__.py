"""Sweeps: experiment files, the grid as an optuna study, runs, workers."""
from .config import Experiment, RunConfig, experiment_from_dict, load_experiment, run_id
from .queue import Queue, open_storage, redact
from ..run.train import RunResult, execute
from .sweep import Plan, plan, prepare, results_dir_for, run_sweep
from .worker import work

__all__ = ["Experiment", "RunConfig", "load_experiment", "experiment_from_dict", "run_id", "Queue",
           "open_storage", "redact", "RunResult", "execute", "Plan", "plan", "prepare", "results_dir_for",
           "run_sweep", "work"]
