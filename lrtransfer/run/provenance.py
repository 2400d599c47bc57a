"""What a result is a function of: the run id (config and data hashed), the code fingerprint
and the git state (docs/results.md). Also the key classes other stages read: the scale axes,
the data's location keys, the execution keys and the runs table's metadata columns."""
from __future__ import annotations

import hashlib
import json
import subprocess
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]

# The code a run's numbers depend on: the module algebra, the models, the update rules, the
# data pipeline, the training loop and what it measures along the way.
TRAINING_SOURCES = ("modular", "models", "optim", "data", "run/train.py", "run/batched.py", "run/spec.py",
                    "run/diagnostics.py")

# The keys a transfer question scales along (the x axis of an LR-transfer figure).
SCALE_AXES = ("width", "depth")

# Config keys that locate the data rather than define it; the data fingerprint covers them.
LOCATION_KEYS = ("data.path", "data.download")


# Config keys that say how a run is executed, not what it computes: batched with other cells
# or alone, compiled or eager. Their losses agree to float tolerance (tests/test_batched.py),
# and the row records what happened (bundle_size, compiled).
EXECUTION_KEYS = ("batch_cells", "compile")


def run_id(values: dict) -> str:
    """16 hex digits of SHA-256 over the resolved config (location and execution keys left out)."""
    hashed = {k: v for k, v in values.items() if k not in LOCATION_KEYS + EXECUTION_KEYS}
    blob = json.dumps(hashed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """16 hex digits over the path and bytes of every training-relevant source file."""
    h = hashlib.sha256()
    for name in TRAINING_SOURCES:
        target = PACKAGE_DIR / name
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for f in files:
            h.update(f.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def git_state() -> tuple[str, bool | None]:
    """(short commit sha, whether the working tree has uncommitted changes) of the checkout the
    package runs from; ("unknown", None) outside git."""
    root = PACKAGE_DIR.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if sha.returncode != 0 or not sha.stdout.strip():
            return "unknown", None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip(), bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


# Columns of a runs table that are metrics, timing or provenance: never a grouping key.
METADATA = {"run_id", "series", "lr", "seed", "status", "error", "wall_seconds", "diverged_at_step",
            "lrtransfer_version", "git_sha", "torch_version", "device", "host", "hostname", "first_train_loss",
            "steps_done", "time", "timestamp", "pid", "worker", "attempt", "trial", "trial_number", "study",
            "git_dirty", "torch_threads",
            # the LR restated (elr = lr / ‖w‖², lr_applied = lr or elr·radius²): one per LR, never a group
            "elr", "lr_applied",
            # measured facts of a run (ρ₀ follows the width; ln(classes) the data), never a group
            "sphere_radius", "chance_loss",
            # how a run executed (batched with others or alone, compiled): not what it computes,
            # and cells of one scale differ in it
            *EXECUTION_KEYS, "bundle_size", "compiled"}
METADATA_PREFIXES = ("final_", "first_")
METADATA_SUFFIXES = ("_version", "_sha", "_seconds", "_at_step", "_at", "_time", "_fingerprint")


def is_metadata(col: str) -> bool:
    """True for metric, timing and provenance columns, which are never grouping keys."""
    col = str(col)
    return col in METADATA or col.startswith(METADATA_PREFIXES) or col.endswith(METADATA_SUFFIXES)
