"""What a result is a function of: the run id (config and data hashed), the code fingerprint,
the git state and the machine (docs/results.md). Also the key classes other stages read: the scale axes,
the data's location keys, the execution keys and the runs table's metadata columns."""
from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]

# The code a run's numbers depend on: the module algebra, the models, the update rules, the
# data pipeline, the training loop and what it measures along the way.
TRAINING_SOURCES = ("modular", "models", "optim", "data", "run/train.py", "run/batched.py", "run/spec.py",
                    "run/diagnostics.py")

# The model's size: the keys a run is named by (results/export.py) and always shown beside a run.
MODEL_SCALE_AXES = ("width", "depth")
# The scale-like keys, in the order a report analyses them: the keys a transfer question scales
# along (the x axis of an LR-transfer figure), each read in octaves (log2). Model size, the
# training horizon (steps), examples per step, the context length, the training set's size and
# attention heads. A report analyses every one that varies; any other numeric key can be asked
# for by name (analysis.transfer.resolve_axes). Names are runs-table columns (data keys carry
# their ``data.`` prefix).
SCALE_AXES = (*MODEL_SCALE_AXES, "batch_size", "steps", "data.context", "data.samples", "heads")

# Config keys that locate the data, or a user's model file, rather than define them; the data and
# model fingerprints cover them.
LOCATION_KEYS = ("data.path", "data.download", "builder")


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


# The runs-table columns that name the machine a run trained on (``machine``): what decides the
# last bits of its floats besides its config. Same machine, same threads: bit-identical runs.
MACHINE_KEYS = ("machine_cpu", "machine_isa", "machine_gpu", "torch_build", "blas")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return " ".join(line.partition(":")[2].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _blas(config: str) -> str:
    """The BLAS (and LAPACK, when another) torch was built with, from ``torch.__config__.show()``."""
    blas = re.search(r"BLAS_INFO=([^,\s]+)", config)
    lapack = re.search(r"LAPACK_INFO=([^,\s]+)", config)
    name = blas.group(1) if blas else "unknown"
    version = re.search(r"Math Kernel Library Version ([0-9.]+)", config) if name == "mkl" else None
    text = name + (f" {version.group(1)}" if version else "")
    if lapack and lapack.group(1) != name:
        text += f", lapack {lapack.group(1)}"
    return text


@lru_cache(maxsize=1)
def _host_machine() -> dict:
    import torch   # here, not at the top: the analysis stage reads this module without torch
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        isa = "unknown"
    build = f"{torch.__version__} git {(torch.version.git_version or 'unknown')[:12]}"
    build += f" cuda {torch.version.cuda}" if torch.version.cuda else " cpu-only"
    try:
        blas = _blas(torch.__config__.show())
    except Exception:  # noqa: BLE001  a build without the config text still trains
        blas = "unknown"
    return {"machine_cpu": _cpu_model(), "machine_isa": str(isa), "torch_build": build, "blas": blas}


@lru_cache(maxsize=8)
def _gpu_name(device: str) -> str:
    import torch
    return torch.cuda.get_device_name(torch.device(device))


def machine(device="cpu") -> dict:
    """What this machine runs a cell on (``MACHINE_KEYS``, all strings): the CPU model and the
    instruction set torch dispatches to, the GPU (for a CUDA ``device``, else ""), torch's
    version, commit and CUDA, and its BLAS. Two rows that agree in these, and in threads,
    trained bit-identically (docs/results.md). Read once per process."""
    out = {**_host_machine(), "machine_gpu": _gpu_name(str(device)) if str(device).startswith("cuda") else ""}
    return {k: out[k] for k in MACHINE_KEYS}


def machine_here(row: dict) -> dict:
    """``machine()`` for the device kind ``row`` trained on: its GPU where it ran on CUDA and this
    machine has one, else the CPU (a CUDA row then differs in ``machine_gpu``)."""
    if str(row.get("device") or "").startswith("cuda"):
        import torch
        if torch.cuda.is_available():
            return machine("cuda")
    return machine("cpu")


def other_machine(row: dict, here: dict | None = None) -> bool | None:
    """Whether a runs-table ``row`` was recorded on another machine than ``here`` (default
    ``machine_here(row)``); None for a row recorded before rows named their machine."""
    recorded = {k: row.get(k) for k in MACHINE_KEYS}
    if all(v is None or (isinstance(v, float) and v != v) for v in recorded.values()):
        return None
    here = machine_here(row) if here is None else here
    return any(str(recorded[k] if recorded[k] is not None else "") != here[k] for k in MACHINE_KEYS)


# Columns of a runs table that are metrics, timing or provenance: never a grouping key.
METADATA = {"run_id", "series", "lr", "seed", "status", "error", "wall_seconds", "diverged_at_step",
            "lrtransfer_version", "git_sha", "torch_version", "device", "host", "hostname", "first_train_loss",
            "steps_done", "time", "timestamp", "pid", "worker", "attempt", "trial", "trial_number", "study",
            "git_dirty", "torch_threads", *MACHINE_KEYS,
            # the LR restated (elr = lr / ‖w‖², lr_applied = lr or elr·radius²): one per LR, never a group
            "elr", "lr_applied",
            # measured facts of a run (ρ₀ follows the width; ln(classes) the data), never a group
            "sphere_radius", "chance_loss",
            # which norm a normalized step used (the algebra's, or a plain module's layerwise one);
            # where a user's builder file is on this machine (its content: model_fingerprint)
            "model_norm", "builder",
            # how a run executed (batched with others or alone, compiled): not what it computes,
            # and cells of one scale differ in it
            *EXECUTION_KEYS, "bundle_size", "compiled"}
METADATA_PREFIXES = ("final_", "first_")
METADATA_SUFFIXES = ("_version", "_sha", "_seconds", "_at_step", "_at", "_time", "_fingerprint")


def is_metadata(col: str) -> bool:
    """True for metric, timing and provenance columns, which are never grouping keys."""
    col = str(col)
    return col in METADATA or col.startswith(METADATA_PREFIXES) or col.endswith(METADATA_SUFFIXES)
