"""A real ``bps submit`` of a mock quantum graph on a local SQLite butler, run by ``panray serve``.

The graph is built here with ``lsst.pipe.base.tests.mocks`` (two chained mock tasks over two
detectors of the ``base.yaml`` test instrument); bps turns it into ``pipetask pre-exec-init-qbb``,
one ``pipetask run-qbb`` per quantum and the final ``butler aggregate-graph`` job, all real
processes on the server's pilots. The submit YAML's only WMS line is ``wmsServiceClass``; the rest
is payload configuration any backend needs (``--mock-storage-classes`` lets the final job read
the mocks' storage classes, ``${CTRL_MPEXEC_DIR}/bin/pipetask`` is where pip puts pipetask).
"""

from __future__ import annotations

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
requestMemory: 1000
extraAggregateOptions: --mock-storage-classes
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
    out = subprocess.run([BPS, *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _submit_and_wait(tmp_path: Path, env: dict[str, str], fail_detector: int | None) -> tuple[str, Path, Panray]:
    """``bps submit`` returns while the run goes on; wait (on the store) until it has ended."""
    repo = tmp_path / "repo"
    qgraph = _make_repo(repo, fail_detector)
    config = tmp_path / "submit.yaml"
    config.write_text(SUBMIT_YAML.format(repo=repo, output=OUTPUT, qgraph=qgraph, submit=tmp_path / "submit"))
    out = _bps("submit", str(config), env=env)
    run_id = re.search(r"^Run Id: (\S+)$", out, re.M)[1]
    pr = Panray(Settings(home=Path(env["PANRAY_HOME"])))
    wf_id = RunRef.parse(run_id).workflow_id
    assert not pr.is_final(wf_id), "bps submit should return before the run ends"
    deadline = time.monotonic() + 120
    while not pr.is_final(wf_id):
        assert time.monotonic() < deadline, f"run {run_id} still {pr.status(wf_id)[0].status}"
        time.sleep(0.5)
    return run_id, repo, pr


def _report_row(report: str, label: str) -> list[str]:
    return next(line.split() for line in report.splitlines() if line.split()[:1] == [label])


def _state_counts(report: str, label: str) -> dict[str, int]:
    """WmsStates -> jobs of ``label`` (or TOTAL) from the detailed table of ``bps report``."""
    header = next(line.split() for line in report.splitlines() if "EXPECTED" in line.split())
    return dict(zip(header, map(int, _report_row(report, label)[1:]), strict=True))


@pytest.mark.slow
def test_bps_submit_mock_graph_succeeds(tmp_path: Path, env: dict[str, str]) -> None:
    run_id, repo, pr = _submit_and_wait(tmp_path, env, fail_detector=None)
    with pr:
        jobs = pr.jobs(RunRef.parse(run_id).workflow_id)
    assert {j.label for j in jobs} == {"pipetaskInit", "a", "b", "finalJob"} and len(jobs) == 6
    assert {j.status for j in jobs} == {"finished"}
    with Butler.from_config(str(repo)) as butler:  # the final job ingested the outputs into the chain
        for dataset_type in OUTPUT_TYPES:
            refs = butler.query_datasets(dataset_type, collections=OUTPUT)
            assert sorted(r.dataId["detector"] for r in refs) == list(DETECTORS)
            assert all(butler.get(r) is not None for r in refs)
    report = _bps("report", "--id", run_id, env=env)
    counts = _state_counts(report, "TOTAL")
    assert (counts["SUCCEEDED"], counts["FAILED"], counts["PRUNED"], counts["EXPECTED"]) == (6, 0, 0, 6)


@pytest.mark.slow
def test_bps_submit_failed_quantum_prunes_and_final_job_runs(tmp_path: Path, env: dict[str, str]) -> None:
    run_id, repo, pr = _submit_and_wait(tmp_path, env, fail_detector=1)
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
    state = subprocess.run([BPS, "status", "--id", run_id], capture_output=True, text=True, timeout=60, env=env)
    assert "status: FAILED" in state.stdout + state.stderr
