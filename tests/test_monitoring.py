"""What operators watch: max PSS per core in ``panray jobs``, ``panray logs --follow``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from panray import Campaign, Job, Panray, Workflow
from panray.cli import main
from panray.store import open_store
from panray.store.base import AttemptRow, ChangeBatch
from panray.submission import build_campaign

from helpers import production_catalog
from helpers import wait_for as _wait_for


def _attempt(job_id: int, nr: int, status: str, pss_kb: int | None) -> AttemptRow:
    return AttemptRow(job_id, nr, status, "USDF", "p", 1.0, 2.0, None, None, None, 1000, pss_kb, None)


def test_jobs_show_max_pss_of_the_latest_attempt_per_core(store_url: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    jobs = [Job(name="quad", label="isr", request_cpus=4), Job(name="lost", label="isr"),
            Job(name="waiting", label="isr")]
    store = open_store(store_url)
    [sub] = store.submit(build_campaign(Campaign(name="c", workflows=[Workflow(name="w", jobs=jobs)]),
                                        production_catalog())).workflows  # explicit limits: 4 cores fit
    quad, lost = sub.first_job_id, sub.first_job_id + 1
    store.apply(ChangeBatch(attempts=[
        _attempt(quad, 1, "failed", 3 * 2**20), _attempt(quad, 2, "finished", 2 * 2**20),
        _attempt(lost, 1, "failed", 2**19), _attempt(lost, 2, "failed", None),  # lost pilot: nothing measured
    ]))
    assert store.max_pss(sub.workflow_id) == {quad: 2 * 2**20}
    store.close()

    cli = ["--home", str(tmp_path / "home"), "--db", store_url, "jobs", str(sub.workflow_id)]
    assert main(cli) == 0
    header, _rule, *rows = capsys.readouterr().out.splitlines()
    assert "max PSS GB" in header and "PSS/core GB" in header
    assert "2.000" in rows[0] and "0.500" in rows[0]
    assert ".000" not in rows[1] + rows[2]                                  # nothing measured: blank
    assert main([*cli, "--json"]) == 0
    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert (records["quad"]["max_pss_kb"], records["quad"]["max_pss_gb"], records["quad"]["max_pss_per_core_gb"]) \
        == (2 * 2**20, 2.0, 0.5)
    assert records["lost"]["max_pss_kb"] is None and records["waiting"]["max_pss_per_core_gb"] is None


#: Logs ten lines 0.2 s apart; after the fifth it waits until the test has seen a line printed,
#: which proves that ``--follow`` prints while the job is still running.
TALKER = """
import pathlib, sys, time
marker, gate = sys.argv[1], pathlib.Path(sys.argv[2])
for i in range(10):
    if i == 5:
        deadline = time.monotonic() + 60
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    print(marker, i, flush=True)
    time.sleep(0.2)
"""


def test_logs_follow_prints_lines_as_they_come_and_ends_with_the_job(cluster: Panray, tmp_path: Path) -> None:
    marker, gate = f"talk-{uuid.uuid4().hex[:8]}", tmp_path / "gate"
    job = Job(name="talker", label="talk", command=[sys.executable, "-c", TALKER, marker, str(gate)])
    [wf_id] = cluster.submit(Workflow(name="follow", jobs=[job]))
    [row] = cluster.jobs(wf_id)
    follow = subprocess.Popen([sys.executable, "-m", "panray.cli", "--home", str(cluster.settings.home),
                               "--db", cluster.settings.resolved_db_url, "logs", str(row.job_id), "--follow"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed: list[str] = []

    def read() -> None:
        assert follow.stdout is not None
        for line in follow.stdout:
            printed.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        _wait_for(lambda: any(marker in line for line in printed), timeout=30, what="a first line from --follow")
        assert cluster.store.job(row.job_id).status == "running"
        gate.touch()
        assert follow.wait(timeout=30) == 0, follow.stderr.read()  # type: ignore[union-attr]
    finally:
        follow.kill()
    reader.join(timeout=10)
    assert cluster.store.job(row.job_id).status == "finished"
    assert [line.split(": ", 1)[1].strip() for line in printed if marker in line] == [f"{marker} {i}" for i in range(10)]
