"""The command line: bad input gives one clear line and exit code 2, no traceback, nothing stored."""

from __future__ import annotations

import os
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


def _cli_error_cases(tmp: Path) -> list[tuple[list[str], str]]:
    """(arguments, expected message) for every expected failure of issue 20's CLI table."""
    import sqlite3

    from panray.store import open_store

    (tmp / "file").write_text("x")
    (tmp / "dir").mkdir()
    (tmp / "corrupt.db").write_bytes(b"garbage" * 2000)
    good = open_store(f"sqlite://{tmp}/good.db")
    good.close()
    (tmp / "truncated.db").write_bytes((tmp / "good.db").read_bytes()[:20000])
    con = sqlite3.connect(tmp / "noschema.db")
    con.execute("CREATE TABLE jobs (x)")
    con.commit()
    con.close()
    con = sqlite3.connect(tmp / "good.db")
    con.execute("UPDATE schema_version SET version = 99")
    con.commit()
    con.close()
    os.mkfifo(tmp / "fifo.yaml")
    (tmp / "list.yaml").write_text("- a\n")
    return [
        (["job", "99"], "no job 99 in this store"),
        (["jobs", "99"], "no workflow 99 in this store"),
        (["job", "1180591620717411303424"], "no job 1180591620717411303424 in this store"),
        (["jobs", "1180591620717411303424"], "no workflow 1180591620717411303424 in this store"),
        (["explain", "5"], "no job 5 in this store"),
        (["logs", "7"], "no job 7 in this store"),
        (["cancel", "9"], "no workflow 9 in this store"),
        (["retry", "9"], "no workflow 9 in this store"),
        (["status", "9"], "no workflow 9 in this store"),
        (["--db", "sqlite:///dev/null/x.db", "status"], "cannot create its directory"),
        (["--db", f"sqlite://{tmp}/dir", "status"], "not a regular file"),
        (["--db", "sqlite:///proc/self/status", "status"], "cannot open"),
        (["--home", str(tmp / "file"), "status"], "cannot create its directory"),
        (["--db", f"sqlite://{tmp}/corrupt.db", "status"], "file is not a database"),
        (["--db", f"sqlite://{tmp}/truncated.db", "status"], "malformed"),
        (["--db", f"sqlite://{tmp}/noschema.db", "status"], "no schema_version"),
        (["--db", f"sqlite://{tmp}/good.db", "status"], "has schema version [99], this panray needs"),
        (["--db", "postgresql://u:secret@127.0.0.1:1/x", "status"], "postgresql://u:***@127.0.0.1:1/x: cannot connect"),
        (["--db", "postgresql://%%%", "status"], "cannot connect"),
        (["--db", "mysql://x", "status"], "expected sqlite:///abs/path or postgresql://"),
        (["prompt", "notify", "--visit", "1", "--detectors", "a,b"], "--detectors 'a,b': expected comma-separated"),
        (["submit", "/dev/zero"], "/dev/zero: cannot read: not a regular file"),
        (["submit", str(tmp / "fifo.yaml")], "not a regular file (FIFO, device or socket)"),
        (["submit", str(tmp / "dir")], "cannot read: a directory"),
        (["--config", str(tmp / "list.yaml"), "status"], "expected a mapping of settings (key: value), got a list"),
    ]


def test_cli_error_table_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    for args, expected in _cli_error_cases(tmp_path):
        code = main(["--home", str(home), *args])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, (args, err)
        assert len(lines) == 1 and lines[0].startswith("panray: error: ") and expected in lines[0], (args, err)
        assert "secret" not in err


def test_bad_settings_from_the_environment_give_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PANRAY_RELEASE_BATCH", "0")
    assert main(["--home", str(tmp_path), "status"]) == 2
    assert capsys.readouterr().err.strip() == (
        "panray: error: settings (environment): release_batch: Input should be greater than or equal to 1 (got '0')")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    r = _run(tmp_path / "home", "--debug", "job", "99")
    assert r.returncode == 1 and "Traceback" in r.stderr and "NotFoundError: no job 99 in this store" in r.stderr


def test_unreachable_ray_address_fails_before_storing(tmp_path: Path) -> None:
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: w\njobs:\n- {name: a, label: x}\n")
    env = {**os.environ, "PANRAY_RAY_ADDRESS": "127.0.0.1:1"}
    r = subprocess.run([sys.executable, "-m", "panray.cli", "--home", str(tmp_path / "home"), "submit", "--no-wait",
                        str(wf)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and r.stderr.strip() == "panray: error: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused"
    assert _run(tmp_path / "home", "status", "--json").stdout.strip() == "[]"
