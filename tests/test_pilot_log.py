"""The pilot's own log (issue 22): what the pilot did with a job, beside the payload's lines.

Real google-cloud-logging client against the local fake endpoint, real google-cloud-storage
client against the in-process GCS emulator, real payload subprocesses.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_cloud_logging import FakeCloudLogging

from panray.core.messages import Dispatch
from panray.core.payload_runner import PayloadProcess, RunnerServices
from panray.logging_bridge import CloudLoggingSink, CloudSinkOptions, GCSObjectStore, attempt_prefix
from panray.payload import encode_command
from test_integration import _wait_for
from test_logging_bridge import gcs_url  # noqa: F401  (the GCS emulator fixture)

OPTIONS = CloudSinkOptions(request_timeout=0.5, backoff_initial=0.05, backoff_max=0.5)
SEED_TYPES = {"PandaJobID": str, "TaskID": str, "RequestID": str, "Harvester_WorkerID": str,
              "PilotTimeStamp": float, "attemptNr": int}
"""PanDA's pilot sends the ids as strings and its clock as ``PilotTimeStamp`` (epoch seconds)."""


@pytest.fixture
def fake() -> Iterator[FakeCloudLogging]:
    with FakeCloudLogging() as server:
        yield server


def _process(tmp_path: Path, fake: FakeCloudLogging, store: Any, script: str) -> PayloadProcess:
    sink = CloudLoggingSink("panray-test", endpoint=fake.url, options=OPTIONS)
    services = RunnerServices(work_dir=tmp_path / "work", sink=sink, object_store=store, log_interval=0.1)
    d = Dispatch(6969001, 2, 12, 6969, "isr", encode_command(["bash", "-c", script]), "{}", 500, 1, "UKDF",
                 "workflow-manager:test:12")
    return PayloadProcess(d, "pilot:UKDF:0", services)


def _pilot_entries(fake: FakeCloudLogging) -> list[dict[str, Any]]:
    """The pilot's entries once each: a request retried after a timeout that did land is
    deduplicated by insertId, as the service does (the fake keeps every request)."""
    entries = {e["insertId"]: e["jsonPayload"] for e in fake.entries()}
    return [e for e in entries.values() if e.get("source") == "pilot"]


def test_a_killed_job_has_pilot_entries_explaining_it_and_pilot_log_is_stored(
        fake: FakeCloudLogging, gcs_url: str, tmp_path: Path) -> None:
    store = GCSObjectStore("panray-logs", "runs", endpoint=gcs_url)
    proc = _process(tmp_path, fake, store, 'echo "{\\"message\\": \\"working\\"}"; exec sleep 60')
    out: list[Any] = []
    runner = threading.Thread(target=lambda: out.append(proc.run()))
    runner.start()
    stdout = proc.dir / "payload.stdout"
    _wait_for(lambda: stdout.exists() and "working" in stdout.read_text(), timeout=20, what="the payload to run")
    proc.kill("cancelled")  # what the pilot does when the manager gives the job up (lost heartbeat, cancel)
    runner.join(timeout=30)
    [result] = out
    assert result.error_class == "cancelled"
    assert proc.services.sink.flush(timeout=20)
    pilot = _pilot_entries(fake)
    assert [e["event"] for e in pilot] == ["received", "command", "started", "signal", "exited", "uploaded"]
    signal = pilot[3]
    assert signal["severity"] == "WARNING" and signal["signal"] == "SIGKILL"
    assert signal["message"].endswith(": cancelled by the workflow manager")
    assert pilot[4]["severity"] == "ERROR" and pilot[4]["errorClass"] == "cancelled"
    for e in pilot:
        assert {k: type(e[k]) for k in SEED_TYPES} == SEED_TYPES
        assert (e["PandaJobID"], e["TaskID"], e["RequestID"]) == ("6969001", "6969", "12")
    payload = [e for e in fake.entries() if e["jsonPayload"].get("source") == "payload"]
    assert [e["jsonPayload"]["message"] for e in payload] == ["working"]
    assert {k: type(payload[0]["jsonPayload"][k]) for k in SEED_TYPES} == SEED_TYPES
    prefix = attempt_prefix(12, 6969, 6969001, 2)
    stored = store.list(prefix)
    assert {prefix + n for n in ("pilot.log", "payload.stdout", "payload.stderr")} <= set(stored)
    assert sorted(e["event"] for e in map(json.loads, proc.log.path.read_text().splitlines())) == sorted(
        e["event"] for e in pilot), "the stored pilot.log holds what was shipped (and the upload notice)"
    hits = proc.services.sink.query(task_id="6969", source="pilot")  # as an operator would ask
    assert [e["event"] for e in hits] == [e["event"] for e in pilot]
    proc.services.sink.close(timeout=5)


def test_a_pilot_error_is_in_the_pilot_log(fake: FakeCloudLogging, gcs_url: str, tmp_path: Path) -> None:
    missing = GCSObjectStore("no-such-bucket", endpoint=gcs_url)  # uploads fail: the pilot's own failure
    proc = _process(tmp_path, fake, missing, "echo done")
    with pytest.raises(Exception) as caught:
        proc.run()
    proc.pilot_error(caught.value)  # as Pilot._run_one does before reporting a system error
    assert proc.services.sink.flush(timeout=20)
    pilot = {e["event"]: e for e in _pilot_entries(fake)}
    assert pilot["exited"]["severity"] == "INFO" and pilot["exited"]["exitCode"] == 0
    assert pilot["upload_failed"]["severity"] == "ERROR"
    assert pilot["pilot_error"]["message"].startswith("pilot error, the job ends as a system error: ")
    proc.services.sink.close(timeout=5)


def test_panray_job_lists_the_stored_files_of_the_last_attempt(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from panray.cli import main
    from panray.config import Settings
    from panray.logging_bridge import make_object_store
    from panray.store import AttemptRow, ChangeBatch, NewCampaign, open_store
    from test_store import new_workflow

    settings = Settings(home=tmp_path)
    store = open_store(settings.resolved_db_url)
    w = store.submit(NewCampaign("c", "alice", [new_workflow("w", 1)])).workflows[0]
    store.apply(ChangeBatch(attempts=[AttemptRow(w.first_job_id, 1, "failed", "UKDF", "pilot:UKDF:0", 1.0, 2.0,
                                                 None, "system", "pilot error", 500, None, None)]))
    store.close()
    objects = make_object_store(settings)
    for name in ("pilot.log", "payload.stdout"):
        (tmp_path / name).write_text(name)
        objects.put(tmp_path / name, attempt_prefix(w.workflow_id, w.first_task_id, w.first_job_id, 1) + name)
    assert main(["--home", str(tmp_path), "job", str(w.first_job_id)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "files of attempt 1: payload.stdout, pilot.log"


def test_each_pilot_logs_its_own_start(cluster: Any, panray_home: Path) -> None:
    """The pilots' lifecycle log (``work/pilots/<pilot>.log``), here of the session's cluster."""
    from panray.actors.names import pilot_name

    expected = {pilot_name(site.name, k) for site in cluster.runtime.catalog for k in range(site.pilots)
                if site.name not in cluster.runtime.missing}
    starts = {}
    for path in (cluster.settings.work_dir / "pilots").glob("*.log"):
        for e in map(json.loads, path.read_text().splitlines()):
            if e["event"] == "start":
                starts[e["Harvester_WorkerID"]] = e
    assert expected <= set(starts)
    some = starts[min(expected)]
    assert some["source"] == "pilot" and isinstance(some["PilotTimeStamp"], float)
    assert some["message"].startswith(f"pilot {min(expected)} started at {some['site']} with ")
