"""Fault injection: Cloud Logging is down while payloads run and while their pilot stops.

The real google-cloud-logging client talks to the local fake endpoint. Lines that could not be
delivered wait in the pilot's spool on disk and reach the service once a pilot of that name
runs again and the endpoint is back: none lost, none twice. A log outage never holds a slot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fake_cloud_logging import FakeCloudLogging

from panray.core.messages import Dispatch
from panray.core.payload_runner import PayloadProcess, RunnerServices
from panray.logging_bridge import CloudLoggingSink, CloudSinkOptions, make_entry, panray_ids
from panray.logging_bridge.sinks import DROPPED_FIELD
from panray.payload import encode_command

JOBS, LINES = 20, 20
OPTIONS = CloudSinkOptions(request_timeout=0.5, backoff_initial=0.05, backoff_max=0.5)


@pytest.fixture
def fake() -> FakeCloudLogging:
    with FakeCloudLogging() as server:
        yield server


def _lines() -> list[tuple[str, int]]:
    """(job id, line number) of every line the jobs of a test write."""
    return sorted((str(j), n) for j in range(1, JOBS + 1) for n in range(LINES))


def _arrived(fake: FakeCloudLogging) -> list[tuple[str, int]]:
    payloads = [e["jsonPayload"] for e in fake.entries() if "n" in e["jsonPayload"]]
    return sorted((str(p["PandaJobID"]), int(p["n"])) for p in payloads)


_PILOT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from panray.logging_bridge import CloudLoggingSink, CloudSinkOptions, make_entry, panray_ids
    url, spool, jobs, lines = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    sink = CloudLoggingSink("panray-test", endpoint=url, spool_dir=spool,
                            options=CloudSinkOptions(request_timeout=0.5, backoff_initial=0.05))
    for j in range(1, jobs + 1):
        ids = panray_ids(job_id=str(j), task_id="7", workflow_id="3", attempt=1, site="UKDF",
                         pilot_id="pilot:UKDF:0", label="isr")
        sink.write([make_entry(json.dumps({"n": n, "message": f"line {n}"}), ids, "stdout") for n in range(lines)])
    print("written", flush=True)
    sys.stdin.read()  # until killed
""")


@pytest.mark.parametrize("stop", [pytest.param("kill -9", marks=pytest.mark.slow), "close"])
def test_lines_spooled_during_an_outage_arrive_once_after_the_pilot_returns(
        stop: str, fake: FakeCloudLogging, tmp_path: Path) -> None:
    spool = tmp_path / "log-spool" / "pilot_UKDF_0"
    fake.refuse()
    if stop == "kill -9":  # a pilot process killed while the endpoint is down
        proc = subprocess.Popen([sys.executable, "-c", _PILOT, fake.url, str(spool), str(JOBS), str(LINES)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "written"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    else:  # a pilot stopped gracefully: close gives up on the endpoint, the journal keeps the rest
        sink = CloudLoggingSink("panray-test", endpoint=fake.url, spool_dir=spool, options=OPTIONS)
        for j in range(1, JOBS + 1):
            ids = panray_ids(job_id=str(j), task_id="7", workflow_id="3", attempt=1, site="UKDF",
                             pilot_id="pilot:UKDF:0", label="isr")
            sink.write([make_entry(json.dumps({"n": n, "message": f"line {n}"}), ids, "stdout")
                        for n in range(LINES)])
        assert not sink.close(timeout=0.5)
        assert sink.stats()["dropped"] == 0, "kept on disk, not dropped"
    assert _arrived(fake) == []
    fake.recover()
    again = CloudLoggingSink("panray-test", endpoint=fake.url, spool_dir=spool, options=OPTIONS)
    assert again.stats()["recovered"] == JOBS * LINES
    assert again.flush(timeout=20)
    assert again.close(timeout=5)
    assert _arrived(fake) == _lines(), "every line once"
    assert len({e["insertId"] for e in fake.entries()}) == JOBS * LINES
    assert not list(spool.glob("*.jsonl")), "a delivered journal is removed"
    third = CloudLoggingSink("panray-test", endpoint=fake.url, spool_dir=spool, options=OPTIONS)
    assert third.stats()["recovered"] == 0, "nothing is sent a second time by a later pilot"
    third.close(timeout=5)


def test_a_full_disk_spool_drops_newest_and_the_notice_survives_a_restart(
        fake: FakeCloudLogging, tmp_path: Path) -> None:
    fake.refuse()
    bounded = CloudSinkOptions(request_timeout=0.5, backoff_initial=0.05, max_spool_bytes=20_000)
    sink = CloudLoggingSink("panray-test", endpoint=fake.url, spool_dir=tmp_path, options=bounded)
    ids = panray_ids(job_id="9", task_id="7", workflow_id="3", attempt=1, site="UKDF", pilot_id="p", label="isr")
    sink.write([make_entry(json.dumps({"n": n, "message": "x" * 100}), ids, "stdout") for n in range(400)])
    dropped = sink.stats()["dropped"]
    assert 0 < dropped < 400
    sink.close(timeout=0.2)
    assert sum(p.stat().st_size for p in tmp_path.glob("*.jsonl")) < 2 * bounded.max_spool_bytes
    fake.recover()
    again = CloudLoggingSink("panray-test", endpoint=fake.url, spool_dir=tmp_path, options=bounded)
    assert again.flush(timeout=20)
    again.close(timeout=5)
    arrived = [e["jsonPayload"] for e in fake.entries()]
    assert [p["n"] for p in arrived if "n" in p] == list(range(400 - dropped)), "the oldest kept, in order"
    [notice] = [p for p in arrived if DROPPED_FIELD in p]
    assert notice[DROPPED_FIELD] == dropped and notice["PandaJobID"] == "9"


def _dispatch(job_id: int) -> Dispatch:
    script = 'for i in $(seq 0 19); do echo "{\\"n\\": $i, \\"message\\": \\"line $i\\"}"; done; sleep 0.2'
    return Dispatch(job_id, 1, 3, 7, "isr", encode_command(["bash", "-c", script]), "{}", 500, 1, "UKDF",
                    "workflow-manager:test:3")


def test_a_log_outage_does_not_hold_payload_slots(fake: FakeCloudLogging, tmp_path: Path) -> None:
    fake.refuse()
    sink = CloudLoggingSink("panray-test", endpoint=fake.url, spool_dir=tmp_path / "spool", options=OPTIONS)
    services = RunnerServices(work_dir=tmp_path / "work", sink=sink, log_interval=0.1)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as slots:
        results = list(slots.map(lambda j: PayloadProcess(_dispatch(j), "pilot:UKDF:0", services).run(),
                                 range(1, JOBS + 1)))
    took = time.monotonic() - started
    assert [r.exit_code for r in results] == [0] * JOBS
    assert max(r.end_time - r.start_time for r in results) < 5.0
    assert took < 15.0, f"{JOBS} jobs of 0.2 s took {took:.1f} s with the log endpoint down"
    assert _arrived(fake) == [] and sink.stats()["pending"] > JOBS * LINES  # and the pilot's own record
    fake.recover()
    assert sink.flush(timeout=20)
    assert _arrived(fake) == _lines()
    events = Counter((e["jsonPayload"]["PandaJobID"], e["jsonPayload"]["event"]) for e in fake.entries()
                     if e["jsonPayload"]["source"] == "pilot")
    assert {job for job, event in events if event == "exited"} == {str(j) for j in range(1, JOBS + 1)}
    sink.close(timeout=5)


def test_panray_logs_tells_how_many_lines_a_full_spool_dropped(fake: FakeCloudLogging, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from panray.cli import main

    fake.refuse()
    bounded = CloudSinkOptions(request_timeout=0.5, backoff_initial=0.05, max_spool=5)
    sink = CloudLoggingSink("panray-local", endpoint=fake.url, options=bounded)
    ids = panray_ids(job_id="9", task_id="7", workflow_id="3", attempt=1, site="UKDF", pilot_id="p", label="isr")
    sink.write([make_entry(json.dumps({"n": n, "message": f"line {n}"}), ids, "stdout") for n in range(8)])
    fake.recover()
    assert sink.flush(timeout=20)
    sink.close(timeout=5)
    monkeypatch.setenv("PANRAY_LOG_SINK", "cloud")
    monkeypatch.setenv("PANRAY_CLOUD_LOGGING_ENDPOINT", fake.url)
    from panray import Campaign, Job, Panray, Settings, Workflow
    from panray.submission import build_campaign

    with Panray(Settings(home=tmp_path)) as pr:  # job 9 exists: logs of an unknown job are an error
        nine = Workflow(name="w", jobs=[Job(name=f"j{k}", label="isr") for k in range(9)])
        pr.store.submit(build_campaign(Campaign(name="c", owner="o", workflows=[nine]), pr.catalog))
    assert main(["--home", str(tmp_path), "logs", "9"]) == 0
    out, err = capsys.readouterr()
    assert [line.split(": ", 1)[1] for line in out.splitlines()] == [f"line {n}" for n in range(5)]
    assert err.strip() == ("panray: note: 3 log lines were dropped by a pilot's full log spool "
                           "(log_spool_bytes) and never reached the log service")


@pytest.mark.slow
def test_lines_of_a_run_during_an_outage_arrive_after_the_server_stops_and_starts(
        fake: FakeCloudLogging, tmp_path: Path) -> None:
    """The issue's case: endpoint down, 20 jobs of 20 lines, ``serve --stop`` before it is back."""
    import yaml
    from panray_server import panray, running_server

    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANRAY_")}
    env.update(PANRAY_HOME=str(home), PANRAY_LOG_SINK="cloud", PANRAY_CLOUD_LOGGING_ENDPOINT=fake.url,
               PANRAY_LOG_INTERVAL="0.2")
    script = 'for i in $(seq 0 19); do echo "{\\"n\\": $i, \\"message\\": \\"line $i\\"}"; done'
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({"name": "chatty", "jobs": [
        {"name": f"j{k}", "label": "isr", "command": ["bash", "-c", script], "request_memory": 100}
        for k in range(JOBS)]}))
    fake.refuse()
    with running_server(home, env):
        done = panray("submit", str(wf), env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    assert _arrived(fake) == [], "nothing could be delivered"
    fake.recover()
    with running_server(home, env):
        assert fake.wait_for(lambda: len(_arrived(fake)) >= JOBS * LINES, timeout=60), len(_arrived(fake))
    arrived = _arrived(fake)
    assert len(arrived) == len(set(arrived)) == JOBS * LINES, "every line once"
    assert sorted({n for _, n in arrived}) == list(range(LINES)) and len({j for j, _ in arrived}) == JOBS
