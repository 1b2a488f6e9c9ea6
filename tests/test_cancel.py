"""Cancelling part of a running workflow, through the command line, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from panray import Job, Panray, Workflow
from panray.cli import main

from helpers import wait_for as _wait_for
from helpers import alive as _alive

SLEEPER = 'echo $$ > "$1/.$2"; mv "$1/.$2" "$1/$2"; exec sleep 300'


def test_cancel_one_task_and_one_job_of_a_running_workflow(pr: Panray, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()

    def sleeper(name: str, label: str) -> Job:
        return Job(name=name, label=label, command=["bash", "-c", SLEEPER, "s", str(pids), name])

    jobs = [sleeper("v0", "victim"), sleeper("v1", "victim"), sleeper("lone", "misc"),
            Job(name="misc_ok", label="misc", command=["true"]),
            Job(name="child", label="after", parents=["v0"], command=["true"]),
            Job(name="grandchild", label="after2", parents=["child"], command=["true"]),
            Job(name="ok0", label="ok", command=["true"]), Job(name="ok1", label="ok", command=["true"])]
    final = Job(name="final", label="finalJob", command=["bash", "-c", 'touch "$1"', "f", str(tmp_path / "final")])
    [wf_id] = pr.submit(Workflow(name="partial-cancel", jobs=jobs, final_job=final))
    by_name = {j.name: j for j in pr.jobs(wf_id)}
    _wait_for(lambda: {p.name for p in pids.iterdir()} >= {"v0", "v1", "lone"}, what="the sleepers to start")
    running = {name: int((pids / name).read_text()) for name in ("v0", "v1", "lone")}
    assert all(_alive(pid) for pid in running.values())

    victim_task, lone = by_name["v0"].task_id, by_name["lone"].job_id
    args = ["--home", str(pr.settings.home), "--db", pr.settings.resolved_db_url, "cancel", str(wf_id),
            "--task", str(victim_task), "--job", str(lone)]
    assert main(args) == 0
    assert f"cancel of task {victim_task}, job {lone} sent to its manager" in capsys.readouterr().out
    _wait_for(lambda: not any(_alive(pid) for pid in running.values()), timeout=10,
              what="the cancelled payloads to be killed")

    assert pr.wait([wf_id], timeout=60) == {wf_id: "SubFinished"}
    st = {j.name: (j.status, j.error_class) for j in pr.jobs(wf_id)}
    assert st["v0"] == st["v1"] == st["lone"] == ("cancelled", "cancelled")
    assert st["child"] == st["grandchild"] == ("closed", "pruned")
    assert {st[n][0] for n in ("misc_ok", "ok0", "ok1", "final")} == {"finished"}
    assert (tmp_path / "final").exists()
    assert main(["--home", str(pr.settings.home), "--db", pr.settings.resolved_db_url, "cancel", str(wf_id),
                 "--task", "999999"]) == 2                                 # a task of another workflow
