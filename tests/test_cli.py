"""The command line: bad input gives one clear line and exit code 2, no traceback, nothing stored."""

from __future__ import annotations

import json
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
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("sqlite")]
    from panray.dag import drp

    assert [row[1] for row in rows] == ["models", "table"]                  # both submit paths, side by side
    assert all(row[2] == str(len(drp(500))) and row[-1] == "yes" for row in rows)  # every job stored


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


# -- issue 16: listings that scale, triage, control, honest liveness -----------------------------

def _staged(home: Path) -> dict[str, int]:
    """A workflow run through the core (no Ray) into the home's store: isr:0 finished, isr:1..3 failed
    opening a file (payload, exit 3), calib:0 out of memory (exit 137), calib:1 pruned, one pending."""
    import json as _json

    from panray import Campaign, Job, Settings, Workflow
    from panray.core.cluster_core import make_core
    from panray.core.messages import Outcome
    from panray.logging_bridge import attempt_prefix, make_object_store, make_sink
    from panray.logging_bridge.entries import make_entry
    from panray.sites import load_catalog
    from panray.store import open_store
    from panray.submission import build_campaign

    settings = Settings(home=home)
    jobs = [Job(name=f"isr:{d}", label="isr", max_attempts=1, inputs=[f"raw_{d}"], environment={"BAND": "r"},
                tags={"detector": d}, command=["bash", "-c", 'echo "$1"', "x", f"detector {d}"]) for d in range(4)]
    jobs += [Job(name="calib:0", label="calib", parents=["isr:0"], command=["true"], max_attempts=1),
             Job(name="calib:1", label="calib", parents=["isr:1"], command=["true"]),
             Job(name="late", label="late", parents=["calib:0"], command=["true"])]
    store = open_store(settings.resolved_db_url)
    store.submit(build_campaign(Campaign(name="c", workflows=[Workflow(name="triage", owner="alice", jobs=jobs)]),
                                load_catalog()))
    core = make_core(store.load_workflow(1))
    ready = core.start(1.0)
    core.queued(ready, ["USDF"] * len(ready), 1.0)

    def out(i: int, exit_code: int, error: str | None, diag: str | None, t: float) -> Outcome:
        return Outcome(core.first_id + i, core.attempt[i], "pilot:USDF:0", "USDF", t, t + 1, t + 2 + i, exit_code,
                       error, diag, None, None)

    ready = core.ended([out(0, 0, None, None, 2.0)] + [
        out(d, 3, "payload", f"FileNotFoundError: /data/visit_{d}{d}/raw.fits", 2.0) for d in (1, 2, 3)])
    core.queued(ready, ["FrDF"], 5.0)
    core.ended([out(4, 137, "memory", "killed: PSS 9000 kB above request 2000 MB", 6.0)])
    store.apply(core.drain_changes(10.0))
    store.close()
    ids = {j.name: core.first_id + j.idx for j in core.rows}
    sink = make_sink(settings)
    base = {"PandaJobID": str(ids["isr:1"]), "TaskID": str(core.rows[1].task_id), "attemptNr": 1, "label": "isr"}
    sink.write([make_entry(_json.dumps({"message": f"line {n}", "levelName": lvl, "timestamp": 1700000000 + n}),
                           base, "stderr" if lvl == "ERROR" else "stdout")
                for n, lvl in enumerate(["INFO", "ERROR", "INFO", "ERROR"])])
    sink.close()
    (home / "stderr.txt").write_bytes(b"Traceback: boom\n")
    make_object_store(settings).put(home / "stderr.txt",
                                    attempt_prefix(1, core.rows[1].task_id, ids["isr:1"], 1) + "payload.stderr")
    return ids


def test_tasks_jobs_filters_and_errors_grouping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json as _json

    home = tmp_path / "home"
    ids = _staged(home)
    cli = ["--home", str(home)]
    assert main([*cli, "tasks", "1"]) == 0
    header, _rule, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["task", "label", "chunk", "status"]
    assert [r.split()[1] for r in rows] == ["isr", "calib", "late"]
    assert "failed:3" in rows[0] and "finished:1" in rows[0]

    assert main([*cli, "jobs", "1", "--label", "isr", "--limit", "2", "--offset", "1"]) == 0
    captured = capsys.readouterr()
    header, _rule, *rows = captured.out.splitlines()
    assert "start" in header.split() and "end" in header.split() and "duration" in header.split()
    assert [r.split()[0] for r in rows] == [str(ids["isr:1"]), str(ids["isr:2"])]
    assert "2 of 4 jobs from 1; next page: --offset 3" in captured.err
    assert main([*cli, "jobs", "1", "--error", "memory", "--json"]) == 0
    [mem] = _json.loads(capsys.readouterr().out)
    assert (mem["name"], mem["exit_code"]) == ("calib:0", 137)
    assert main([*cli, "jobs", "1", "--exit-code", "3", "--sort", "duration", "--json"]) == 0
    assert [j["name"] for j in _json.loads(capsys.readouterr().out)] == ["isr:3", "isr:2", "isr:1"]  # longest first
    assert main([*cli, "jobs", "1", "--status", "failed", "--site", "FrDF", "--json"]) == 0
    assert [j["name"] for j in _json.loads(capsys.readouterr().out)] == ["calib:0"]

    assert main([*cli, "errors", "1"]) == 0
    header, _rule, *rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 2                                            # three paths fold into one cause
    assert rows[0].split()[:5] == ["3", "1", "isr", "payload", "3"] and "FileNotFoundError: <path>" in rows[0]
    assert rows[1].split()[:5] == ["1", "2", "calib", "memory", "137"] and "PSS <n> kB above request <n> MB" in rows[1]
    assert main([*cli, "errors", "1", "--json"]) == 0
    assert _json.loads(capsys.readouterr().out)[0]["example_job_id"] == ids["isr:1"]


def test_job_decodes_the_command_and_explain_shows_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    ids = _staged(home)
    assert main(["--home", str(home), "job", str(ids["isr:2"])]) == 0
    out = capsys.readouterr().out
    assert "command: bash -c 'echo \"$1\"' x 'detector 2'" in out
    assert "environment: BAND=r" in out and 'tags: {"detector": 2}' in out
    assert "1 of 1" in out                                          # attempt n of m
    assert main(["--home", str(home), "explain", str(ids["isr:2"])]) == 0
    assert f"job {ids['isr:2']} (isr:2): inputs raw_2; memory" in capsys.readouterr().out


def test_logs_severity_tail_columns_and_stored_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    ids = _staged(home)
    job = str(ids["isr:1"])
    assert main(["--home", str(home), "logs", job]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert main(["--home", str(home), "logs", job, "--severity", "error", "--tail", "1"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("2023-11-14T22:13:23")                   # the payload's own timestamp (1700000003)
    assert f" ERROR    {job} #1 stderr isr: line 3" in line
    assert main(["--home", str(home), "logs", job, "--severity", "ERROR", "--json"]) == 0
    assert [e["message"] for e in json.loads(capsys.readouterr().out)] == ["line 1", "line 3"]
    assert main(["--home", str(home), "logs", job, "--files", "--json"]) == 0
    assert [k.rsplit("/", 1)[-1] for k in json.loads(capsys.readouterr().out)] == ["payload.stderr"]
    assert main(["--home", str(home), "logs", job, "--file", "payload.stderr"]) == 0
    assert capsys.readouterr().out == "Traceback: boom\n"
    assert main(["--home", str(home), "logs", job, "--file", "nope"]) == 2
    assert "has no stored file 'nope' for attempt latest; stored: payload.stderr" in capsys.readouterr().err


def test_hold_release_priority_recorded_without_a_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json as _json

    home = tmp_path / "home"
    ids = _staged(home)
    cli = ["--home", str(home)]
    assert main([*cli, "hold", "1"]) == 0
    assert capsys.readouterr().out.strip() == "workflow 1: held (recorded; applied when its manager runs)"
    assert main([*cli, "status", "1", "--json"]) == 0
    [st] = _json.loads(capsys.readouterr().out)
    assert st["held"] is True and st["manager_alive"] is None        # no cluster runs to ask
    assert main([*cli, "hold", "1", "--task", "2", "--json"]) == 0
    assert _json.loads(capsys.readouterr().out) == {"workflow_id": 1, "task_id": 2, "held": True, "reached": False}
    assert main([*cli, "release", "1"]) == 0 and main([*cli, "priority", "1", "9", "--job", str(ids["late"])]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "workflow 1: priority 9 for 1 jobs"
    assert main([*cli, "hold", "1", "--task", "2"]) == 0 and main([*cli, "tasks", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()[3:]
    assert [r.split()[0] for r in rows if " yes " in r] == ["2"]            # only task 2 held
    assert main([*cli, "job", str(ids["late"]), "--json"]) == 0
    assert _json.loads(capsys.readouterr().out)[0]["job"]["priority"] == 9


@pytest.mark.parametrize("args", [["tasks", "99"], ["errors", "99"], ["hold", "99"], ["release", "99"],
                                  ["priority", "99", "1"], ["retry", "99", "--job", "1"], ["jobs", "99", "--limit", "5"],
                                  ["tasks", "0"]])
def test_unknown_workflow_is_one_line_and_exit_2_for_every_command(tmp_path: Path, args: list[str],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(tmp_path / "home"), *args]) == 2
    assert capsys.readouterr().err.strip() == f"panray: error: no workflow {args[1]} in this store"


def test_submit_no_wait_without_a_server_refuses_and_stores_nothing(tmp_path: Path) -> None:
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: w\njobs:\n- {name: a, label: x}\n")
    r = _run(tmp_path / "home", "submit", "--no-wait", str(wf))
    assert r.returncode == 2 and "start one with `panray serve`" in r.stderr and len(r.stderr.splitlines()) == 1
    assert _run(tmp_path / "home", "status", "--json").stdout.strip() == "[]"
    _staged(tmp_path / "home2")
    r = _run(tmp_path / "home2", "retry", "1", "--job", "2", "--no-wait")
    assert r.returncode == 2 and r.stderr.strip() == (
        "panray: error: --no-wait needs a running panray: start one with `panray serve` (or retry without --no-wait); "
        "nothing was changed")


def test_help_has_an_example_for_every_command_and_is_quick(tmp_path: Path) -> None:
    import time as _time

    from panray.cli import cli

    def leaves(group: object, path: list[str]) -> list[tuple[list[str], object]]:
        out = []
        for name, cmd in group.commands.items():  # type: ignore[attr-defined]
            out += leaves(cmd, [*path, name]) if hasattr(cmd, "commands") else [([*path, name], cmd)]
        return out

    for path, cmd in leaves(cli, []):
        assert "Examples:" in (cmd.help or ""), path                  # type: ignore[attr-defined]
        assert all(p.help for p in cmd.params if p.param_type_name == "option"), path  # type: ignore[attr-defined]
    t0 = _time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "panray.cli", "--help"], capture_output=True, text=True, timeout=60)
    elapsed = _time.perf_counter() - t0
    assert r.returncode == 0 and "Examples:" in r.stdout
    assert elapsed < 2.0, elapsed                                     # 0.1 s here; generous for a loaded CI
    comp = subprocess.run([sys.executable, "-m", "panray.cli"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "_PANRAY_COMPLETE": "bash_source"})
    assert "_PANRAY_COMPLETE" in comp.stdout or comp.returncode == 0


def test_progress_is_one_line_per_interval_when_redirected() -> None:
    import io

    from panray.cli_output import WaitDisplay

    stream = io.StringIO()
    display = WaitDisplay(stream, tty=False)
    step = {"workflow_id": 3, "counts": {"finished": 5, "running": 2, "failed": 1}, "total": 10, "retries": 2}
    for _ in range(50):
        display(step, False)
    display({**step, "counts": {"finished": 10}}, True)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 2
    assert "6/10 ended, 2 running, 1 failed, 2 retries" in lines[0] and "elapsed" in lines[0] and "ETA" in lines[0]
    assert lines[1].startswith("workflow 3 [####################] 10/10 ended")


def test_serve_stop_names_running_work_and_stores_it_back(tmp_path: Path) -> None:
    from panray import Campaign, Job, Workflow
    from panray.core.cluster_core import make_core
    from panray.core.messages import Started
    from panray.serve import running_work, settle
    from panray.sites import load_catalog
    from panray.store import open_store
    from panray.submission import build_campaign

    store = open_store(f"sqlite://{tmp_path}/s.db")
    wf = Workflow(name="w", jobs=[Job(name="a", label="isr", command=["true"]), Job(name="b", label="isr"),
                                  Job(name="c", label="calib", parents=["a"])])
    store.submit(build_campaign(Campaign(name="c", workflows=[wf]), load_catalog()))
    assert running_work(store).startswith("workflows 1 are not finished (0 jobs on pilots)")
    assert settle(store) == []                                   # nothing placed yet: left as it is
    core = make_core(store.load_workflow(1))
    core.queued(core.start(1.0), ["USDF", "UKDF"], 1.0)
    core.claim("pilot:USDF:0", [(core.first_id, 1)], 2.0)
    core.started([Started(core.first_id, 1, "pilot:USDF:0", 2.0, 2.5)])
    store.apply(core.drain_changes(3.0))
    assert "(1 jobs on pilots)" in running_work(store)
    assert settle(store, now=10.0) == [1]
    a, b, c = store.jobs(1)
    assert (a.status, a.attempt_nr, b.status, c.status) == ("defined", 2, "defined", "pending")
    assert [h.cause for h in store.history(a.job_id)][-2:] == ["control plane restarted", "retry rule"]
    assert a.error_class is None and store.attempts(a.job_id)[-1].diag.startswith("lost: the control plane restarted")
    store.close()


def test_the_clusters_warnings_go_to_stderr_not_into_json_output(cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """A driver prints the raylet's warnings where Ray's error listener prints them; stdout stays the output."""
    from ray._private import worker

    capsys.readouterr()
    worker.print_to_stdstream({"lines": ["WARNING: 27 PYTHON worker processes (test)"], "pid": "raylet",
                               "is_err": False}, ignore_prefix=False)
    out, err = capsys.readouterr()
    assert "PYTHON worker processes (test)" in err and "PYTHON worker" not in out
