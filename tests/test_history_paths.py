"""History stored as paths of moves (panray.store.history): every move comes back, cause included."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from panray.exceptions import PanrayError
from panray.statuses import JobStatus
from panray.store import ChangeBatch, HistoryRow, NewCampaign, StateStore
from panray.store.history import compact, expand

from test_store import new_workflow

_STATUSES = [s.value for s in JobStatus]


@st.composite
def _histories(draw: st.DrawFn) -> list[HistoryRow]:
    """Interleaved moves of a few jobs: mostly chained, some breaking the chain or starting an attempt."""
    rows, last = [], {}
    for _ in range(draw(st.integers(0, 40))):
        job = draw(st.integers(1, 4))
        attempt, status = last.get(job, (1, ""))
        if draw(st.booleans()) and draw(st.booleans()):
            attempt += 1
        previous = status if draw(st.integers(0, 4)) else draw(st.sampled_from(_STATUSES))
        new = draw(st.sampled_from(_STATUSES))
        rows.append(HistoryRow(job, attempt, new, draw(st.floats(0, 1e10)), previous,
                               draw(st.sampled_from(["brokerage", "pilot report", 'retry by "bob"\ttab', ""]))))
        last[job] = (attempt, new)
    return rows


@given(_histories())
def test_compact_then_expand_gives_back_every_move(rows: list[HistoryRow]) -> None:
    stored = compact(rows, _STATUSES)
    assert len(stored) <= len(rows)
    by_job = {j: [r for r in rows if r.job_id == j] for j in {r.job_id for r in rows}}
    again = expand(stored)
    assert {j: [r for r in again if r.job_id == j] for j in by_job} == by_job


def test_a_lifecycle_in_one_batch_is_one_row() -> None:
    steps = ["defined", "assigned", "activated", "sent", "starting", "running", "finished"]
    rows = [HistoryRow(7, 1, s, float(k), steps[k - 1] if k else "", "pilot report") for k, s in enumerate(steps)]
    assert len(compact(rows, _STATUSES)) == 1


def test_an_unknown_status_inside_a_path_rejects_the_batch(store: StateStore) -> None:
    [w] = store.submit(NewCampaign("c", "alice", [new_workflow("w", 1)])).workflows
    j = w.first_job_id
    bad = [HistoryRow(j, 1, "bogus", 1.0, "pending", "x"), HistoryRow(j, 1, "defined", 2.0, "bogus", "x")]
    with pytest.raises(PanrayError, match="rejected.*'bogus' is not a job status"):
        store.apply(ChangeBatch(history=bad))
    assert store.history(j) == []
