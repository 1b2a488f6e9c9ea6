"""The command line: bad input gives one clear line and exit code 2, no traceback, nothing stored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from panray.cli import main


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "panray.cli", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: w\njobs:\n- {name: a, label: x, parents: [b]}\n- {name: b, label: x, parents: [a]}\n",
         "cycle in job graph: a -> b -> a"),
        ("name: w\njobs:\n- {name: a, label: x, parents: [zz]}\n", "job 'a' names parent 'zz'"),
        ("name: w\njobs:\n- {name: a, label: x}\n- {name: a, label: y}\n", "duplicate job names: 'a'"),
        ("name: w\njobs:\n- {name: a, label: x, site: Mars}\n", "unknown site 'Mars'; known sites: FrDF, UKDF, USDF"),
        ("name: w\njobs:\n- {name: a, label: x, request_memory: -5}\n", "job 'a' (jobs[0]): request_memory"),
        ("name: w\njobs: [\n", "cannot read"),
    ],
)
def test_bad_workflow_file_gives_one_line(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "wf.yaml"
    f.write_text(text)
    r = _run(tmp_path / "home", "submit", str(f))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert expected in lines[0]
    st = _run(tmp_path / "home", "status", "--json")
    assert st.returncode == 0 and st.stdout.strip() == "[]"  # nothing stored


def test_status_and_jobs_read_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from panray import Job, Settings, Workflow
    from panray.sites import load_catalog
    from panray.store import open_store
    from panray.submission import build_campaign
    from panray.models import Campaign

    home = tmp_path / "home"
    store = open_store(Settings(home=home).resolved_db_url)
    wf = Workflow(name="w1", owner="alice", jobs=[Job(name="a", label="isr"), Job(name="b", label="calib", parents=["a"])])
    store.submit(build_campaign(Campaign(name="c", workflows=[wf]), load_catalog()))
    store.close()
    assert main(["--home", str(home), "status"]) == 0
    out = capsys.readouterr().out
    assert "w1" in out and "alice" in out and "New" in out and "registered:2" in out
    assert main(["--home", str(home), "jobs", "1", "--status", "pending"]) == 0
    out = capsys.readouterr().out
    assert "1 of 3" in out and "calib" in out


def test_bench_runs_a_benchmark_script(tmp_path: Path) -> None:
    r = _run(tmp_path / "home", "bench", "submit", "--jobs", "500", "--backends", "sqlite")
    assert r.returncode == 0, r.stderr[-2000:]
    row = next(line for line in r.stdout.splitlines() if line.startswith("sqlite"))
    from panray.dag import drp

    assert row.split()[1] == str(len(drp(500))) and row.split()[-1] == "yes"  # every job stored
