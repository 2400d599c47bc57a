"""The grid as an optuna study: optuna's storage is the work queue.

Every cell is an enqueued trial (WAITING) carrying its run id and config as user attributes;
a worker claims it by moving it to RUNNING (atomic in every optuna storage, so exactly one
worker gets it), keeps a heartbeat on it, and reports with ``Study.tell``. Cells of dead or
silent workers are declared lost and enqueued again. Storage: a journal file under the
results directory, or an SQLAlchemy URL (``postgresql://...``) for many machines.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from ..errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)

HEARTBEAT_SECONDS = 5.0
GRACE_SECONDS = 60.0
JOURNAL_NAME = "queue.journal"
STORAGE_ENV = "LRTRANSFER_STORAGE"   # how a parent passes a URL with a password to its workers


def redact(url: str | None) -> str:
    """The storage URL with any password replaced by ***, for printing and for results."""
    if not url:
        return "journal"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def open_storage(url: str | None, results_dir: str | Path | None = None, create: bool = True) -> BaseStorage:
    """A journal file under ``results_dir`` when ``url`` is None, else the URL's storage.

    ``create=False`` (status, workers): a journal or SQLite file that does not exist is an
    error, not a new empty queue written beside the results.
    """
    try:
        if url is None:
            if results_dir is None:
                raise UserError("storage: give --storage URL or a results directory for the journal file")
            path = Path(results_dir) / JOURNAL_NAME
            if not create and not path.exists():
                raise UserError(f"{path}: no queue journal here (the sweep used another --storage, or has not "
                                f"started); pass --storage URL")
            path.parent.mkdir(parents=True, exist_ok=True)
            return _journal(path)
        if url.endswith(".journal") or url.startswith("journal:"):
            path = Path(url.removeprefix("journal:"))
            if not create and not path.exists():
                raise UserError(f"--storage {url}: no such journal file")
            return _journal(path)
        if url.startswith("sqlite:///") and not create:
            path = Path(url.removeprefix("sqlite:///"))
            if url != "sqlite:///:memory:" and not path.exists():
                raise UserError(f"--storage {url}: no such SQLite file ({path})")
        return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except UserError:
        raise
    except Exception as e:  # a bad URL or an unreachable server
        raise UserError(f"--storage {redact(url)}: cannot open ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def _journal(path: Path) -> JournalStorage:
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except ValueError as e:  # json.JSONDecodeError: a garbled line (a cut-short last line is skipped)
        raise UserError(f"{path}: the queue journal is damaged ({type(e).__name__}: {e}). Recorded runs are "
                        f"safe in runs/ and the queue is rebuilt from them: mv {path} {path}.damaged, then "
                        f"run the same `lrtransfer sweep` command again") from None


def _alive_here(owner: dict | None) -> bool | None:
    """Whether the worker process ``owner`` is alive, when it ran on this host (else None)."""
    if not owner or owner.get("host") != platform.node():
        return None
    pid = owner.get("pid")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError):
        return None
    try:  # a killed child its parent has not reaped yet is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class StorageAdapter:
    """The storage calls a bundle claim needs beyond ``Study``'s API, by trial number.

    ``Study.ask`` takes whichever trial waits first (and makes a new one when none waits),
    but a bundle's cells are taken by name, and a running trial's attributes are set on the
    storage. Each call is a documented public ``optuna.storages.BaseStorage`` method; ``USES``
    names them with their parameters (tests check them against the installed optuna).
    """

    USES = {"get_study_id_from_name": ("study_name",),
            "get_trial_id_from_study_id_trial_number": ("study_id", "trial_number"),
            "get_trial": ("trial_id",),
            "set_trial_state_values": ("trial_id", "state", "values"),
            "set_trial_user_attr": ("trial_id", "key", "value"),
            "set_trial_system_attr": ("trial_id", "key", "value")}

    def __init__(self, storage: BaseStorage, study_name: str):
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(study_name)
        self.ids: dict[int, int] = {}   # trial number -> storage id, fixed once the trial exists

    def trial_id(self, number: int) -> int:
        if number not in self.ids:
            self.ids[number] = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        return self.ids[number]

    def take(self, number: int) -> bool:
        """Move waiting trial ``number`` to RUNNING; False when another worker took (or
        ended) it first."""
        try:
            return self.storage.set_trial_state_values(self.trial_id(number), state=TrialState.RUNNING)
        except UpdateFinishedTrialError:
            return False

    def get(self, number: int):
        return self.storage.get_trial(self.trial_id(number))

    def set_user_attr(self, number: int, key: str, value) -> None:
        self.storage.set_trial_user_attr(self.trial_id(number), key, value)

    def set_system_attr(self, number: int, key: str, value) -> None:
        self.storage.set_trial_system_attr(self.trial_id(number), key, value)


class Queue:
    """An optuna study holding the cells of one experiment.

    A worker claims a cell (``claim``; a bundle's lead brings the rest, ``claim_bundle``), keeps
    its heartbeat fresh (``Heartbeat``) and reports it (``finish``; ``fail`` enqueues it again
    up to ``retries`` times). ``reap`` declares the cells of dead or silent workers lost (the
    process gone on this host, or no heartbeat for the grace period) and enqueues them again.
    """

    def __init__(self, storage: BaseStorage, study_name: str, create: bool = True):
        try:
            if create:
                self.study = optuna.create_study(study_name=study_name, storage=storage,
                                                 direction="minimize", load_if_exists=True)
            else:
                self.study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise UserError(f"--study {study_name}: no such study in this storage; studies: {', '.join(names) or 'none'}") from None
        self.name = study_name
        self.adapter = StorageAdapter(storage, study_name)

    # -- reading ----------------------------------------------------------------------------
    def trials(self, states=None):
        return self.study.get_trials(deepcopy=False, states=states)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials():
            out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
        return out

    # -- filling ----------------------------------------------------------------------------
    def enqueue(self, cells: list, finished: set[str], retries: int = 2, rerun: bool = False,
                bundles=None) -> int:
        """Enqueue every cell that is neither finished (unless ``rerun``) nor already waiting or
        running. ``bundles(values list) -> list of index lists`` groups the new cells into the
        bundles that train together (``batched.plan_bundles``; lists of one: a cell alone);
        cells are enqueued, and so claimed, in the order of these lists (then any others in
        grid order); without it each trains alone, in grid order."""
        active = {t.user_attrs.get("run_id") for t in self.trials(states=(TrialState.WAITING, TrialState.RUNNING))}
        todo, seen = [], set()
        for cell in cells:
            rid = cell.run_id
            if (rid in finished and not rerun) or rid in active or rid in seen:
                continue
            todo.append(cell)
            seen.add(rid)
        membership: dict[str, tuple[str, bool]] = {}
        groups = bundles([c.values for c in todo]) if bundles and todo else []
        for group in groups:
            if len(group) > 1:
                ids = [todo[k].run_id for k in group]
                name = hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]
                membership.update({rid: (name, n == 0) for n, rid in enumerate(ids)})
        order = list(dict.fromkeys([k for group in groups for k in group] + list(range(len(todo)))))
        for cell in (todo[k] for k in order):
            bundle, lead = membership.get(cell.run_id, (None, False))
            self.push(cell.run_id, cell.values, attempt=0, retries=retries, rerun=rerun, bundle=bundle, lead=lead)
        return len(todo)

    def push(self, rid: str, values: dict, attempt: int, retries: int, rerun: bool = False,
             bundle: str | None = None, lead: bool = False) -> None:
        """Enqueue one cell; ``rerun``: run it even if a finished result is recorded.
        ``bundle``: the cells that train together, fixed when they are enqueued (so a cell's
        batch-mates, and with them its numbers, do not depend on which worker claims what);
        ``lead``: the cell whose claim takes the bundle."""
        attrs = {"run_id": rid, "series": values["series"], "config": json.dumps(values, sort_keys=True),
                 "attempt": attempt, "retries": retries, "rerun": rerun}
        if bundle is not None:
            attrs.update(bundle=bundle, lead=bool(lead))
        self.study.enqueue_trial({}, user_attrs=attrs)

    def _push_again(self, trial, attempt: int) -> None:
        a = trial.user_attrs
        self.push(a["run_id"], json.loads(a["config"]), attempt, a.get("retries", 2), a.get("rerun", False),
                  bundle=a.get("bundle"), lead=a.get("lead", False))

    def release(self, trial, why: str = "interrupted") -> bool:
        """Give a claimed cell back: end its trial (FAIL, ``failure=why``) and enqueue the cell
        again with the same attempt count (and bundle), so it waits for the next worker."""
        if not self.finish(trial, None, TrialState.FAIL, failure=why):
            return False
        self._push_again(trial, trial.user_attrs.get("attempt", 0))
        return True

    # -- claiming and reporting -------------------------------------------------------------
    def claim(self):
        """Atomically take one WAITING cell; returns its FrozenTrial, or None if none wait.

        A cell of a bundle is taken through its bundle's lead (``claim_bundle`` then takes the
        rest); it is taken on its own only when no cell of its bundle is running and its lead
        is not waiting (say it is retried after an error), so two workers never split a bundle."""
        waiting = self.trials(states=(TrialState.WAITING,))
        busy = {t.user_attrs.get("bundle") for t in self.trials(states=(TrialState.RUNNING,))}
        busy |= {t.user_attrs.get("bundle") for t in waiting if t.user_attrs.get("lead")}
        for t in waiting:
            bundle = t.user_attrs.get("bundle")
            if bundle is not None and not t.user_attrs.get("lead") and bundle in busy:
                continue
            taken = self._take(t)
            if taken is not None:
                return taken
        return None

    def claim_bundle(self, trial) -> list:
        """Atomically take the other WAITING cells of ``trial``'s bundle, each as ``claim``
        takes one. Each stays a RUNNING trial of its own with this worker as owner: a worker
        killed mid-bundle has every cell it had not reported declared lost by ``reap``, and
        they come back as the same bundle."""
        bundle = trial.user_attrs.get("bundle")
        if bundle is None:
            return []
        taken = []
        for t in self.trials(states=(TrialState.WAITING,)):
            if t.user_attrs.get("bundle") == bundle:
                got = self._take(t)
                if got is not None:
                    taken.append(got)
        return taken

    def _take(self, t):
        if not self.adapter.take(t.number):
            return None
        self.adapter.set_system_attr(t.number, "lrtransfer_owner", {"host": platform.node(), "pid": os.getpid()})
        self.beat(t.number)
        return self.adapter.get(t.number)

    def beat(self, number: int) -> None:
        """Refresh the heartbeat of trial ``number``."""
        self.adapter.set_system_attr(number, "lrtransfer_heartbeat", time.time())

    def finish(self, trial, value: float | None, state: TrialState = TrialState.COMPLETE, **attrs) -> bool:
        """Report a cell; False if the trial was already ended (e.g. declared lost)."""
        try:
            for key, val in attrs.items():
                self.adapter.set_user_attr(trial.number, key, val)
            self.study.tell(trial.number, value if state == TrialState.COMPLETE else None, state=state)
            return True
        except (UpdateFinishedTrialError, RuntimeError, ValueError):
            return False

    def fail(self, trial, error: str) -> bool:
        """Mark a cell failed; enqueue it again while its retry budget lasts."""
        if not self.finish(trial, None, TrialState.FAIL, failure="error", error=error[-2000:]):
            return False
        attempt, retries = trial.user_attrs.get("attempt", 0), trial.user_attrs.get("retries", 2)
        if attempt < retries:
            self._push_again(trial, attempt + 1)
        return True

    def reap(self, grace: float = GRACE_SECONDS) -> list[str]:
        """Declare cells of dead or silent workers lost and enqueue them again; return their run ids."""
        lost = []
        now = time.time()
        for t in self.trials(states=(TrialState.RUNNING,)):
            owner = t.system_attrs.get("lrtransfer_owner")
            last = t.system_attrs.get("lrtransfer_heartbeat")
            if last is None:
                last = t.datetime_start.timestamp() if t.datetime_start else now
            alive = _alive_here(owner)
            if alive is True or (alive is None and now - last < grace):
                continue
            if self.release(t, "lost"):  # False: another reaper or the worker itself got there first
                lost.append(t.user_attrs["run_id"])
        return lost


class Heartbeat:
    """A background thread that keeps claimed trials' heartbeats (by trial number) fresh while they run."""

    def __init__(self, queue: Queue, numbers, every: float = HEARTBEAT_SECONDS):
        self.queue, self.every = queue, every
        self.numbers = [numbers] if isinstance(numbers, int) else list(numbers)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            for number in self.numbers:
                try:
                    self.queue.beat(number)
                except Exception:  # a missed beat (or a cell already reported) is survivable
                    pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
