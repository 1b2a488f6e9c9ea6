"""A pilot's shared payload services: one log tailer and one memory sampler for all its payloads,
the pilot's record buffered until shipped, and a payload's attempt finished after its slot is free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from panray.core.messages import Dispatch
from panray.core.payload_runner import PayloadProcess, RunnerServices
from panray.logging_bridge import LocalObjectStore, LocalSink, MemoryMonitor, panray_ids
from panray.logging_bridge.memory import MemorySampler
from panray.logging_bridge.pilot_log import PilotLog
from panray.logging_bridge.tailer import PilotTailer
from panray.payload import encode_command


def _ids(job: str) -> dict[str, object]:
    return panray_ids(job_id=job, task_id="t1", workflow_id="wf1", attempt=1, site="UKDF", pilot_id="p", label="isr")


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_one_tailer_ships_every_payload_and_the_pilot_record_in_one_write(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path / "logs")
    writes: list[int] = []
    real_write = sink.write
    sink.write = lambda entries: (writes.append(len(entries)), real_write(entries))  # type: ignore[method-assign]
    tailer = PilotTailer(sink, interval=3600)
    record = PilotLog(tmp_path / "pilot.log", _ids("j1"), sink, buffered=True)
    record.event("started", "payload started with pid 1", pid=1)
    assert not (tmp_path / "pilot.log").exists(), "a buffered event does no file work"
    (tmp_path / "a.out").write_text('{"message": "from a"}\nhalf')
    (tmp_path / "b.out").write_text("from b\n")
    tailer.follow("a", [(tmp_path / "a.out", "stdout")], _ids("j1"), record)
    tailer.follow("b", [(tmp_path / "b.out", "stdout")], _ids("j2"))
    assert tailer.poll() == 2
    assert writes == [3], "two payloads' lines and the pilot's event in one sink write"
    assert [e["message"] for e in sink.query(job_id="j1")] == ["from a", "payload started with pid 1"]
    assert json.loads((tmp_path / "pilot.log").read_text())["event"] == "started"
    assert tailer.finish("a") == 2, "the unterminated tail ships at finish"
    assert [e["message"] for e in sink.query(job_id="j1")][-1] == "half"
    (tmp_path / "a.out").write_text("after finish\n")
    assert tailer.poll() == 0 and tailer.finish("a") == 0, "a finished payload is no longer followed"


def test_one_sampler_samples_every_payload_until_its_monitor_stops(tmp_path: Path) -> None:
    sampler = MemorySampler(interval=0.05)
    procs = [subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
             for _ in range(2)]
    monitors = [MemoryMonitor(p.pid, tmp_path / str(k)) for k, p in enumerate(procs)]
    try:
        for m in monitors:
            m.start(sampler)
        _until(lambda: all(m.max_pss_kb > 0 for m in monitors), 20, "a first sample of each payload")
        rows = lambda m: len(m.txt_path.read_text().splitlines())  # noqa: E731
        _until(lambda: rows(monitors[0]) >= 4, 20, "more rounds of the shared sampler")
        summary = monitors[0].stop()
        stopped_at = rows(monitors[0])
        before = rows(monitors[1])
        _until(lambda: rows(monitors[1]) > before + 2, 20, "the other payload sampled on")
        assert rows(monitors[0]) == stopped_at, "a stopped monitor gets no more rows"
        assert summary["Max"]["nprocs"] == 1
        assert json.loads(monitors[0].json_path.read_text()) == summary
    finally:
        for p in procs:
            p.communicate(b"", timeout=10)
        sampler.close()
    assert monitors[1].stop()["Max"]["pss"] > 0


def test_a_payload_finishes_off_its_slot_with_its_files_and_record(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path / "logs")
    services = RunnerServices(work_dir=tmp_path / "work", sink=sink, object_store=LocalObjectStore(tmp_path / "bucket"),
                              log_interval=3600)
    d = Dispatch(job_id=7, attempt_nr=1, manager="m:1", workflow_id=1, task_id=2, label="isr", site="UKDF",
                 payload=encode_command(["sh", "-c", "echo out; echo err >&2; exit 3"]), request_memory=100,
                 request_cpus=1, environment="{}")
    proc = PayloadProcess(d, "pilot:UKDF:0", services)
    try:
        code = proc.execute()
        assert code == 3
        assert not (proc.dir / "prmon.json").exists() and not list((tmp_path / "bucket").rglob("*")), \
            "nothing of the finishing is done in the slot"
        result = proc.finish(code)
    finally:
        services.close()
    assert (result.exit_code, result.error_class, result.diag) == (3, "payload", "payload exited with code 3")
    stored = sorted(p.name for p in (tmp_path / "bucket").rglob("*") if p.is_file())
    assert stored == ["payload.stderr", "payload.stdout", "pilot.log", "prmon.json", "prmon.txt"]
    events = [e.get("event") for e in sink.query(job_id="7") if e.get("source") == "pilot"]
    assert events == ["received", "command", "started", "exited", "uploaded"]
    assert {e["message"] for e in sink.query(job_id="7") if e.get("source") != "pilot"} == {"out", "err"}


_IDS = "import os; print(os.getpid(), os.getpgid(0), os.getsid(0))"


def test_a_payload_leads_its_own_process_group_in_the_pilots_session(tmp_path: Path) -> None:
    """killpg reaches the payload's whole tree; no session of its own (a setsid per payload costs the
    kernel a scheduler autogroup, ~12 ms of wall time a start on a loaded node)."""
    services = RunnerServices(work_dir=tmp_path / "work")
    d = Dispatch(job_id=8, attempt_nr=1, manager="m:1", workflow_id=1, task_id=2, label="isr", site="UKDF",
                 payload=encode_command([sys.executable, "-c", _IDS]),
                 request_memory=100, request_cpus=1, environment="{}")
    proc = PayloadProcess(d, "pilot:UKDF:0", services)
    try:
        assert proc.finish(proc.execute()).exit_code == 0
    finally:
        services.close()
    pid, pgid, sid = map(int, (proc.dir / "payload.stdout").read_text().split())
    assert pgid == pid
    assert sid == os.getsid(0)


def test_the_local_store_links_an_attempts_files_into_one_folder(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    files = [work / "payload.stdout", work / "pilot.log"]
    for f in files:
        f.write_text(f"content of {f.name}")
    store = LocalObjectStore(tmp_path / "bucket")
    (tmp_path / "bucket/wf/t/j.1").mkdir(parents=True)
    (tmp_path / "bucket/wf/t/j.1/pilot.log").write_text("an earlier upload")
    url = store.put_files(files, "wf/t/j.1/")
    assert url == (tmp_path / "bucket/wf/t/j.1").as_uri() + "/"
    assert store.list("wf/") == ["wf/t/j.1/payload.stdout", "wf/t/j.1/pilot.log"]
    assert os.stat(tmp_path / "bucket/wf/t/j.1/payload.stdout").st_ino == os.stat(files[0]).st_ino, "linked, not copied"
    assert store.get("wf/t/j.1/pilot.log") == b"content of pilot.log", "a key already taken is written over"
    assert store.put_files([], "wf/t/j.2/") is None
