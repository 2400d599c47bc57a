"""The queue's seam with optuna: the storage methods it calls beyond ``Study`` keep their
parameters in the installed optuna, and a claim through them takes the trial it names."""
import inspect

import optuna
import pytest
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.trial import TrialState

from lrtransfer.sweep.queue import Queue, StorageAdapter, open_storage


@pytest.mark.parametrize("storage_class", [BaseStorage, JournalStorage, RDBStorage])
@pytest.mark.parametrize("method", sorted(StorageAdapter.USES))
def test_the_storage_methods_the_queue_uses_keep_their_parameters(storage_class, method):
    assert not method.startswith("_")
    params = list(inspect.signature(getattr(storage_class, method)).parameters)
    assert tuple(params[1:]) == StorageAdapter.USES[method], (storage_class.__name__, method, params)


def test_a_claim_takes_the_named_waiting_trial_once(tmp_path):
    storage = open_storage(None, tmp_path)
    study = optuna.create_study(study_name="seam", storage=storage)
    for x in range(3):
        study.enqueue_trial({}, user_attrs={"x": x})
    adapter = StorageAdapter(storage, "seam")
    other_worker = StorageAdapter(open_storage(None, tmp_path), "seam")   # its own storage, same journal
    assert adapter.take(2) and not other_worker.take(2)   # a second claim of the same trial fails
    adapter.set_user_attr(2, "who", "me")
    adapter.set_system_attr(2, "beat", 1.5)
    trial = adapter.get(2)
    assert trial.number == 2 and trial.state == TrialState.RUNNING
    assert trial.user_attrs == {"x": 2, "who": "me"} and trial.system_attrs["beat"] == 1.5
    assert [t.number for t in study.get_trials(states=(TrialState.WAITING,))] == [0, 1]
    study.tell(2, 0.5)
    assert not other_worker.take(2) and not adapter.take(2)   # a finished trial cannot be claimed


def test_a_released_cell_waits_again_and_a_lost_one_is_reaped(tmp_path):
    queue = Queue(open_storage(None, tmp_path), "cells")
    for rid in ("a", "b"):
        queue.push(rid, {"series": "s", "lr": 0.1}, attempt=0, retries=2)
    first = queue.claim()
    assert first.user_attrs["run_id"] == "a" and first.system_attrs["lrtransfer_owner"]["pid"]
    assert queue.release(first) and not queue.release(first)   # once only
    assert queue.counts() == {"fail": 1, "waiting": 2}
    taken = queue.claim()
    queue.adapter.set_system_attr(taken.number, "lrtransfer_owner", {"host": "elsewhere", "pid": 1})
    assert queue.reap(grace=0.0) == [taken.user_attrs["run_id"]]
    assert queue.counts() == {"fail": 2, "waiting": 2}
