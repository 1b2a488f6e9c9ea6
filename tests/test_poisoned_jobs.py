"""One poisoned job cannot stall or starve the others on a real pilot.

The door refuses these payloads; they are written into the store behind its back (as an older
panray or a hand-edited database could) to prove that the pilot and the manager survive them:
each fails alone as a user error, within its attempts, and every healthy job on the same
pilots finishes.
"""

from __future__ import annotations

import json

import pytest

from panray import Job, Panray, Workflow
from panray.models import Campaign
from panray.payload import encode_command
from panray.submission import build_campaign

#: name -> (payload, environment JSON) the pilot cannot run, each for its own reason.
POISONS = {
    "nan-sleep": ("sleep:nan", "{}"),  # a NaN deadline once spun the pilot's timer loop at 98% CPU
    "nul-argv": (encode_command(["echo", "a\x00b"]), "{}"),
    "bad-env-name": (encode_command(["true"]), json.dumps({"A=B": "x"})),
    "not-hex": ("zz-not-a-command", "{}"),
}


@pytest.mark.slow
def test_poisoned_jobs_fail_alone_and_the_others_finish(cluster: Panray) -> None:
    site = "UKDF"  # every job on the same site's pilots
    healthy = [Job(name=f"sleep{i}", label="sleep", command=["panray:sleep", "0.2"], site=site) for i in range(12)]
    healthy += [Job(name=f"true{i}", label="true", command=["true"], site=site) for i in range(8)]
    poisoned = [Job(name=name, label="poison", command=["true"], site=site, max_attempts=1) for name in POISONS]
    wf = Workflow(name="poisoned", jobs=poisoned + healthy)
    new = build_campaign(Campaign(name="c", workflows=[wf]), cluster.catalog)
    rows = new.workflows[0].jobs
    for k, (payload, env) in enumerate(POISONS.values()):
        rows[k] = rows[k]._replace(payload=payload, environment=env)
    [sub] = cluster.store.submit(new).workflows
    cluster.service._start_manager(sub.workflow_id, by="test")

    assert cluster.wait([sub.workflow_id], timeout=120) == {sub.workflow_id: "SubFinished"}
    jobs = {j.name: j for j in cluster.jobs(sub.workflow_id)}
    for name in POISONS:
        j = jobs[name]
        assert (j.status, j.error_class, j.attempt_nr) == ("failed", "payload", 1), j
        assert "attempts exhausted (1 of 1)" in (j.diag or ""), j.diag
    assert {j.status for n, j in jobs.items() if n not in POISONS} == {"finished"}
    assert {j.site for j in jobs.values()} == {site}
