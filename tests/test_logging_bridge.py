"""The logging bridge over real connections on 127.0.0.1: Cloud Logging through a fake REST endpoint
that fails on demand, GCS through gcp-storage-emulator, payloads and memory hogs as subprocesses."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_cloud_logging import FakeCloudLogging
from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from panray.config import Settings
from panray.logging_bridge import (
    CloudLoggingSink,
    CloudSinkOptions,
    GCSObjectStore,
    LocalObjectStore,
    LocalSink,
    LogTailer,
    MemoryMonitor,
    attempt_prefix,
    fit_entry,
    make_entry,
    make_object_store,
    make_sink,
    panray_ids,
)
from panray.logging_bridge.memory import COLUMNS
from panray.logging_bridge.sinks import DROPPED_FIELD, MAX_ENTRY_BYTES, TRUNCATION_MARKER

IDS = panray_ids(job_id="j1", task_id="t1", workflow_id="wf1", attempt=2, site="s3df",
                 pilot_id="pilot-7", label="isr")
FAST = CloudSinkOptions(request_timeout=0.5, backoff_initial=0.05, backoff_max=0.5)


@pytest.fixture(autouse=True)
def only_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Trace every name lookup and connect of the test; anything but 127.0.0.1 fails it."""
    contacted: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        contacted.append(str(host))
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock: socket.socket, address: Any) -> Any:
        contacted.append(str(address[0]) if isinstance(address, tuple) else "unix")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield
    assert set(contacted) <= {"127.0.0.1", "unix"}, contacted


@pytest.fixture
def fake() -> Iterator[FakeCloudLogging]:
    with FakeCloudLogging() as server:
        yield server


def cloud_sink(fake: FakeCloudLogging, options: CloudSinkOptions = FAST) -> CloudLoggingSink:
    return CloudLoggingSink("panray-test", endpoint=fake.url, options=options)


def numbered(count: int, **ids: Any) -> list[dict[str, Any]]:
    return [make_entry(json.dumps({"n": n, "message": f"line {n}"}), {**IDS, **ids}, "stdout")
            for n in range(count)]


def delivered_numbers(fake: FakeCloudLogging) -> list[int]:
    return [entry["jsonPayload"]["n"] for entry in fake.entries() if "n" in entry["jsonPayload"]]


# --- entries ---------------------------------------------------------------------------------


def test_json_line_is_merged_with_ids_and_gets_its_severity() -> None:
    record = {"levelName": "WARNING", "levelNo": 30, "message": "hot", "MDC": {"RUN": "r1"},
              "PandaJobID": "spoofed"}
    entry = make_entry(json.dumps(record) + "\n", IDS, "stderr")
    assert entry["severity"] == "WARNING" and entry["message"] == "hot"
    assert entry["MDC"] == {"RUN": "r1"} and entry["stream"] == "stderr"
    assert {k: entry[k] for k in IDS} == IDS, "the pilot's ids win over the payload's"
    assert isinstance(entry["PilotTimeStamp"], float) and entry["source"] == "payload"
    assert make_entry("x", {"site": Path("/s")}, "stdout")["site"] == "/s", "ids made JSON-safe"


@pytest.mark.parametrize(("line", "severity"), [
    ('{"levelName": "fatal"}', "CRITICAL"), ('{"levelNo": 40}', "ERROR"),
    ('{"levelName": "VERBOSE"}', "DEBUG"), ("[1, 2]", "DEFAULT"), ("{broken", "DEFAULT"),
])
def test_severity_mapping_and_non_json(line: str, severity: str) -> None:
    entry = make_entry(line, IDS, "stdout")
    assert entry["severity"] == severity
    if not line.startswith('{"'):
        assert entry["message"] == line


# --- Cloud Logging sink ----------------------------------------------------------------------


def test_503_for_ten_seconds_loses_nothing_and_duplicates_nothing(fake: FakeCloudLogging) -> None:
    fake.fail(503, seconds=10)
    sink = cloud_sink(fake, CloudSinkOptions(request_timeout=2, backoff_initial=0.1, backoff_max=1))
    writer = threading.Thread(target=lambda: [sink.write(numbered(1000)[i:i + 10])
                                              for i in range(0, 1000, 10)])
    writer.start()
    writer.join()
    assert sink.flush(timeout=30)
    assert delivered_numbers(fake) == list(range(1000)), "all once, in order"
    assert len({e["insertId"] for e in fake.entries()}) == 1000
    stats = sink.stats()
    assert stats["delivered"] == 1000 and stats["dropped"] == 0 and stats["pending"] == 0
    assert stats["retried"] >= 3 and any(mode == "fail" for mode, _ in fake.requests)
    assert sink.close()


def test_hanging_endpoint_times_out_and_recovers(fake: FakeCloudLogging) -> None:
    fake.hang(delay=5, seconds=2)
    sink = cloud_sink(fake)
    sink.write(numbered(200))
    assert sink.flush(timeout=15)
    assert delivered_numbers(fake) == list(range(200))
    assert sink.stats()["retried"] >= 1 and any(mode == "hang" for mode, _ in fake.requests)
    sink.close()


def test_refused_connections_are_retried(fake: FakeCloudLogging) -> None:
    fake.refuse(seconds=1.5)
    sink = cloud_sink(fake)
    sink.write(numbered(50))
    assert sink.flush(timeout=15)
    assert delivered_numbers(fake) == list(range(50))
    assert sink.stats()["retried"] >= 1
    sink.close()


def test_close_right_after_write_delivers_everything(fake: FakeCloudLogging) -> None:
    sink = cloud_sink(fake)
    sink.write(numbered(500))
    assert sink.close(timeout=10)
    assert delivered_numbers(fake) == list(range(500))
    sink.write(numbered(3))
    assert sink.stats()["dropped"] == 3, "a write after close is counted, not lost silently"


def test_full_spool_drops_newest_counts_them_and_tells_each_job(fake: FakeCloudLogging) -> None:
    """The newest go, so that a spool journal on disk stays one undelivered tail."""
    fake.fail(503)
    sink = cloud_sink(fake, CloudSinkOptions(max_spool=10, max_batch_entries=5,
                                             backoff_initial=0.05, backoff_max=0.05))
    sink.write(numbered(5))
    fake.wait_for(lambda: sum(mode == "fail" for mode, _ in fake.requests) >= 1, timeout=5)
    sink.write(numbered(30)[5:])
    fake.recover()
    assert sink.flush(timeout=10)
    assert delivered_numbers(fake) == list(range(15)), "in flight and oldest survive"
    assert sink.stats()["dropped"] == 15
    [notice] = [e["jsonPayload"] for e in fake.entries() if DROPPED_FIELD in e["jsonPayload"]]
    assert notice[DROPPED_FIELD] == 15 and notice["PandaJobID"] == IDS["PandaJobID"]
    assert notice["message"] == "panray dropped 15 log lines of this job: the pilot's log spool was full"
    sink.close()


def test_rejected_request_is_dropped_not_retried_forever(fake: FakeCloudLogging) -> None:
    fake.fail(400)
    sink = cloud_sink(fake)
    sink.write(numbered(4))
    assert sink.flush(timeout=5)
    assert sink.stats()["dropped"] == 4 and "400" in (sink.last_error or "")
    sink.close()


def test_oversized_entry_is_truncated_with_marker(fake: FakeCloudLogging) -> None:
    sink = cloud_sink(fake)
    big = make_entry(json.dumps({"message": "é" + "x" * 300_000}), IDS, "stdout")
    sink.write([big, *numbered(1)])
    assert sink.close(timeout=10)
    first, second = fake.entries()
    assert first["jsonPayload"]["message"].endswith(TRUNCATION_MARKER)
    assert first["jsonPayload"]["PandaJobID"] == "j1"
    assert first["jsonPayload"]["panrayTruncatedBytes"] > MAX_ENTRY_BYTES
    assert len(json.dumps(first)) <= MAX_ENTRY_BYTES
    assert second["jsonPayload"]["n"] == 0
    assert sink.stats()["truncated"] == 1


def test_oversized_nested_record_falls_back_to_a_truncated_message() -> None:
    record = {"MDC": {f"k{i}": "v" * 50 for i in range(10_000)}, "message": "short"}
    fitted, truncated = fit_entry(make_entry(json.dumps(record), IDS, "stdout"), 100_000)
    assert truncated and len(json.dumps(fitted)) <= 100_000
    assert fitted["message"].endswith(TRUNCATION_MARKER) and fitted["TaskID"] == "t1"
    assert fit_entry(IDS) == (IDS, False)


def test_requests_stay_under_ten_megabytes(fake: FakeCloudLogging) -> None:
    sink = cloud_sink(fake, CloudSinkOptions(request_timeout=10))
    sink.write([make_entry(json.dumps({"n": n, "message": "y" * 240_000}), IDS, "stdout")
                for n in range(60)])
    assert sink.close(timeout=30)
    assert delivered_numbers(fake) == list(range(60))
    assert len(fake.body_sizes) >= 2 and max(fake.body_sizes) < 10 * 1024 * 1024


def test_query_filters_on_payload_ids(fake: FakeCloudLogging) -> None:
    sink = cloud_sink(fake)
    sink.write(numbered(3) + numbered(2, PandaJobID="j2", attemptNr=3))
    assert sink.flush(timeout=10)
    assert [e["n"] for e in sink.query(job_id="j1")] == [0, 1, 2]
    assert [e["n"] for e in sink.query(job_id="j2", attempt=3)] == [0, 1]
    assert sink.query(job_id="j2", attempt=2) == []
    assert [e["n"] for e in sink.query(task_id="t1", grep="LINE 1")] == [1, 1]
    assert len(sink.query(workflow_id="wf1", limit=4)) == 4
    sink.close()


def test_make_sink_follows_settings(tmp_path: Path, fake: FakeCloudLogging) -> None:
    assert isinstance(make_sink(Settings(home=tmp_path)), LocalSink)
    sink = make_sink(Settings(home=tmp_path, log_sink="cloud", cloud_logging_endpoint=fake.url,
                              gcp_project="p9", log_name="MyLog"))
    assert isinstance(sink, CloudLoggingSink)
    sink.write(numbered(1))
    assert sink.close(timeout=10)
    assert fake.bodies[0]["logName"] == "projects/p9/logs/MyLog"
    assert fake.bodies[0]["resource"]["type"] == "global"


# --- local sink ------------------------------------------------------------------------------


def test_local_sink_is_queryable_by_ids(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path)
    sink.write(numbered(3) + numbered(2, attemptNr=10) + numbered(1, TaskID="t/../2"))
    assert [e["attemptNr"] for e in sink.query(job_id="j1", task_id="t1")] == [2, 2, 2, 10, 10]
    assert [e["n"] for e in sink.query(job_id="j1", attempt=10)] == [0, 1]
    assert [e["TaskID"] for e in sink.query(task_id="t/../2")] == ["t/../2"]
    assert [e["n"] for e in sink.query(workflow_id="wf1", grep="line 2")] == [2]
    assert len(sink.query(limit=4)) == 4
    assert sink.stats()["delivered"] == 6 and sink.close()
    assert all(p.is_relative_to(tmp_path) for p in tmp_path.rglob("*.jsonl"))


# --- tailer ----------------------------------------------------------------------------------

HALF_LINES = textwrap.dedent("""
    import json, sys, time
    out = open(sys.argv[1], "w")
    for n in range(int(sys.argv[2])):
        line = json.dumps({"n": n, "levelName": "INFO", "message": "m" * 50 + str(n)})
        out.write(line[:30]); out.flush()
        if n == 0:
            print("half", flush=True); sys.stdin.readline()
        else:
            time.sleep(0.002)
        out.write(line[30:] + "\\n"); out.flush()
    out.write("no newline at the end"); out.flush()
""")


def run_half_lines(path: Path, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", HALF_LINES, str(path), str(count)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_tailer_keeps_a_half_line_until_its_newline(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path / "logs")
    tailer = LogTailer([(tmp_path / "out.log", "stdout"), (tmp_path / "err.log", "stderr")],
                       IDS, sink, interval=3600)
    assert tailer.poll() == 0, "files that do not exist yet are fine"
    proc = run_half_lines(tmp_path / "out.log", 3)
    assert proc.stdout.readline() == "half\n"
    assert tailer.poll() == 0, "half a line is not shipped"
    proc.communicate("go\n", timeout=10)
    assert tailer.poll() == 3
    assert tailer.stop() == 4, "the unterminated tail ships at stop"
    shipped = sink.query(job_id="j1")
    assert [e.get("n") for e in shipped] == [0, 1, 2, None]
    assert shipped[0]["severity"] == "INFO" and shipped[0]["Harvester_WorkerID"] == "pilot-7"
    assert shipped[-1]["message"] == "no newline at the end"


def test_tailer_thread_never_splits_lines(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path / "logs")
    tailer = LogTailer([(tmp_path / "out.log", "stdout")], IDS, sink, interval=0.005)
    tailer.start()
    proc = run_half_lines(tmp_path / "out.log", 300)
    assert proc.stdout.readline() == "half\n"
    proc.communicate("go\n", timeout=20)
    assert tailer.stop() == 301
    shipped = sink.query(job_id="j1")
    assert [e.get("n") for e in shipped[:-1]] == list(range(300))
    assert all(e["message"] == "m" * 50 + str(e["n"]) for e in shipped[:-1])


# --- object stores ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gcs_url() -> Iterator[str]:
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket="panray-logs")
    server.start()
    yield f"http://127.0.0.1:{server._api._httpd.server_address[1]}"
    server.stop()


def put_attempt_files(store: Any, tmp_path: Path) -> dict[str, str]:
    urls = {}
    for name in ("pilot.log", "payload.stdout", "prmon.json"):
        (tmp_path / name).write_text(f"content of {name}")
        urls[name] = store.put(tmp_path / name, attempt_prefix("wf1", "t1", "j1", 2) + name)
    return urls


def test_gcs_store_puts_lists_and_gets_at_documented_paths(gcs_url: str, tmp_path: Path) -> None:
    store = make_object_store(Settings(home=tmp_path, storage="gs://panray-logs/runs",
                                       storage_endpoint=gcs_url))
    assert isinstance(store, GCSObjectStore)
    urls = put_attempt_files(store, tmp_path)
    assert urls["pilot.log"] == "gs://panray-logs/runs/wf1/t1/j1.2/pilot.log"
    assert store.list("wf1/t1/j1.2/") == ["wf1/t1/j1.2/payload.stdout", "wf1/t1/j1.2/pilot.log",
                                          "wf1/t1/j1.2/prmon.json"]
    assert store.get("wf1/t1/j1.2/prmon.json") == b"content of prmon.json"
    raw = storage.Client(project="x", credentials=AnonymousCredentials(),
                         client_options={"api_endpoint": gcs_url})
    assert raw.bucket("panray-logs").blob("runs/wf1/t1/j1.2/pilot.log").exists()


def test_local_store_and_key_checks(tmp_path: Path) -> None:
    store = make_object_store(Settings(home=tmp_path))
    assert isinstance(store, LocalObjectStore)
    urls = put_attempt_files(store, tmp_path)
    assert urls["pilot.log"] == (tmp_path / "storage/wf1/t1/j1.2/pilot.log").as_uri()
    assert store.list("wf1/t1/") == ["wf1/t1/j1.2/payload.stdout", "wf1/t1/j1.2/pilot.log",
                                     "wf1/t1/j1.2/prmon.json"]
    assert store.get("wf1/t1/j1.2/pilot.log") == b"content of pilot.log"
    for bad in ("../escape", "/etc/passwd", ""):
        with pytest.raises(ValueError):
            store.put(tmp_path / "pilot.log", bad)


# --- memory monitor --------------------------------------------------------------------------

HOG = textwrap.dedent("""
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    data = b"\\x01" * (200 * 1024 * 1024)
    print("ready", flush=True)
    sys.stdin.readline()
    child.stdin.close(); child.wait()
""")


def test_memory_monitor_sees_200_mib_and_fires_once(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    exceeded: list[int] = []
    fired = threading.Event()
    monitor = MemoryMonitor(proc.pid, tmp_path, interval=0.05, ncores=4, limit_kb=180 * 1024,
                            on_exceed=lambda pss: (exceeded.append(pss), fired.set()))
    monitor.start()
    assert proc.stdout.readline() == "ready\n"
    assert fired.wait(timeout=20)
    assert monitor.sample() and monitor.sample()
    proc.communicate("done\n", timeout=10)
    summary = monitor.stop()
    assert len(exceeded) == 1 and exceeded[0] > 180 * 1024
    assert summary["Max"]["pss"] >= 180 * 1024 and summary["Max"]["nprocs"] == 2
    assert monitor.max_pss_per_core_kb == summary["Max"]["pss"] / 4
    assert 0 < summary["Avg"]["pss"] <= summary["Max"]["pss"]
    assert json.loads((tmp_path / "prmon.json").read_text()) == summary
    header, *rows = (tmp_path / "prmon.txt").read_text().splitlines()
    assert header.split("\t") == list(COLUMNS) and header.startswith("Time\t")
    assert len(rows) >= 3 and all(len(r.split("\t")) == len(COLUMNS) for r in rows)


def test_short_job_still_gets_a_sample(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    monitor = MemoryMonitor(proc.pid, tmp_path, interval=3600)
    monitor.start()
    summary = monitor.stop()
    proc.communicate(b"", timeout=10)
    assert summary["Max"]["nprocs"] == 1 and monitor.max_pss_kb > 0
    assert len((tmp_path / "prmon.txt").read_text().splitlines()) == 2
    gone = MemoryMonitor(proc.pid, tmp_path / "gone")
    gone.start()
    assert gone.stop() == {"Max": {}, "Avg": {}} and gone.max_pss_kb == 0
