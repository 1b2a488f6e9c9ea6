"""Function jobs: a Python callable per DAG node, run as a Ray task named after the job on its site.

The session's cluster runs no dashboard, hence no state API: the named tasks are listed through
the dashboard of ``panray serve`` in tests/test_dashboard.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from panray import Job, Panray, Workflow
from panray.exceptions import WorkflowValidationError
from panray.logging_bridge import attempt_prefix, make_object_store, make_sink
from panray.models import ClusterRule
from panray.sites.topology import site_nodes

import fn_payloads


def _result(pr: Panray, job_id: int) -> object:
    job = pr.store.job(job_id)
    key = attempt_prefix(job.workflow_id, job.task_id, job.job_id, job.attempt_nr) + "result.json"
    return json.loads(make_object_store(pr.settings).get(key))


@pytest.mark.slow
def test_mixed_dag_of_function_and_command_jobs(cluster: Panray, tmp_path: Path) -> None:
    pr = cluster
    marker = tmp_path / "flaky.marker"
    jobs = [
        Job(name="measure:0", label="measure", function="fn_payloads:measure", args=[0, 7], kwargs={"band": "g"},
            site="FrDF", request_memory=100),
        Job(name="measure:1", label="measure", function=fn_payloads.measure, args=[1, 8], site="UKDF",
            request_memory=100),
        Job(name="calibrate", label="calibrate", command="echo calibrated", parents=["measure:0", "measure:1"],
            request_memory=100),
        Job(name="flaky", label="flaky", function="fn_payloads:flaky", args=[str(marker)], parents=["calibrate"],
            max_attempts=3, request_memory=100),
        Job(name="long", label="long", function="fn_payloads:sleepy", args=[600], request_memory=100),
    ]
    wf = Workflow(name="functions", jobs=jobs, final_job=Job(name="merge", label="finalJob", command=["true"]))
    [wf_id] = pr.submit(wf)
    ids = {j.name: j.job_id for j in pr.jobs(wf_id)}
    deadline = time.monotonic() + 120
    while pr.store.job(ids["long"]).status != "running":
        assert time.monotonic() < deadline, pr.store.job(ids["long"]).status
        time.sleep(0.2)
    assert pr.cancel(wf_id, job_ids=[ids["long"]])
    statuses = pr.wait([wf_id], timeout=240)
    jobs_by_name = {j.name: j for j in pr.jobs(wf_id)}
    assert {n: j.status for n, j in jobs_by_name.items()} == {
        "measure:0": "finished", "measure:1": "finished", "calibrate": "finished", "flaky": "finished",
        "long": "cancelled", "merge": "finished"}, {n: (j.error_class, j.diag) for n, j in jobs_by_name.items()}
    assert jobs_by_name["flaky"].attempt_nr == 2  # the exception was a payload error, retried
    first = next(a for a in pr.store.attempts(ids["flaky"]) if a.attempt_nr == 1)
    assert (first.status, first.error_class, first.diag) == (
        "failed", "payload", "RuntimeError: first attempt fails on purpose")
    [long] = pr.store.attempts(ids["long"])
    assert long.error_class == "cancelled"

    r0, r1 = _result(pr, ids["measure:0"]), _result(pr, ids["measure:1"])
    assert (r0["visit"], r0["detector"], r0["band"], r0["task"]) == (0, 7, "g", "measure:0")
    assert (r1["visit"], r1["band"], r1["task"]) == (1, "r", "measure:1")
    assert _result(pr, ids["flaky"]) == "second time lucky"
    nodes = site_nodes()
    assert jobs_by_name["measure:0"].site == "FrDF" and r0["node"] in nodes["FrDF"]
    assert jobs_by_name["measure:1"].site == "UKDF" and r1["node"] in nodes["UKDF"]

    sink = make_sink(pr.settings)
    lines = [e["message"] for e in sink.query(job_id=str(ids["measure:0"]))]
    assert "measuring visit 0 detector 7" in lines and "measured 0/7 in g" in lines
    records = [e for e in sink.query(job_id=str(ids["measure:0"])) if e["message"] == "measured 0/7 in g"]
    assert any(r.get("levelName") == "INFO" and r.get("funcName") == "measure" for r in records), records
    errors = [e["message"] for e in sink.query(job_id=str(ids["flaky"]), attempt=1)]
    assert any("RuntimeError: first attempt fails on purpose" in m for m in errors)

    # r0["task"] above: the call ran as the Ray task named after its job; tests/test_dashboard.py
    # finds such tasks by name in Ray's state API on panray serve, which runs the dashboard.


def test_function_jobs_are_not_clustered() -> None:
    from panray.cluster_jobs import cluster_jobs

    wf = Workflow(name="w", jobs=[Job(name=f"m{k}", label="m", function="math:sqrt", args=[k]) for k in range(2)],
                  clustering=[ClusterRule(name="c", labels=["m"])])
    with pytest.raises(WorkflowValidationError, match="function jobs run as Ray tasks and are not clustered"):
        cluster_jobs(wf)


@pytest.mark.parametrize(("fields", "message"), [
    ({"function": "math:hypot", "command": "true"}, "has both a command and a function"),
    ({"args": [1]}, "has args/kwargs but no function"),
    ({"function": lambda: 1}, "is not importable by name"),
    ({"function": "math:hypot", "args": [float("nan")]}, "function arguments are not JSON"),
    ({"function": "math hypot"}, "String should match pattern"),
])
def test_bad_function_jobs_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Job(name="a", label="x", **fields)


def test_function_job_from_a_file_and_by_callable(tmp_path: Path) -> None:
    from panray.models import load_campaign_file
    from panray.payload import decode_function, encode_function

    path = tmp_path / "wf.yaml"
    path.write_text("name: w\njobs:\n- {name: m, label: m, function: 'fn_payloads:measure', args: [1, 2]}\n")
    [wf] = load_campaign_file(path).workflows
    assert Job(name="m", label="m", function=fn_payloads.measure, args=[1, 2]) == wf.jobs[0]
    call = decode_function(encode_function(wf.jobs[0].function, [1, 2], {"band": "i"}, "m"))
    assert fn_payloads.measure.__name__ in call.function and call.kwargs == {"band": "i"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: w\njobs:\n- {name: m, label: m, function: 'x:y', command: 'true'}\n")
    with pytest.raises(WorkflowValidationError, match="has both a command and a function"):
        load_campaign_file(bad)


def test_run_call_records_result_exception_and_output(tmp_path: Path) -> None:
    from panray.core.function_call import run_call
    from panray.payload import FunctionCall

    call = FunctionCall("fn_payloads:flaky", [str(tmp_path / "marker")], {}, "flaky")
    first = run_call(call, tmp_path / "1")
    assert (first.ok, first.error_class, first.diag) == (False, "payload", "RuntimeError: first attempt fails on purpose")
    assert "Traceback" in (tmp_path / "1" / "payload.stderr").read_text()
    assert not (tmp_path / "1" / "result.json").exists()
    second = run_call(call, tmp_path / "2")
    assert second.ok and json.loads((tmp_path / "2" / "result.json").read_text()) == "second time lucky"
    missing = run_call(FunctionCall("fn_payloads:nowhere", [], {}, "x"), tmp_path / "3")
    assert missing.diag == "AttributeError: module 'fn_payloads' has no attribute 'nowhere'"
    not_json = run_call(FunctionCall("builtins:object", [], {}, "x"), tmp_path / "4")
    assert not_json.diag.startswith("TypeError: Object of type object is not JSON serializable")
