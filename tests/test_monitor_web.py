"""The operator web monitor over real HTTP (uvicorn on 127.0.0.1, RS256 tokens), and in a real
browser (Debian's chromium driven by Playwright) against workflows run on the session's cluster and
on a real ``panray serve``."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from panray import Campaign, Job, Panray, Settings, Workflow
from panray.identity import Identity, Role
from panray.logging_bridge import LocalObjectStore, attempt_prefix, make_entry, make_sink, panray_ids
from panray.monitor.reader import PanrayReader
from panray.monitor.web import monitor_router
from panray.store import AttemptRow, ChangeBatch, DecisionRow, JobState
from panray.submission import build_campaign

from monitor_auth import TokenIssuer, serve
from panray_server import panray, running_server

PRMON = "Time\tvmem\tpss\trss\tswap\n" + "".join(f"{100 + t}\t{400000 + t}\t{100000 + 5000 * t}\t{150000}\t0\n"
                                                 for t in range(30))


def _state(job_id: int, status: str, **kw: object) -> JobState:
    fields: dict[str, object] = dict(job_id=job_id, status=status, attempt_nr=1, site="USDF", pilot="pilot:USDF:0",
                                     start_time=None, end_time=None, exit_code=None, error_class=None, diag=None,
                                     request_memory=2000, modification_time=time.time())
    fields.update(kw)
    return JobState(**fields)  # type: ignore[arg-type]


def _attempt(job_id: int, status: str, exit_code: int, diag: str | None, error: str | None) -> AttemptRow:
    return AttemptRow(job_id, 1, status, "USDF", "pilot:USDF:0", 10.0, 20.0, exit_code, error, diag, 2000,
                      300000, None)


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer()


@pytest.fixture
def staged(store_url: str, tmp_path: Path, issuer: TokenIssuer) -> Iterator[tuple[str, dict[str, int], Panray]]:
    """A served monitor over a store holding one workflow in a known state (no cluster needed)."""
    pr = Panray(Settings(home=tmp_path / "home", db_url=store_url))
    jobs = [Job(name=f"isr-{i}", label="isr", command=["true"]) for i in range(4)]
    jobs += [Job(name="<script>alert(1)</script>", label="calibrate", parents=["isr-0"], command=["true"])]
    jobs += [Job(name=f"coadd-{i}", label="coadd", parents=["isr-1", "<script>alert(1)</script>"], command=["true"])
             for i in range(3)]
    [sub] = pr.store.submit(build_campaign(Campaign(name="c", owner="alice", workflows=[
        Workflow(name="drp-<b>bold</b>", owner="alice", jobs=jobs)]), pr.catalog)).workflows
    ids = {j.name: j.job_id for j in pr.store.jobs(sub.workflow_id)}
    isr = [ids[f"isr-{i}"] for i in range(4)]
    pr.store.apply(ChangeBatch(
        jobs=[_state(isr[0], "failed", exit_code=3, error_class="payload", diag="file /data/visit_17.fits missing",
                     start_time=10.0, end_time=20.0),
              _state(isr[1], "failed", exit_code=3, error_class="payload", diag="file /data/visit_42.fits missing",
                     start_time=10.0, end_time=25.0),
              _state(isr[2], "finished", exit_code=0, start_time=10.0, end_time=12.0),
              _state(isr[3], "running", start_time=10.0),
              _state(ids["<script>alert(1)</script>"], "closed", error_class="pruned")],
        attempts=[_attempt(isr[0], "failed", 3, "file /data/visit_17.fits missing", "payload"),
                  _attempt(isr[1], "failed", 3, "file /data/visit_42.fits missing", "payload"),
                  _attempt(isr[2], "finished", 0, None, None)],
        decisions=[DecisionRow(isr[0], 1, json.dumps({"site": "USDF", "weights": {"USDF": 0.5, "FrDF": 0.3},
                                                      "filtered": {"UKDF": "no live pilots"}}), 5.0)],
    ))
    job0 = pr.store.job(isr[0])
    sink = make_sink(pr.settings)
    sink.write([make_entry(f'{{"levelName": "ERROR", "message": "cannot open visit_17 line {n}"}}',
                           panray_ids(job_id=isr[0], task_id=job0.task_id, workflow_id=sub.workflow_id, attempt=1,
                                      site="USDF", pilot_id="pilot:USDF:0", label="isr"), "stdout")
                for n in range(3)])
    prmon = tmp_path / "prmon.txt"
    prmon.write_text(PRMON)
    LocalObjectStore(Path(pr.settings.resolved_storage)).put(
        prmon, attempt_prefix(sub.workflow_id, job0.task_id, isr[0], 1) + "prmon.txt")
    app = FastAPI()
    app.include_router(monitor_router(PanrayReader(pr.service), issuer.authorize))
    with serve(app) as url:
        yield url, {"workflow": sub.workflow_id, **ids}, pr
    pr.close()


def _get(url: str, token: str | None) -> httpx.Response:
    return httpx.get(url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=30)


def test_pages_need_a_valid_token_and_show_the_workflow_exactly(staged: tuple[str, dict[str, int], Panray],
                                                                issuer: TokenIssuer) -> None:
    url, ids, pr = staged
    wf = ids["workflow"]
    page = f"{url}/monitor/fragment/workflows/{wf}"
    assert _get(f"{url}/monitor/workflows/{wf}", None).status_code == 200       # the shell holds no data
    assert _get(page, None).status_code == 401
    assert _get(page, TokenIssuer().token("alice")).status_code == 401         # signed by another key
    assert _get(page, issuer.token("alice", ttl=-60)).status_code == 401      # expired
    r = _get(page, issuer.token("carol"))
    assert r.status_code == 200
    html = r.text
    assert "<script>alert(1)</script>" not in html and "<b>bold</b>" not in html   # escaped everywhere
    assert "drp-&lt;b&gt;bold&lt;/b&gt;" in html
    summary = re.search(r'id="wf-summary".*?</div>', html, re.S).group(0)  # type: ignore[union-attr]
    counts = dict(re.findall(r'data-status="(\w+)">(\d+)<', summary))
    assert counts == {"finished": "1", "failed": "2", "closed": "1", "running": "1", "pending": "3"}
    assert "file &lt;path&gt; missing" in html                        # two diags, one normalised group
    assert re.search(r"failed attempts.*?>2</a>", html, re.S)
    assert 'class="dag"' in html and html.count('class="dag-node') == 3 and 'dag-node blocked' in html
    assert "retry failed jobs" not in html                                 # still running: not offered
    errors = re.search(r'id="errors".*?</div>', html, re.S).group(0)  # type: ignore[union-attr]
    isr_task = next(t.task_id for t in pr.store.tasks(wf) if t.label == "isr")
    assert f"status=failed&amp;task={isr_task}&amp;exit_code=3&amp;error_class=payload" in errors   # the group's jobs
    assert f"&quot;task_id&quot;: {isr_task}" in errors and "cancel task" in errors  # isr still has a running job


def test_jobs_list_filters_and_pages_on_the_server(staged: tuple[str, dict[str, int], Panray],
                                                   issuer: TokenIssuer) -> None:
    url, ids, _ = staged
    token, base = issuer.token("carol"), f"{url}/monitor/fragment/workflows/{ids['workflow']}/jobs"
    r = _get(f"{base}?status=failed&exit_code=3", token)
    rows = re.findall(r'<a href="/monitor/jobs/(\d+)">', r.text)
    assert sorted(map(int, rows)) == sorted([ids["isr-0"], ids["isr-1"]]) and "rows 1-2 of 2" in r.text
    assert "1 of 3" in r.text and "file /data/visit_17.fits missing" in r.text
    r = _get(f"{base}?limit=3&offset=3", token)
    assert "rows 4-6 of 8" in r.text and len(re.findall(r'<a href="/monitor/jobs/\d+">', r.text)) == 3
    following = re.search(r'href="([^"]+)" class="next"', r.text).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    assert "after=5" in following                                        # paged by key, not by offset
    r = _get(url + following.replace("/monitor/", "/monitor/fragment/", 1), token)  # what the shell fetches
    assert "rows 7-8 of 8" in r.text and re.findall(r'<td>(coadd-\d)</td>', r.text) == ["coadd-1", "coadd-2"]
    assert 'class="next"' not in r.text and 'class="prev"' in r.text
    assert _get(f"{base}?label=coadd", token).text.count('<a href="/monitor/jobs/') == 3
    bad = _get(f"{base}?sort=random", token)
    assert bad.status_code == 400 and bad.json()["detail"] == "unknown sort 'random'; one of idx, -duration"
    assert _get(f"{url}/monitor/fragment/workflows/999999", token).status_code == 404


def test_job_page_log_memory_plot_and_brokerage(staged: tuple[str, dict[str, int], Panray],
                                                issuer: TokenIssuer) -> None:
    url, ids, _ = staged
    token, job = issuer.token("carol"), ids["isr-0"]
    html = _get(f"{url}/monitor/fragment/jobs/{job}", token).text
    assert 'class="memory-plot"' in html and html.count("<polyline") == 3
    assert "PSS 239 MB" in html and "RSS 146 MB" in html                 # maxima: 245000 kB, 150000 kB
    assert "no live pilots" in html and "USDF" in html
    log = _get(f"{url}/monitor/api/jobs/{job}/log?attempt=1", token).json()
    assert [e["message"] for e in log["entries"]] == [f"cannot open visit_17 line {n}" for n in range(3)]
    assert log["ended"] and log["next"] == 3
    assert _get(f"{url}/monitor/api/jobs/{job}/log?attempt=1&after=3", token).json()["entries"] == []
    assert _get(f"{url}/monitor/api/jobs/{job}/files/1/prmon.txt", token).text == PRMON
    assert _get(f"{url}/monitor/api/jobs/{job}/files/1/..%2Fsecret", token).status_code == 404


def test_bulk_actions_follow_the_owner_or_production_rule(staged: tuple[str, dict[str, int], Panray],
                                                          issuer: TokenIssuer) -> None:
    url, ids, pr = staged
    wf = ids["workflow"]

    def act(token: str, body: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{url}/monitor/api/act", json=body, timeout=30, headers={"Authorization": f"Bearer {token}"})

    refused = act(issuer.token("mallory"), {"action": "retry", "workflow_id": wf})
    assert refused.status_code == 403
    assert refused.json()["detail"] == f"only the owner (alice) or role production may retry workflow {wf}"
    assert act(issuer.token("mallory"), {"action": "cancel_task", "workflow_id": wf, "task_id": 1}).status_code == 403
    running = act(issuer.token("alice"), {"action": "retry", "workflow_id": wf})
    assert running.status_code == 400 and "is still" in running.json()["detail"]
    prod = act(issuer.token("pat", ("production",)), {"action": "retry", "workflow_id": wf})
    assert prod.status_code == 400                                        # allowed, but the workflow still runs
    assert act(issuer.token("alice"), {"action": "explode", "workflow_id": wf}).status_code == 422
    group = {"action": "retry_jobs", "workflow_id": wf, "task_id": pr.store.job(ids["isr-0"]).task_id,
             "error_class": "payload", "exit_code": 3}
    refused = act(issuer.token("mallory"), group)
    assert refused.status_code == 403
    assert refused.json()["detail"] == f"only the owner (alice) or role production may retry workflow {wf}"
    assert act(issuer.token("alice"), {**group, "memory": 0}).json()["detail"] == "memory 0: expected MB from 1 to " \
        "2147483647"
    empty = act(issuer.token("alice"), {**group, "exit_code": 4})
    assert empty.status_code == 400 and "has no failed jobs with error class payload and exit code 4" in \
        empty.json()["detail"]
    assert pr.store.job(ids["isr-0"]).attempt_nr == 1                    # nothing was retried


# -- in a real browser ---------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Waits for a gate file (so the workflow is seen running), then ends.
GATED = 'for i in $(seq 1200); do [ -e "$1" ] && exit 0; sleep 0.1; done; exit 5'
#: Logs JSON lines, holds ~60 MB for a second (the memory monitor samples it), fails with exit 1
#: (never retried: a payload error).
FAILING = """
import json, sys, time
block = bytearray(60 * 2**20)
for n in range(3):
    print(json.dumps({"levelName": "ERROR", "message": f"bad line {n}: cannot read /repo/visit_{n}.fits"}), flush=True)
    time.sleep(0.4)
sys.exit(1)
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's chromium under Playwright, fresh profile. Fails (never skips) if it cannot start."""
    from playwright.sync_api import Error, sync_playwright

    profile = tempfile.mkdtemp(prefix="panray-chromium-")
    with sync_playwright() as p:
        try:
            context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                           args=CHROMIUM_ARGS)
        except Error as exc:
            pytest.fail(f"cannot start {CHROMIUM} (apt-get install chromium): {exc}", pytrace=False)
        yield context
        context.close()


def _count(page: object, status: str) -> int:
    loc = page.locator(f'#wf-summary [data-status="{status}"]')  # type: ignore[attr-defined]
    return int(loc.inner_text()) if loc.count() else 0


def _until(cond: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _log_in(page: object, token: str) -> None:
    page.locator("#login input").fill(token)  # type: ignore[attr-defined]
    page.locator("#login button").click()  # type: ignore[attr-defined]


@pytest.mark.slow
def test_operator_follows_a_running_workflow_in_the_browser(cluster: Panray, browser: object, tmp_path: Path,
                                                            issuer: TokenIssuer) -> None:
    gate = tmp_path / "gate"
    jobs = [Job(name="waiter", label="wait", command=["bash", "-c", GATED, "w", str(gate)]),
            Job(name="bad", label="isr", command=[sys.executable, "-c", FAILING]),
            Job(name="child", label="calibrate", parents=["bad"], command=["true"]),
            Job(name="ok", label="isr", command=["true"])]
    alice = Identity("alice", frozenset({Role.USER}))  # the owner comes from who asks, as over HTTP
    [wf] = cluster.service.submit_campaign(alice, Campaign(name="browser-run", owner="alice", workflows=[
        Workflow(name="browser-run", jobs=jobs)]))
    app = FastAPI()
    app.include_router(monitor_router(PanrayReader(cluster.service), issuer.authorize, poll_seconds=0.5))
    first = serve(app)
    url = first.__enter__()
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(f"{url}/monitor/workflows/{wf}")
        _log_in(page, issuer.token("alice"))
        page.wait_for_selector("#wf-summary")
        page.evaluate("window.notReloaded = true")
        _until(lambda: _count(page, "running") == 1 and _count(page, "failed") == 1, what="waiter running, bad failed")
        assert _count(page, "closed") == 1 and page.locator(".dag-node.blocked").count() == 1
        finished_before = _count(page, "finished")
    finally:
        first.__exit__(None, None, None)                                  # the server goes away ...
    _until(lambda: "unreachable" in page.locator("#live-status").inner_text(), what="the page to notice")
    gate.touch()
    with serve(app, port=int(url.rsplit(":", 1)[1])):                     # ... and comes back on its port
        _until(lambda: _count(page, "finished") == finished_before + 1, what="the count of finished jobs to change")
        _until(lambda: page.locator("#wf-summary .wf-status").inner_text() == "SubFinished", what="the end")
        assert page.evaluate("window.notReloaded === true")                # updated in place, no reload
        assert cluster.wait([wf], timeout=60) == {wf: "SubFinished"}
        page.close()


@pytest.mark.slow
def test_operator_triages_and_retries_on_a_real_panray_serve(browser: object, tmp_path: Path) -> None:
    """The whole operator path against ``panray serve`` itself (its own cluster, store and token issuer):
    log in, watch the workflow's counts change, drill down to the failed job's log lines and memory plot,
    and retry its error group with more memory: refused for another user, done for the owner."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANRAY_")}
    env |= {"PANRAY_HOME": str(home), "PANRAY_DASHBOARD_PORT": "0"}

    def token(user: str) -> str:
        r = panray("--home", str(home), "token", "--user", user, "--role", "user", env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    with running_server(home, env) as info:
        url = str(info["url"])
        alice, mallory = token("alice"), token("mallory")
        remote = Panray(Settings(home=tmp_path / "client"), url=url, token=alice)
        [wf] = remote.submit(Workflow(name="triage", jobs=[
            Job(name="bad", label="isr", command=[sys.executable, "-c", FAILING]),
            Job(name="child", label="calibrate", parents=["bad"], command=["true"]),
            Job(name="ok", label="isr", command=["true"])]))
        page = browser.new_page()  # type: ignore[attr-defined]
        try:
            page.goto(f"{url}/monitor/workflows/{wf}")
            _log_in(page, alice)
            page.wait_for_selector("#wf-summary")
            _until(lambda: page.locator("#wf-summary .wf-status").inner_text() == "SubFinished", what="the end")
            assert (_count(page, "finished"), _count(page, "failed"), _count(page, "closed")) == (1, 1, 1)

            page.locator("#errors a.example").click()                     # the group's example: the failed job
            page.wait_for_selector("#job-summary")
            assert page.locator("#job-status").inner_text() == "failed"
            _until(lambda: "bad line 2" in page.locator("#log").inner_text(), what="the log lines")
            assert page.locator("svg.memory-plot polyline.series-pss").count() == 1

            page.goto(f"{url}/monitor/workflows/{wf}")
            page.locator("#logout").click()
            page.wait_for_selector("#login:not([hidden])")
            _log_in(page, mallory)
            answer = page.locator("#act-result")
            page.locator("#errors button.act", has_text="retry with").click()
            _until(lambda: answer.inner_text(), what="the refusal")
            assert answer.inner_text() == f"only the owner (alice) or role production may retry workflow {wf}"
            bad = next(j for j in remote.jobs(wf) if j.name == "bad")
            assert bad.attempt_nr == 1
            page.locator("#logout").click()
            page.wait_for_selector("#login:not([hidden])")
            _log_in(page, alice)
            page.locator("#errors button.act", has_text="retry with").click()
            _until(lambda: "new attempt" in answer.inner_text(), what="the owner's retry")
            # bad, and child which bad's failure had pruned
            assert answer.inner_text() == f"workflow {wf}: 2 jobs get a new attempt with {2 * bad.request_memory} MB"
            _until(lambda: remote.job(bad.job_id).attempt_nr == 2, what="a second attempt of the failed job")
            assert remote.job(bad.job_id).request_memory == 2 * bad.request_memory
            assert remote.wait([wf], timeout=120) == {wf: "SubFinished"}      # it fails again, by design
        finally:
            page.close()
            remote.close()


def test_workflow_list_search_and_sites(staged: tuple[str, dict[str, int], Panray], issuer: TokenIssuer) -> None:
    url, ids, _ = staged
    token, wf = issuer.token("carol"), ids["workflow"]
    listing = _get(f"{url}/monitor/fragment/?owner=alice", token).text
    assert f'href="/monitor/workflows/{wf}"' in listing and 'class="progress"' in listing and "rows 1-1 of 1" in listing
    assert "rows 0-0 of 0" in _get(f"{url}/monitor/fragment/?owner=bob", token).text
    assert "rows 0-0 of 0" in _get(f"{url}/monitor/fragment/?status=Finished", token).text
    found = _get(f"{url}/monitor/fragment/search?q=DRP-", token)
    assert found.headers["X-Panray-Location"] == f"/monitor/workflows/{wf}"    # one match: the page goes there
    by_id = _get(f"{url}/monitor/fragment/search?q={ids['coadd-2']}", token)
    assert f"/monitor/jobs/{ids['coadd-2']}" in by_id.text
    assert "nothing found" in _get(f"{url}/monitor/fragment/search?q=no-such-thing", token).text
    sites = _get(f"{url}/monitor/fragment/sites", token).text
    assert all(s in sites for s in ("USDF", "FrDF", "UKDF")) and "35%" in sites and "40%" in sites
    assert "100%" in sites                                     # the one recorded placement went to USDF
