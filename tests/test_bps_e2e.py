"""A real ``bps submit`` of a mock quantum graph on a local SQLite butler, run by ``panray serve``.

The graph is built here with ``lsst.pipe.base.tests.mocks`` (two chained mock tasks over two
detectors of the ``base.yaml`` test instrument); bps turns it into ``pipetask pre-exec-init-qbb``,
one ``pipetask run-qbb`` per quantum and the final ``butler aggregate-graph`` job, all real
processes on the server's pilots. The submit YAML's only WMS line is ``wmsServiceClass``; the rest
is payload configuration any backend needs (``--mock-storage-classes`` lets the final job read
the mocks' storage classes, ``${CTRL_MPEXEC_DIR}/bin/pipetask`` is where pip puts pipetask).

The successful run is what a user first tries: bps's default ``finalJob`` (16 cores, 32768 MB,
``-j 16``), which the shipped catalog clamps to this machine, and relative ``submitPath``,
``qgraphFile`` and ``butlerConfig``, with bps run in the test's directory. The failing run keeps
absolute paths and a one-core final job, so both ways are covered. Most of each test's time is
process start-up (bps, every ``pipetask``, ``butler``: seconds of imports each), so each test runs
one ``bps submit`` and one ``bps report`` and reads everything else from the store and the butler.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from lsst.daf.butler import Butler
    from lsst.pipe.base.tests.mocks import DirectButlerRepo, DynamicTestPipelineTaskConfig
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.fail(f"lsst-ctrl-bps is not installed (pip install 'panray[bps]'): {exc}", pytrace=False)

from panray import Panray, Settings
from panray.bps import RunRef
from panray_server import running_server

BPS = str(Path(sys.executable).parent / "bps")
OUTPUT = "u/tester/mock"
DETECTORS = (1, 2)
#: Seconds a run may take: the runs here took 35-110 s on a 2-core machine at load 30-57, where
#: one ``pipetask`` start took up to 50 s.
RUN_DEADLINE = 300
#: a -> dataset_auto1 -> b -> dataset_auto2, per detector
OUTPUT_TYPES = ("dataset_auto1", "dataset_auto2")

SUBMIT_YAML = """\
wmsServiceClass: panray.bps.PanrayService
project: test
campaign: panray
operator: tester
payload:
  payloadName: mock
  butlerConfig: {repo}
  output: {output}
  outputRun: {output}/run
qgraphFile: {qgraph}
submitPath: {submit}
extraAggregateOptions: --mock-storage-classes
"""
#: What the failing run adds: a final job of one core and small memory requests.
SMALL_REQUESTS = """\
requestMemory: 1000
finalJob:
  requestCpus: 1
  requestMemory: 1000
"""


def _make_repo(root: Path, fail_detector: int | None) -> Path:
    """A SQLite butler with mock inputs and a saved quantum graph; task ``a`` fails on ``fail_detector``."""
    with Butler.from_config(Butler.makeRepo(str(root)), writeable=True) as butler:
        repo = DirectButlerRepo(butler, "base.yaml")
        a = DynamicTestPipelineTaskConfig()
        if fail_detector is not None:
            a.fail_condition = f"detector = {fail_detector}"
        repo.add_task("a", dimensions=["detector"], config=a)
        repo.add_task("b", dimensions=["detector"])
        repo.pipeline_graph.resolve(butler.registry)
        repo.insert_datasets("dataset_auto0", where=f"instrument = 'Cam1' AND detector IN {DETECTORS}")
        builder = repo.make_quantum_graph_builder(output_run=f"{OUTPUT}/run", insert_mocked_inputs=False)
        qgraph = root / "mock.qg"
        builder.finish(output=OUTPUT, attach_datastore_records=True).write(qgraph)
    return qgraph


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A ``panray serve`` for the module; its pilots run pip-installed pipetask and butler."""
    home = tmp_path_factory.mktemp("panray-home")
    base = {k: v for k, v in os.environ.items() if not k.startswith("PANRAY_")}
    env = {**base, "PANRAY_HOME": str(home), "CTRL_MPEXEC_DIR": sys.prefix, "DAF_BUTLER_DIR": sys.prefix,
           "BPS_WMS_SERVICE_CLASS": "panray.bps.PanrayService"}
    with running_server(home, env):
        yield env


def _bps(*args: str, env: dict[str, str], cwd: Path | None = None) -> str:
    """stdout and stderr of a bps command that succeeded (bps logs to stderr)."""
    out = subprocess.run([BPS, *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def _submit_and_wait(tmp_path: Path, env: dict[str, str], fail_detector: int | None, *,
                     relative: bool) -> tuple[str, Path, Panray, str]:
    """``bps submit`` (run in ``tmp_path``) returns while the run goes on; wait (on the store) until it
    has ended. ``relative``: the submit YAML names its paths relative to ``tmp_path`` and keeps bps's
    default final job; else absolute paths and small requests. Returns bps submit's output too."""
    repo = tmp_path / "repo"
    qgraph = _make_repo(repo, fail_detector)
    config = tmp_path / "submit.yaml"
    paths = dict(repo="repo", qgraph="repo/mock.qg", submit="submit") if relative else \
        dict(repo=repo, qgraph=qgraph, submit=tmp_path / "submit")
    config.write_text(SUBMIT_YAML.format(output=OUTPUT, **paths) + ("" if relative else SMALL_REQUESTS))
    out = _bps("submit", config.name, env=env, cwd=tmp_path)
    run_id = re.search(r"^Run Id: (\S+)$", out, re.M)[1]
    pr = Panray(Settings(home=Path(env["PANRAY_HOME"])))
    wf_id = RunRef.parse(run_id).workflow_id
    assert not pr.is_final(wf_id), "bps submit should return before the run ends"
    deadline = time.monotonic() + RUN_DEADLINE
    while not pr.is_final(wf_id):
        assert time.monotonic() < deadline, f"run {run_id} still {pr.status(wf_id)[0].status}"
        time.sleep(0.5)
    return run_id, repo, pr, out


def _report_row(report: str, label: str) -> list[str]:
    return next(line.split() for line in report.splitlines() if line.split()[:1] == [label])


def _run_state(report: str, run_id: str) -> str:
    """The STATE column of the run's row in ``bps report``'s summary table."""
    header = next(line.split() for line in report.splitlines() if "STATE" in line.split())
    row = next(line.split() for line in report.splitlines() if run_id in line.split())
    return row[header.index("STATE") - len(header) + len(row)]


def _state_counts(report: str, label: str) -> dict[str, int]:
    """WmsStates -> jobs of ``label`` (or TOTAL) from the detailed table of ``bps report``."""
    header = next(line.split() for line in report.splitlines() if "EXPECTED" in line.split())
    return dict(zip(header, map(int, _report_row(report, label)[1:]), strict=True))


@pytest.mark.slow
def test_bps_submit_with_bps_defaults_and_relative_paths_succeeds(tmp_path: Path, env: dict[str, str]) -> None:
    """Issue 17: bps's default final job never ran (no site took 16 cores) and relative paths were
    joined twice; here both are as a user first writes them, and the butler holds every output."""
    run_id, repo, pr, out = _submit_and_wait(tmp_path, env, fail_detector=None, relative=True)
    cores = min(16, os.cpu_count() or 1)
    with pr:
        wf_id = RunRef.parse(run_id).workflow_id
        jobs = pr.jobs(wf_id)
        final = next(j for j in jobs if j.label == "finalJob")
    assert {j.label for j in jobs} == {"pipetaskInit", "a", "b", "finalJob"} and len(jobs) == 6
    assert {j.status for j in jobs} == {"finished"}
    assert final.request_cpus == cores, "bps's 16 cores clamped to the machine"
    if cores < 16:
        assert "job 'finalJob' asks 32768 MB on 16 cores" in out and f"on {cores} cores" in out, out[-2000:]
    script = (tmp_path / "submit" / "final_job.bash").read_text()
    assert f" -j {cores} " in script and "-j 16" not in script
    # every path was made absolute once, against where bps ran (the workflow as the plugin submitted it)
    submitted = json.loads((tmp_path / "submit" / "panray_workflow.json").read_text())
    commands = [j["command"] for j in [submitted["init_job"], *submitted["jobs"], submitted["final_job"]]]
    assert all(str(tmp_path / "submit" / "submit") not in c and f" {tmp_path}/repo " in c + " " for c in commands), \
        commands
    with Butler.from_config(str(repo)) as butler:  # the final job ingested the outputs into the chain
        for dataset_type in OUTPUT_TYPES:
            refs = butler.query_datasets(dataset_type, collections=OUTPUT)
            assert sorted(r.dataId["detector"] for r in refs) == list(DETECTORS)
            assert all(butler.get(r) is not None for r in refs)
    report = _bps("report", "--id", run_id, env=env)
    counts = _state_counts(report, "TOTAL")
    assert (counts["SUCCEEDED"], counts["FAILED"], counts["PRUNED"], counts["EXPECTED"]) == (6, 0, 0, 6)
    assert _run_state(report, run_id) == "SUCCEEDED"


@pytest.mark.slow
def test_bps_submit_failed_quantum_prunes_and_final_job_runs(tmp_path: Path, env: dict[str, str]) -> None:
    run_id, repo, pr, _ = _submit_and_wait(tmp_path, env, fail_detector=1, relative=False)
    with pr:
        by_name = {(j.label, j.name.rsplit("_", 1)[-1]): j for j in pr.jobs(RunRef.parse(run_id).workflow_id)}
    assert by_name["a", "1"].status == "failed" and by_name["a", "1"].exit_code == 1
    assert by_name["b", "1"].status == "closed"  # pruned: its input never appeared
    assert by_name["a", "2"].status == by_name["b", "2"].status == "finished"
    assert by_name["finalJob", "finalJob"].status == "finished"
    with Butler.from_config(str(repo)) as butler:  # detector 2 made it through the final job
        refs = butler.query_datasets("dataset_auto2", collections=OUTPUT, explain=False)
        assert [r.dataId["detector"] for r in refs] == [2]
    report = _bps("report", "--id", run_id, "--return-exit-codes", env=env)
    assert run_id in report
    assert _state_counts(report, "b")["PRUNED"] == 1 and _state_counts(report, "finalJob")["SUCCEEDED"] == 1
    # payload error count and codes of label a: one failure, pipetask's exit code 1
    assert _report_row(report.split("PAYLOAD ERROR COUNT", 1)[1], "a")[1:3] == ["1", "1"]
    assert _run_state(report, run_id) == "FAILED"  # a run with a failed job, as bps status says


@pytest.mark.slow
def test_bps_ping_names_the_server_it_would_use(env: dict[str, str]) -> None:
    """With a ``panray serve`` in the home, ``bps ping`` joins it and names it (it said ``embedded``)."""
    info = json.loads((Path(env["PANRAY_HOME"]) / "cluster.json").read_text())
    out = _bps("ping", env=env)
    assert f"panray server pid {info['pid']} on {info['address']} (home {env['PANRAY_HOME']})" in out, out[-2000:]
