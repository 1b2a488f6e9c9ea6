"""The web monitor: :func:`monitor_router` serves the operator's pages under ``/monitor``.

Each page is a small shell (no data, no token needed) whose script asks for the token once
(kept in ``sessionStorage``), fetches the page's HTML fragment with ``Authorization: Bearer``,
and polls it every few seconds, swapping in the parts marked live. A restarted server is simply
polled again. Everything ships in the package: no CDN, nothing fetched from outside.

Examples:
    >>> from fastapi import FastAPI                                              # doctest: +SKIP
    >>> app = FastAPI()
    >>> app.include_router(monitor_router(PanrayReader(pr.service), authorize))      # pages at /monitor/
"""


import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html import escape
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from panray.exceptions import NotFoundError, PanrayError, PermissionDeniedError
from panray.monitor import pages
from panray.monitor.reader import BulkAction, Caller, MonitorReader
from panray.statuses import FINAL_JOB_STATES
from panray.store import JobQuery, WorkflowQuery
from panray.store.monitor_sql import JOB_SORTS

MAX_PAGE = 500  #: rows a jobs page may ask for
LOG_CHUNK = 2000  #: log entries one poll returns at most
_STATIC = {"monitor.js": "text/javascript", "monitor.css": "text/css"}
_FINAL = {s.value for s in FINAL_JOB_STATES}


@contextmanager
def _http_errors() -> Iterator[None]:
    """panray's errors as 4xx with their one-line message."""
    try:
        yield
    except PermissionDeniedError as exc:
        raise HTTPException(403, str(exc)) from None
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except PanrayError as exc:
        raise HTTPException(400, str(exc)) from None


def _shell(prefix: str, title: str, fragment: str, poll: float) -> HTMLResponse:
    return HTMLResponse(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>panray · {escape(title)}</title>
<link rel="stylesheet" href="{prefix}/static/monitor.css"></head>
<body><nav><a href="{prefix}/">workflows</a> <a href="{prefix}/sites">sites</a>
<form class="search" method="get" action="{prefix}/search"><input name="q" placeholder="workflow or job id, name"
 aria-label="search"><button>search</button></form>
<button type="button" id="logout">log out</button><span id="live-status" role="status"></span></nav>
<form id="login" hidden><label>token <input type="password" name="token" autocomplete="off"></label>
<button>log in</button><span class="login-error" role="alert"></span></form>
<main id="page" data-src="{escape(fragment)}" data-poll="{poll}"></main>
<script src="{prefix}/static/monitor.js"></script></body></html>""")


def monitor_router(reader: MonitorReader, authorize: Callable[..., Any], *, prefix: str = "/monitor",
                   poll_seconds: float = 3.0) -> APIRouter:
    """The monitor's routes. ``authorize`` is a FastAPI dependency returning the caller (``user``,
    ``roles``) or raising 401; every fragment and API route depends on it, the shells do not."""
    router = APIRouter(prefix=prefix)
    who = Annotated[Caller, Depends(authorize)]

    def shell(request: Request, title: str) -> HTMLResponse:
        path = request.url.path[len(prefix):]
        query = f"?{request.url.query}" if request.url.query else ""
        return _shell(prefix, title, f"{prefix}/fragment{path}{query}", poll_seconds)

    def fragment(build: Callable[[], pages.Html]) -> HTMLResponse:
        with _http_errors():
            return HTMLResponse(build())

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in _STATIC:
            raise HTTPException(404, f"no static file {name!r}")
        body = resources.files("panray.monitor").joinpath("static", name).read_bytes()
        return Response(body, media_type=_STATIC[name], headers={"Cache-Control": "max-age=300"})

    # -- shells ----------------------------------------------------------------------------------

    @router.get("/", response_class=HTMLResponse)
    def workflows_shell(request: Request) -> HTMLResponse:
        return shell(request, "workflows")

    @router.get("/workflows/{workflow_id}", response_class=HTMLResponse)
    def workflow_shell(request: Request, workflow_id: int) -> HTMLResponse:
        return shell(request, f"workflow {workflow_id}")

    @router.get("/workflows/{workflow_id}/jobs", response_class=HTMLResponse)
    def jobs_shell(request: Request, workflow_id: int) -> HTMLResponse:
        return shell(request, f"jobs of workflow {workflow_id}")

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_shell(request: Request, job_id: int) -> HTMLResponse:
        return shell(request, f"job {job_id}")

    @router.get("/sites", response_class=HTMLResponse)
    def sites_shell(request: Request) -> HTMLResponse:
        return shell(request, "sites")

    @router.get("/search", response_class=HTMLResponse)
    def search_shell(request: Request) -> HTMLResponse:
        return shell(request, "search")

    # -- fragments -------------------------------------------------------------------------------

    @router.get("/fragment/", response_class=HTMLResponse)
    def workflows_fragment(caller: who, owner: str = "", status: str = "", name: str = "",
                           age_days: float | None = Query(None, ge=0), offset: int = Query(0, ge=0)) -> HTMLResponse:
        since = None if age_days is None else time.time() - age_days * 86400
        q = WorkflowQuery(owner=owner or None, status=status or None, name=name or None, created_after=since,
                          offset=offset)
        return fragment(lambda: pages.workflow_list(reader, prefix, q, age_days))

    @router.get("/fragment/workflows/{workflow_id}", response_class=HTMLResponse)
    def workflow_fragment(caller: who, workflow_id: int) -> HTMLResponse:
        return fragment(lambda: pages.workflow_page(reader, prefix, workflow_id))

    @router.get("/fragment/workflows/{workflow_id}/jobs", response_class=HTMLResponse)
    def jobs_fragment(
        caller: who, workflow_id: int, status: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies it
        label: str = "", site: str = "", error_class: str = "", exit_code: str = "", name: str = "",
        task: int | None = None, sort: str = "idx", offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=MAX_PAGE), after: int | None = None, before: int | None = None,
    ) -> HTMLResponse:
        if sort not in JOB_SORTS:
            raise HTTPException(400, f"unknown sort {sort!r}; one of {', '.join(JOB_SORTS)}")
        if exit_code and not exit_code.lstrip("-").isdigit():
            raise HTTPException(400, f"exit_code {exit_code!r} is not an integer")
        q = JobQuery(status=tuple(s for s in status if s), label=label or None, site=site or None,
                     error_class=error_class or None, exit_code=int(exit_code) if exit_code else None, task_id=task,
                     name=name or None, sort=sort, limit=limit, offset=offset, after_idx=after, before_idx=before)
        return fragment(lambda: pages.jobs_page(reader, prefix, workflow_id, q))

    @router.get("/fragment/jobs/{job_id}", response_class=HTMLResponse)
    def job_fragment(caller: who, job_id: int, attempt: int | None = Query(None, ge=1)) -> HTMLResponse:
        return fragment(lambda: pages.job_page(reader, prefix, job_id, attempt))

    @router.get("/fragment/sites", response_class=HTMLResponse)
    def sites_fragment(caller: who) -> HTMLResponse:
        return fragment(lambda: pages.sites_page(reader))

    @router.get("/fragment/search", response_class=HTMLResponse)
    def search_fragment(caller: who, q: str = "") -> HTMLResponse:
        with _http_errors():
            body, only = pages.search_results(reader, prefix, q.strip())
        return HTMLResponse(body, headers={"X-Panray-Location": only} if only else None)

    # -- data and actions ------------------------------------------------------------------------

    @router.get("/api/jobs/{job_id}/log")
    def job_log(caller: who, job_id: int, attempt: int = Query(..., ge=1), after: int = Query(0, ge=0)) -> JSONResponse:
        """New log entries of one attempt from ``after`` on; ``ended`` once no more will come.

        The job is read before the sink: a pilot ships an attempt's last lines before it reports
        the end, so the entries read after an end was seen are complete."""
        with _http_errors():
            job = reader.job(job_id)
            ended = job.status in _FINAL or job.attempt_nr > attempt
            entries = reader.log_entries(job_id, attempt)[after:after + LOG_CHUNK]
        lines = [{"time": e.get("pilotTimestamp", ""), "severity": e.get("severity", ""),
                  "stream": e.get("stream", ""), "message": e.get("message", "")} for e in entries]
        return JSONResponse({"entries": lines, "next": after + len(lines),
                             "ended": ended and len(lines) < LOG_CHUNK})

    @router.get("/api/jobs/{job_id}/files/{attempt}/{name}")
    def job_file(caller: who, job_id: int, attempt: int, name: str) -> Response:
        with _http_errors():
            body = reader.attempt_file(reader.job(job_id), attempt, name)
        return Response(body, media_type="text/plain; charset=utf-8")

    @router.post("/api/act")
    def act(caller: who, action: BulkAction) -> JSONResponse:
        with _http_errors():
            return JSONResponse({"message": reader.act(caller, action)})

    return router
