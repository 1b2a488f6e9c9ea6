"""The workflow manager's writer: a backlog of change batches is stored as one merged transaction,
in order, and a batch the store rejects is dropped alone."""

from __future__ import annotations

import threading
from typing import Any

from actors.workflow_manager import _Writer
from panray.exceptions import NotFoundError
from panray.statuses import JobStatus as J
from panray.store import ChangeBatch, HistoryRow, NewCampaign, StateStore
from test_store import new_workflow, state

_STEPS = (J.DEFINED, J.ASSIGNED, J.ACTIVATED, J.SENT)


class _Gated:
    """A store whose first apply waits for the gate, so that batches pile up behind it."""

    def __init__(self, store: StateStore):
        self.store, self.entered, self.gate = store, threading.Event(), threading.Event()
        self.calls: list[int] = []  #: job states per apply

    def apply(self, batch: ChangeBatch) -> None:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        self.calls.append(len(batch.jobs))
        self.store.apply(batch)

    def hold_first(self, writer: _Writer, batch: ChangeBatch) -> None:
        """Put ``batch`` and return once the writer is storing it (held at the gate)."""
        writer.put(batch)
        assert self.entered.wait(30), "the writer never took the first batch"


def _step(job_id: int, k: int) -> ChangeBatch:
    return ChangeBatch(jobs=[state(job_id, _STEPS[k])],
                       history=[HistoryRow(job_id, 1, _STEPS[k].value, float(k), "", "test")])


def _drained(writer: _Writer, timeout: float = 30.0) -> None:
    assert writer.wait_idle(timeout), f"writer still has {len(writer.batches)} batches after {timeout} s"


def _started(store: Any) -> _Writer:
    writer = _Writer(store, "wm-test")
    writer.start()
    return writer


def test_a_backlog_is_merged_into_one_transaction_in_order(store: StateStore) -> None:
    first = store.submit(NewCampaign("c", "alice", [new_workflow("w", 2)])).workflows[0].first_job_id
    gated = _Gated(store)
    writer = _started(gated)
    gated.hold_first(writer, _step(first, 0))
    for k in (1, 2, 3):
        writer.put(_step(first, k))
    writer.put(_step(first + 1, 0))
    gated.gate.set()
    _drained(writer)
    assert writer.error is None
    assert gated.calls == [1, 4], f"the four batches waiting were not merged into one: {gated.calls}"
    assert [h.status for h in store.history(first)] == ["defined", "assigned", "activated", "sent"]
    assert store.job(first).status == "sent", "the latest state of a job wins within a merged batch"
    assert store.job(first + 1).status == "defined"
    assert writer.written == writer.submitted == 5


def test_a_rejected_batch_in_a_merged_backlog_is_dropped_alone(store: StateStore) -> None:
    first = store.submit(NewCampaign("c", "alice", [new_workflow("w", 2)])).workflows[0].first_job_id
    gated = _Gated(store)
    writer = _started(gated)
    gated.hold_first(writer, _step(first, 0))
    writer.put(_step(first, 1))
    writer.put(_step(first + 10_000, 0))  # no such job: the store refuses this batch
    writer.put(_step(first + 1, 0))
    gated.gate.set()
    _drained(writer)
    assert isinstance(writer.error, NotFoundError), writer.error
    assert gated.calls == [1, 3, 1, 1, 1], f"the merged batch was not retried one by one: {gated.calls}"
    assert [h.status for h in store.history(first)] == ["defined", "assigned"]
    assert store.job(first + 1).status == "defined", "the batch after the rejected one is stored"
    assert store.history(first + 10_000) == []
