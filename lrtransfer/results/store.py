"""Results as parquet: a file per run, written atomically, merged on read (docs/results.md
shows a results directory's layout)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from ..run.provenance import SCALE_AXES

FINISHED = ("done", "diverged")   # statuses a sweep does not run again
PER_RUN = ("curves", "diagnostics")  # the tables each run writes beside its summary row
# the process umask, for the files mkstemp creates: reading it means setting it, so set it back
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


@contextlib.contextmanager
def atomic_directory(target: Path):
    """Yield an empty staging directory beside ``target``; when the block finishes, it replaces
    ``target`` whole (an earlier one included); when it raises, it is removed and ``target`` is
    left as it was (all or nothing, as ``atomic_write`` for one file)."""
    target = Path(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staging.chmod(0o777 & ~_UMASK)   # mkdtemp makes 0700; results are shared like any other directory
        yield staging
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            target.rename(old / target.name)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_table(df: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def write_json(obj, path: Path) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
    atomic_write(Path(path), write)


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


class ResultStore:
    """The per-run files of one results directory.

    ``on_notice(message)`` is told, once per file, about files moved aside (default: a
    warning on stderr).
    """

    def __init__(self, root: str | Path, on_notice=_warn):
        self.root = Path(root)
        self.on_notice = on_notice
        self._status: dict[str, tuple[tuple, str]] = {}   # file name -> ((inode, mtime_ns, size), status)
        self._merged_cache: dict[str, tuple[tuple, pd.DataFrame]] = {}

    def _read(self, path: Path, columns=None) -> pd.DataFrame | None:
        """A run or curve file as a table; None (after moving it aside) when it cannot be read."""
        try:
            return pq.read_table(path, columns=columns).to_pandas()
        except FileNotFoundError:
            return None  # replaced or moved by another process between listing and reading
        except Exception as e:  # pyarrow raises several types for truncated or garbled files
            self.quarantine(path, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
            return None

    def quarantine(self, path: Path, why: str) -> None:
        """Move an unreadable run's files aside (``.corrupt``) so its cell runs again."""
        rid = path.name[:-len(".parquet")]
        moved = []
        for p in [self.runs_dir / f"{rid}.parquet"] + [self.root / t / f"{rid}.parquet" for t in PER_RUN]:
            try:
                os.replace(p, p.with_name(p.name + ".corrupt"))
                moved.append(p)
            except FileNotFoundError:
                pass
            except OSError as e:
                self.on_notice(f"{p}: unreadable and cannot be moved aside ({e.strerror or e})")
        self._status.pop(f"{rid}.parquet", None)
        if path in moved:
            self.on_notice(f"{path}: unreadable ({why}); moved to {path.name}.corrupt, run {rid} will run again")

    def retire_stale(self, fingerprints: dict) -> int:
        """Move runs whose data or code fingerprint differs from ``fingerprints`` (or that
        predate fingerprints) to ``stale/``; return how many. Their numbers describe other
        code or data: kept for the record, but out of the tables and the analysis."""
        def current(df: pd.DataFrame) -> pd.Series:
            ok = pd.Series(True, index=df.index)
            for k, v in fingerprints.items():
                ok &= df[k].eq(v) if k in df else False
            return ok

        moved = 0
        for path in sorted(self.runs_dir.glob("*.parquet")) if self.runs_dir.exists() else []:
            row = self._read(path)
            if row is None or not len(row) or bool(current(row).all()):
                continue
            for sub in ("runs", *PER_RUN):
                src = self.root / sub / path.name
                if src.exists():
                    (self.root / "stale" / sub).mkdir(parents=True, exist_ok=True)
                    os.replace(src, self.root / "stale" / sub / path.name)
            self._status.pop(path.name, None)
            moved += 1
        merged = self._merged("runs")
        if len(merged):
            stale = merged[~current(merged)]
            if len(stale):
                ids = set(stale["run_id"])
                tag = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S")
                write_table(stale, self.root / "stale" / f"runs-{tag}.parquet")
                for kind in PER_RUN:
                    table = self._merged(kind)
                    if len(table):
                        write_table(table[table["run_id"].isin(ids)], self.root / "stale" / f"{kind}-{tag}.parquet")
                        write_table(table[~table["run_id"].isin(ids)], self.root / f"{kind}.parquet")
                write_table(merged[current(merged)], self.root / "runs.parquet")
                self._merged_cache.clear()
                moved += len(stale)
        return moved

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

    def write(self, row: dict, curves: pd.DataFrame, diagnostics: pd.DataFrame | None = None) -> None:
        rid = row["run_id"]
        write_table(curves, self.curves_dir / f"{rid}.parquet")
        if diagnostics is not None and len(diagnostics):
            write_table(diagnostics, self.root / "diagnostics" / f"{rid}.parquet")
        write_table(pd.DataFrame([row]), self.runs_dir / f"{rid}.parquet")

    def _merged(self, kind: str) -> pd.DataFrame:
        """The merged table ``<kind>.parquet`` (runs, curves, diagnostics; empty when absent), cached
        until the file changes. Committed reference results ship only these, so they count
        as recorded runs alongside the per-run files."""
        path = self.root / f"{kind}.parquet"
        try:
            st = path.stat()
        except FileNotFoundError:
            return pd.DataFrame()
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._merged_cache.get(kind)
        if cached is None or cached[0] != stamp:
            try:
                table = pq.read_table(path).to_pandas()
            except Exception as e:  # a merged table is rebuilt from the per-run files: move it aside
                try:
                    os.replace(path, path.with_name(path.name + ".corrupt"))
                except OSError:
                    pass
                self.on_notice(f"{path}: unreadable ({type(e).__name__}); moved to {path.name}.corrupt")
                return pd.DataFrame()
            cached = self._merged_cache[kind] = (stamp, table)
        return cached[1]

    def _per_run_ids(self, directory: Path) -> set[str]:
        if not directory.exists():
            return set()
        # a run file moved aside (.corrupt) also replaces its merged-table row: the cell runs again
        return {e.name.split(".parquet")[0] for e in os.scandir(directory)
                if e.name.endswith((".parquet", ".parquet.corrupt")) and not e.name.startswith(".")}

    def row(self, rid: str) -> dict | None:
        path = self.runs_dir / f"{rid}.parquet"
        if path.exists():
            table = self._read(path)
            if table is not None and len(table):
                return table.to_dict("records")[0]
        merged = self._merged("runs")
        if len(merged) and not (self.runs_dir / f"{rid}.parquet.corrupt").exists():
            hit = merged[merged["run_id"] == rid]
            if len(hit):
                return hit.iloc[0].to_dict()
        return None

    def finished_ids(self) -> set[str]:
        """Runs recorded as done or diverged (failed runs are run again).

        Polled while a sweep runs, so each file's status is read once and re-read only when
        the file is replaced (a failed run that ran again).
        """
        done = set()
        if self.runs_dir.exists():
            for entry in os.scandir(self.runs_dir):
                if not entry.name.endswith(".parquet") or entry.name.startswith("."):
                    continue
                st = entry.stat()
                # a rewrite is a rename of a new file: a new inode even where mtimes are coarse
                stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
                cached = self._status.get(entry.name)
                if cached is None or cached[0] != stamp:
                    table = self._read(Path(entry.path), columns=["status"])
                    if table is None or not len(table):
                        continue
                    cached = self._status[entry.name] = (stamp, str(table["status"].iloc[0]))
                rid = entry.name[:-len(".parquet")]
                if cached[1] in FINISHED:
                    done.add(rid)
        merged = self._merged("runs")
        if len(merged):
            seen = self._per_run_ids(self.runs_dir)
            rows = merged[~merged["run_id"].isin(seen) & merged["status"].isin(FINISHED)]
            done |= set(rows["run_id"])
        return done

    def load_runs(self) -> pd.DataFrame:
        """Every recorded run (per-run files, then merged-table rows no file replaces), ordered
        as the experiment lists its series, then by scale, LR and seed."""
        per_run = self._concat(sorted(self.runs_dir.glob("*.parquet")) if self.runs_dir.exists() else [])
        runs = self._with_merged(per_run, self._merged("runs"), self._per_run_ids(self.runs_dir))
        if runs.empty or "series" not in runs:
            return runs
        listed = list((self.experiment() or {}).get("series") or {})
        order = {name: i for i, name in enumerate(listed + sorted(set(runs["series"]) - set(listed)))}
        keys = [k for k in (*SCALE_AXES, "lr", "seed") if k in runs]
        runs = runs.assign(_order=runs["series"].map(order)).sort_values(["_order", *keys], kind="stable")
        return runs.drop(columns="_order").reset_index(drop=True)

    def load_curves(self) -> pd.DataFrame:
        return self._load_per_run("curves")

    def load_diagnostics(self) -> pd.DataFrame:
        """Every recorded run's per-atom diagnostics (see ``train.Diagnostics``); empty if none."""
        return self._load_per_run("diagnostics")

    def _load_per_run(self, kind: str) -> pd.DataFrame:
        directory = self.root / kind
        per_run = self._concat(sorted(directory.glob("*.parquet")) if directory.exists() else [])
        return self._with_merged(per_run, self._merged(kind), self._per_run_ids(self.runs_dir))

    @staticmethod
    def _with_merged(per_run: pd.DataFrame, merged: pd.DataFrame, replaced: set[str]) -> pd.DataFrame:
        if merged.empty:
            return per_run
        kept = merged[~merged["run_id"].isin(replaced)]
        if per_run.empty:
            return kept.reset_index(drop=True)
        return pd.concat([per_run, kept], ignore_index=True, sort=False)

    def _concat(self, paths: list[Path]) -> pd.DataFrame:
        frames = [f for f in (self._read(p) for p in paths) if f is not None and len(f)]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True, sort=False)

    def consolidate(self) -> pd.DataFrame:
        """Rewrite runs.parquet, curves.parquet and diagnostics.parquet from the per-run files
        and the rows of the old merged tables that no per-run file replaces; return the runs."""
        runs = self.load_runs()
        write_table(runs, self.root / "runs.parquet")
        for kind in PER_RUN:
            table = self._load_per_run(kind)
            if len(table) or (self.root / f"{kind}.parquet").exists():
                write_table(table, self.root / f"{kind}.parquet")
        return runs

    def experiment(self) -> dict | None:
        """The experiment the directory records (experiment.json), or None."""
        path = self.root / "experiment.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: unreadable ({e}); it records which experiment this directory holds — "
                            f"restore it, or move the directory aside and sweep again") from None


def load_results(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) of a results directory: the per-run files and the merged tables."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: no such results directory")
    store = ResultStore(root)
    runs = store.load_runs()
    if runs.empty:
        raise UserError(f"{root}: no runs recorded here (expected {root}/runs/*.parquet); run `lrtransfer sweep` first")
    return runs, store.load_curves()


def load_diagnostics(path: str | Path) -> pd.DataFrame:
    """The per-atom diagnostics of a results directory (empty when none were recorded)."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: no such results directory")
    return ResultStore(root).load_diagnostics()
