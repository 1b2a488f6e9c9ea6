"""Clustering: rules, the cluster runner, per-quantum truth in the core, and end to end."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest

from panray import Job, Panray, Workflow
from panray.core.cluster_core import ClusteredCore
from panray.cluster_format import RESULTS_FILE, SKIP_ENV, ClusterSpec, QuantumSpec, read_results
from panray.core.cluster_runner import run_cluster
from panray.core.messages import Outcome
from panray.cli import main as cli_main
from panray.config import Settings
from panray.dag import ClusterRule, build_graph, ci_hsc, cluster_quanta, parse_rules
from panray.exceptions import ClusterCycleError, WorkflowValidationError
from panray.logging_bridge import make_sink
from panray.sites import load_catalog
from panray.submission import build_campaign, build_workflow

from helpers import core_of

CATALOG = load_catalog(Settings().sites_file)
PER_DETECTOR = ClusterRule(name="single", labels=["isr", "characterizeImage", "calibrate"],
                         dimensions=["visit", "detector"])


def _ci_hsc_jobs() -> list[Job]:
    s = ci_hsc(visits=2, detectors=2)
    return [Job(name=n, label=lb, parents=p, tags=t, command=["true"])
            for n, lb, p, t in zip(s.names, s.labels, s.parents, s.tags)]


# -- rules: pure ----------------------------------------------------------------------------


def test_rule_groups_labels_by_dimensions_in_dependency_order() -> None:
    s = ci_hsc(visits=2, detectors=2)
    g = build_graph(s.names, s.parents)
    rule = ClusterRule(name="single", labels=["calibrate", "isr", "characterizeImage"], dimensions=["visit", "detector"])
    c = cluster_quanta(g, s.labels, s.tags, [rule])
    first = c.members[c.names.index("single:visit=0,detector=1")]
    assert [s.names[q] for q in first] == ["isr:v0000:d001", "characterizeImage:v0000:d001", "calibrate:v0000:d001"]
    assert len(c) == len(s) - 2 * 4  # 4 visit/detector groups of 3 quanta each become one job
    assert sorted(q for m in c.members for q in m) == list(range(len(s)))


def test_max_size_and_n_per_label() -> None:
    s = ci_hsc(visits=4, detectors=3)
    g = build_graph(s.names, s.parents)
    c = cluster_quanta(g, s.labels, s.tags, parse_rules("warp=makeWarp@visit:1;fp=forcedPhotCcd:5"))
    fp = [m for m, name in zip(c.members, c.names) if name.startswith("fp#")]
    assert [len(m) for m in fp] == [5, 5, 2]  # 12 forcedPhotCcd quanta, 5 per job
    assert [c.names[k] for k, m in enumerate(c.members) if len(m) == 1 and c.labels[k] == "warp"][:2] == [
        "warp:visit=0", "warp:visit=1"]


def test_cycle_is_refused_naming_the_quanta() -> None:
    bad = ClusterRule(name="isrcal", labels=["isr", "calibrate"], dimensions=["visit", "detector"])
    wf = Workflow(name="w", jobs=_ci_hsc_jobs(), clustering=[bad])
    with pytest.raises(ClusterCycleError) as err:
        build_workflow(wf, CATALOG)
    msg = str(err.value)
    assert "isr:v0000:d000 -> characterizeImage:v0000:d000" in msg
    assert "characterizeImage:v0000:d000 -> calibrate:v0000:d000" in msg
    assert msg.startswith("clustering would create a cycle between jobs isrcal:visit=0,detector=0 -> ")


def test_rule_errors_name_the_problem() -> None:
    with pytest.raises(WorkflowValidationError, match="no quantum has label 'nope'"):
        build_workflow(Workflow(name="w", jobs=_ci_hsc_jobs(), clustering=[ClusterRule(name="x", labels=["nope"])]),
                       CATALOG)
    rule = ClusterRule(name="x", labels=["isr"], dimensions=["band", "filter"])
    with pytest.raises(WorkflowValidationError, match="quantum 'isr:v0000:d000' has no dimension 'filter'"):
        build_workflow(Workflow(name="w", jobs=_ci_hsc_jobs(), clustering=[rule]), CATALOG)
    with pytest.raises(WorkflowValidationError, match="expected NAME=LABEL"):
        parse_rules("justaname")


def test_workflow_file_with_clustering(tmp_path: Path) -> None:
    from panray.models import load_campaign_file

    path = tmp_path / "wf.yaml"
    path.write_text(json.dumps({
        "name": "w", "jobs": [j.model_dump() for j in _ci_hsc_jobs()],
        "clustering": [{"name": "single", "labels": ["isr", "characterizeImage", "calibrate"],
                        "dimensions": ["visit", "detector"], "max_size": 3}],
    }))
    new = build_campaign(load_campaign_file(path), CATALOG).workflows[0]
    assert len(new.jobs) == len(_ci_hsc_jobs()) - 8 and len(new.quanta) == len(_ci_hsc_jobs())


# -- the runner -----------------------------------------------------------------------------


def _q(name: str, script: str, *args: str) -> QuantumSpec:
    return QuantumSpec(name, name.split(":")[0], ["bash", "-c", script, "q", *args], {"WHO": name})


def test_runner_runs_in_order_skips_and_stops_only_descendants(tmp_path: Path) -> None:
    log = tmp_path / "order"
    step = 'echo "$WHO" >> "$1"; echo "hello from $WHO"'
    spec = ClusterSpec(
        [_q("a:1", step, str(log)), _q("b:1", step + "; exit 3", str(log)), _q("c:1", step, str(log)),
         _q("d:1", step, str(log)), _q("e:1", step, str(log))],
        deps=[[], [0], [1], [0], [3]], retry_unless_exit=[1, 2],
    )
    out, err = io.StringIO(), io.StringIO()
    code = run_cluster(spec, {3}, tmp_path, out, err)
    assert code == 3
    assert log.read_text().split() == ["a:1", "b:1", "e:1"]  # d skipped, c behind the failed b
    assert [(pos, ex) for pos, ex, *_ in read_results(tmp_path)] == [(0, 0), (1, 3), (4, 0)]
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    hello = [r for r in records if r["message"].startswith("hello")]
    assert [(r["quantum"], r["quantumLabel"], r["MDC"]["LABEL"]) for r in hello] == [
        ("a:1", "a", "a"), ("b:1", "b", "b"), ("e:1", "e", "e")]
    assert (tmp_path / RESULTS_FILE).exists()


def test_runner_exit_code_prefers_a_retryable_failure(tmp_path: Path) -> None:
    spec = ClusterSpec([_q("a:1", "exit 1"), _q("b:1", "exit 4")], [[], []], [1, 2])
    assert run_cluster(spec, set(), tmp_path, io.StringIO(), io.StringIO()) == 4
    spec = ClusterSpec([_q("a:1", "exit 2"), _q("b:1", "exit 1")], [[], []], [1, 2])
    assert run_cluster(spec, set(), tmp_path, io.StringIO(), io.StringIO()) == 2


# -- the core: per-quantum truth, no Ray ---------------------------------------------------


def _abcd_jobs(command: object = ("true",)) -> list[Job]:
    """a:k -> b:k -> c:k -> d:k for k = 1, 2."""
    jobs = []
    for k in (1, 2):
        prev: list[str] = []
        for label in "abcd":
            name = f"{label}:{k}"
            jobs.append(Job(name=name, label=label, tags={"k": k}, parents=prev, command=list(command)))
            prev = [name]
    return jobs


ABCD_RULES = [ClusterRule(name="abc", labels=["a", "b", "c"], dimensions=["k"]), ClusterRule(name="ds", labels=["d"])]


@pytest.fixture
def core() -> ClusteredCore:
    c = core_of(Workflow(name="w", jobs=_abcd_jobs(), clustering=ABCD_RULES))
    assert isinstance(c, ClusteredCore)
    return c


def _ended(core: ClusteredCore, name: str, code: int, quanta: tuple | None, attempt: int = 1) -> list[int]:
    i = core.graph.index[name]
    error = None if code == 0 else "payload"
    return core.ended([Outcome(core.first_id + i, attempt, "p", "USDF", 1.0, 1.0, 2.0, code, error, None, None,
                               None, quanta)])


def _quanta(core: ClusteredCore) -> dict[str, str]:
    from panray.statuses import JOB_CODES

    q = core.quanta
    return {name: JOB_CODES[q.status[k]].value for k, name in enumerate(q.names)}


def test_failure_for_good_prunes_exactly_its_descendants(core: ClusteredCore) -> None:
    assert sorted(core.rows[i].name for i in core.start(0.0)) == ["abc:k=1", "abc:k=2"]
    assert _ended(core, "abc:k=1", 1, ((0, 0, 1.0, 1.5), (1, 1, 1.5, 2.0))) == []  # exit 1: never retried
    assert _quanta(core) == {"a:1": "finished", "b:1": "failed", "c:1": "closed", "d:1": "closed",
                             "a:2": "pending", "b:2": "pending", "c:2": "pending", "d:2": "pending"}
    ready = _ended(core, "abc:k=2", 0, ((0, 0, 1.0, 1.2), (1, 0, 1.2, 1.4), (2, 0, 1.4, 2.0)))
    assert [core.rows[i].name for i in ready] == ["ds#0"]  # d:2 does not depend on the failure
    d = core.dispatch(ready[0], "USDF")
    assert json.loads(d.environment)[SKIP_ENV] == "0"  # d:1 (position 0) is pruned
    _ended(core, "ds#0", 0, ((1, 0, 2.0, 3.0),))
    assert _quanta(core)["d:2"] == "finished" and _quanta(core)["d:1"] == "closed"
    assert core.done and core.counts() == {"finished": 2, "failed": 1}
    batch = core.drain_changes(5.0)
    assert {q.idx: q.status for q in batch.quanta}[core.quanta.names.index("b:1")] == "failed"


def test_retry_skips_finished_quanta_and_a_never_retried_one_fails_for_good(core: ClusteredCore) -> None:
    core.start(0.0)
    # a:1 finished, b:1 failed with 3 (retryable): the job is retried without a:1
    assert [core.rows[i].name for i in _ended(core, "abc:k=1", 3, ((0, 0, 1.0, 1.5), (1, 3, 1.5, 2.0)))] == [
        "abc:k=1"]
    assert json.loads(core.dispatch(core.graph.index["abc:k=1"], "USDF").environment)[SKIP_ENV] == "0"
    # a:2 failed with 1 (never), b:2... nothing else ran; c:2 d:2 are pruned with it
    _ended(core, "abc:k=2", 1, ((0, 1, 1.0, 2.0),))
    assert _quanta(core)["a:2"] == "failed" and _quanta(core)["d:2"] == "closed"
    # second attempt of abc:k=1 finishes b:1 and c:1; ds#0 runs d:1 only
    ready = _ended(core, "abc:k=1", 0, ((1, 0, 3.0, 3.5), (2, 0, 3.5, 4.0)), attempt=2)
    assert [core.rows[i].name for i in ready] == ["ds#0"]
    q = core.quanta
    b1 = q.names.index("b:1")
    assert (q.attempt[b1], q.exit_code[b1]) == (2, 0) and q.attempt[q.names.index("a:1")] == 1
    assert json.loads(core.dispatch(ready[0], "USDF").environment)[SKIP_ENV] == "1"


# -- end to end -----------------------------------------------------------------------------


def _injected(run_dir: Path) -> Workflow:
    """a:k -> b:k -> c:k -> d:k; b:1 exits 1 (never retried), b:2 fails once with 3, then succeeds."""
    runs = run_dir / "runs.txt"
    body = 'echo "$1" >> "$2"; echo "quantum says $1"'
    commands = {
        "b:1": body + "; exit 1",
        "b:2": body + '; echo x >> "$2.b2"; [ "$(wc -l < "$2.b2")" -ge 2 ] || exit 3',
    }
    jobs = [j.model_copy(update={"command": ["bash", "-c", commands.get(j.name, body), "q", j.name, str(runs)]})
            for j in _abcd_jobs()]
    return Workflow(name="injected", jobs=jobs)


def _per_quantum(pr: Panray, wf_id: int, clustered: bool) -> dict[str, tuple[str, int, int | None]]:
    if clustered:
        return {q.name: (q.status, q.attempt_nr, q.exit_code) for q in pr.store.quanta(wf_id)}
    return {j.name: (j.status, j.attempt_nr, j.exit_code) for j in pr.jobs(wf_id)}


def test_clustered_run_matches_unclustered_and_reruns_no_finished_quantum(pr: Panray, tmp_path: Path) -> None:
    outcomes, runs = {}, {}
    for clustered in (False, True):
        run_dir = tmp_path / ("clustered" if clustered else "plain")
        run_dir.mkdir()
        wf = _injected(run_dir)
        if clustered:
            wf = wf.model_copy(update={"clustering": ABCD_RULES})
        [wf_id] = pr.submit(wf)
        assert pr.wait([wf_id], timeout=60) == {wf_id: "SubFinished"}
        outcomes[clustered] = _per_quantum(pr, wf_id, clustered)
        runs[clustered] = Counter((run_dir / "runs.txt").read_text().split())
    assert outcomes[True] == outcomes[False]
    assert outcomes[True]["b:1"] == ("failed", 1, 1) and outcomes[True]["b:2"] == ("finished", 2, 0)
    assert outcomes[True]["d:1"][0] == "closed" and outcomes[True]["d:2"][0] == "finished"
    # marker lines: a:2 finished in the first attempt of its cluster and did not run again
    assert runs[True] == runs[False] == Counter({"a:1": 1, "b:1": 1, "a:2": 1, "b:2": 2, "c:2": 1, "d:2": 1})

    jobs = {j.name: j for j in pr.jobs(wf_id)}
    assert (jobs["abc:k=2"].status, jobs["abc:k=2"].attempt_nr) == ("finished", 2)
    assert (jobs["abc:k=1"].status, jobs["ds#0"].status) == ("failed", "finished")
    summary = pr.status(wf_id)[0]
    assert summary.quanta == {"finished": 5, "failed": 1, "closed": 2} and summary.total == 3
    lines = [e for e in make_sink(pr.settings).query(job_id=jobs["abc:k=2"].job_id)
             if e.get("message", "").startswith("quantum says")]
    assert {(e["quantum"], e["quantumLabel"], e["attemptNr"]) for e in lines} >= {("a:2", "a", 1), ("c:2", "c", 2)}


def test_jobs_quanta_command(pr: Panray, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wf = Workflow(name="cli", jobs=_abcd_jobs(), clustering=ABCD_RULES)
    [wf_id] = pr.submit(wf)
    assert pr.wait([wf_id], timeout=60) == {wf_id: "Finished"}
    args = ["--db", pr.settings.resolved_db_url, "--home", str(pr.settings.home)]
    assert cli_main([*args, "jobs", str(wf_id), "--quanta", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["name"], r["status"]) for r in rows) == sorted((j.name, "finished") for j in _abcd_jobs())
    assert cli_main([*args, "status", str(wf_id)]) == 0
    assert "8/0/0/8" in capsys.readouterr().out


def test_one_cluster_rule_class() -> None:
    from panray import dag, models

    assert dag.ClusterRule is models.ClusterRule
    with pytest.raises(WorkflowValidationError, match="clustering rule 'x=a:0'"):
        parse_rules("x=a:0")
