"""Results as parquet: a file per run, written atomically, merged on read.

Layout under a results directory::

    runs/<run_id>.parquet     one row: the run's config and summary metrics
    curves/<run_id>.parquet   the logged curve (run_id, step, train_loss, test_loss, lr)
    runs.parquet, curves.parquet   merged tables, rewritten after each sweep (``consolidate``)
    experiment.json           the resolved experiment (series order, grid, source TOML)

A run's files are written to a temporary name and renamed into place (curve first, then the
summary row, which marks the run as recorded), so a crash or kill never leaves a
half-written file and concurrent workers never clobber each other.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UserError

FINISHED = ("done", "diverged")   # statuses a sweep does not run again
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` a temporary file beside ``path``, then rename it into place (all or nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are shared like any other file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_table(df: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def write_json(obj, path: Path) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
    atomic_write(Path(path), write)


class ResultStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._status: dict[str, tuple[tuple, str]] = {}   # file name -> ((inode, mtime_ns, size), status)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def curves_dir(self) -> Path:
        return self.root / "curves"

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe.", delete=True)
            probe.close()
        except OSError as e:
            raise UserError(f"{self.root}: results directory is not writable ({e.strerror or e})") from None

    def write(self, row: dict, curves: pd.DataFrame) -> None:
        rid = row["run_id"]
        write_table(curves, self.curves_dir / f"{rid}.parquet")
        write_table(pd.DataFrame([row]), self.runs_dir / f"{rid}.parquet")

    def row(self, rid: str) -> dict | None:
        path = self.runs_dir / f"{rid}.parquet"
        if not path.exists():
            return None
        return pq.read_table(path).to_pylist()[0]

    def finished_ids(self) -> set[str]:
        """Runs recorded as done or diverged (failed runs are run again).

        Polled while a sweep runs, so each file's status is read once and re-read only when
        the file is replaced (a failed run that ran again).
        """
        if not self.runs_dir.exists():
            return set()
        done = set()
        for entry in os.scandir(self.runs_dir):
            if not entry.name.endswith(".parquet") or entry.name.startswith("."):
                continue
            st = entry.stat()
            # a rewrite is a rename of a new file: a new inode even where mtimes are coarse
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self._status.get(entry.name)
            if cached is None or cached[0] != stamp:
                status = pq.read_table(entry.path, columns=["status"]).column("status")[0].as_py()
                cached = self._status[entry.name] = (stamp, status)
            if cached[1] in FINISHED:
                done.add(entry.name[:-len(".parquet")])
        return done

    def load_runs(self) -> pd.DataFrame:
        """Every recorded run, ordered as the experiment lists its series, then by scale and LR."""
        runs = _concat(sorted(self.runs_dir.glob("*.parquet")) if self.runs_dir.exists() else [])
        if runs.empty or "series" not in runs:
            return runs
        listed = list((self.experiment() or {}).get("series") or {})
        order = {name: i for i, name in enumerate(listed + sorted(set(runs["series"]) - set(listed)))}
        keys = [k for k in ("width", "depth", "lr", "seed") if k in runs]
        runs = runs.assign(_order=runs["series"].map(order)).sort_values(["_order", *keys], kind="stable")
        return runs.drop(columns="_order").reset_index(drop=True)

    def load_curves(self) -> pd.DataFrame:
        return _concat(sorted(self.curves_dir.glob("*.parquet")) if self.curves_dir.exists() else [])

    def consolidate(self) -> pd.DataFrame:
        """Rewrite runs.parquet and curves.parquet from the per-run files; return the runs."""
        runs = self.load_runs()
        write_table(runs, self.root / "runs.parquet")
        write_table(self.load_curves(), self.root / "curves.parquet")
        return runs

    def experiment(self) -> dict | None:
        path = self.root / "experiment.json"
        return json.loads(path.read_text()) if path.exists() else None


def _concat(paths: list[Path]) -> pd.DataFrame:
    frames = [pq.read_table(p).to_pandas() for p in paths]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True, sort=False)


def load_results(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) of a results directory, merged from the per-run files."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: no such results directory")
    store = ResultStore(root)
    runs = store.load_runs()
    if runs.empty and (root / "runs.parquet").exists():
        return pd.read_parquet(root / "runs.parquet"), pd.read_parquet(root / "curves.parquet")
    if runs.empty:
        raise UserError(f"{root}: no runs recorded here (expected {root}/runs/*.parquet); run `lrtransfer sweep` first")
    return runs, store.load_curves()
