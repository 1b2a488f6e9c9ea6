"""panray's HTTP API (FastAPI): the service's methods at ``/api/v1/...``, behind bearer tokens.

Blocking service calls (store, Ray) run in the threadpool, so one user's 200k-job submit does
not hold up another's status page; bodies are parsed there too, by pydantic from the raw bytes.
Lists of store rows travel as ``{"fields": [...], "rows": [[...], ...]}``: a page of 10,000
jobs is one compact array, rebuilt on the client with ``JobRow._make``. Every error is
``{"error": "<the one line the CLI prints>"}`` with its status: 400 bad input, 401 no or bad
token, 403 refused (naming the rule), 404 unknown id, 409 conflict, 413 body too large, 422
malformed body or parameter (naming the field path).

Examples:
    >>> app = create_app(Service(settings), Authenticator(settings))   # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8470)                  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from panray.exceptions import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PanrayError,
    PermissionDeniedError,
)
from panray.health import HEALTH_PATH, READY_PATH
from panray.identity import Identity
from panray.models import Campaign, Workflow
from panray.server.auth import Authenticator
from panray.service import Service
from panray.store.base import ErrorGroupRow, JobQuery, JobRow
from panray.validation import Int32, PositiveInt32

__all__ = ["API", "MAX_PAGE", "BodyTooLargeError", "InputError", "create_app"]

API = "/api/v1"
MAX_PAGE = 10_000  #: most jobs one page returns
DEFAULT_PAGE = 1_000
MAX_WAIT = 30.0  #: seconds one wait request may block; clients ask again
THREADS = 100  #: threadpool size: submits and reads of many users at once
WAITERS = 32  #: long-polling waits at once, on their own limiter so that they never starve the rest

_M = TypeVar("_M", bound=BaseModel)


class InputError(PanrayError):
    """A request body or parameter that does not parse; the message names the field path."""


class BodyTooLargeError(PanrayError):
    """A request body above ``server_max_body``."""


_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (AuthenticationError, 401), (PermissionDeniedError, 403), (NotFoundError, 404), (ConflictError, 409),
    (BodyTooLargeError, 413), (InputError, 422), (PanrayError, 400), (TimeoutError, 504),
)


def validation_message(err: ValidationError | RequestValidationError, where: str = "body") -> str:
    """``body.jobs.3.name: Field required (and 2 more)``: the first error with its field path."""
    errors = err.errors()
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    path = ".".join(loc if loc and loc[0] in ("body", "query", "path", "header") else [where, *loc])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{path}: {first['msg']}{more}"


def parse(model: type[_M], body: bytes) -> _M:
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        raise InputError(validation_message(err)) from None


def rows(items: Sequence[Any], fields: Sequence[str] | None = None) -> dict[str, Any]:
    """NamedTuple rows as one compact table."""
    names = list(fields if fields is not None else (items[0]._fields if items else ()))
    return {"fields": names, "rows": [list(r) for r in items]}


def _json(content: Any, status: int = 200) -> Response:
    return Response(json.dumps(content, separators=(",", ":")), status_code=status, media_type="application/json")


class BodyLimit:
    """Refuse bodies above ``max_bytes`` (413) from the Content-Length, or while they stream in."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _json({"error": self._message(int(declared))}, 413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLargeError(self._message(seen))
            return message

        await self.app(scope, limited, send)

    def _message(self, n: int) -> str:
        return f"request body of {n} bytes is above the limit of {self.max_bytes} bytes (server_max_body)"


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: int | None = None
    job_ids: list[int] | None = None


class RetryJobsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: int | None = None
    job_ids: list[int] | None = Field(default=None, max_length=MAX_PAGE)
    memory: PositiveInt32 | None = None  #: MB for the new attempts


class HoldRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: int | None = None


class PriorityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: Int32
    task_id: int | None = None
    job_ids: list[int] | None = Field(default=None, max_length=MAX_PAGE)


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow_ids: list[int] | None = None  #: None: every workflow not ended that the caller may act on


class SiteStatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str


class PromptRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    visit: int = Field(ge=0)
    visits: int = Field(default=1, ge=1, le=1000)
    detectors: list[int] | None = None
    instrument: str = "LSSTCam"


_bearer = HTTPBearer(auto_error=False)


def identity(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Identity:
    """The caller, from the bearer token (checked by the app's authenticator)."""
    if cred is None:
        raise AuthenticationError("no bearer token (Authorization: Bearer <token>; `panray token` prints one)")
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator.identify(cred.credentials)


Who = Annotated[Identity, Depends(identity)]


def create_app(service: Service, authenticator: Authenticator, *, max_body: int | None = None) -> FastAPI:
    """The ASGI app over one service; tokens checked by ``authenticator``."""

    waiters = anyio.CapacityLimiter(WAITERS)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        yield

    app = FastAPI(title="panray", version="1", lifespan=lifespan,
                  description="Workload management for huge DAG workflows; bearer token on every /api call.")
    app.state.authenticator = authenticator

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(fn, *args, **kwargs)

    async def body(request: Request, model: type[_M]) -> _M:
        return await call(parse, model, await request.body())

    # -- errors --------------------------------------------------------------------------------

    def on_error(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handler(_: Request, exc: Exception) -> Response:
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)

        return handler

    for exc_type, status in _STATUS:
        app.add_exception_handler(exc_type, on_error(status))

    async def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"error": validation_message(exc, "query")}, status_code=422)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)

    # -- probes (no token: the Kubernetes chart probes these) ----------------------------------

    @app.get(HEALTH_PATH)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(READY_PATH)
    async def readyz() -> Response:
        try:
            ok = await call(service.ready)
        except Exception as exc:  # any failure to reach the store is "not ready", with its reason
            return JSONResponse({"error": f"not ready: {type(exc).__name__}: {exc}"}, status_code=503)
        return JSONResponse({"status": "ready"} if ok else {"error": "not ready: Ray is not connected"},
                            status_code=200 if ok else 503)

    # -- submit --------------------------------------------------------------------------------

    @app.get(f"{API}/whoami")
    async def whoami(who: Who) -> dict[str, Any]:
        return {"user": who.user, "roles": sorted(r.value for r in who.roles)}

    @app.post(f"{API}/workflows", status_code=201,
              description="Body: a Workflow (panray.models); the owner is the token's user.")
    async def submit_workflow(request: Request, who: Who) -> Response:
        wf = await body(request, Workflow)
        ids = await call(service.submit_campaign, who, Campaign(name=wf.name, owner=who.user, workflows=[wf]))
        return _json({"workflow_ids": ids}, 201)

    @app.post(f"{API}/campaigns", status_code=201,
              description="Body: a Campaign (panray.models); the owner is the token's user.")
    async def submit_campaign(request: Request, who: Who) -> Response:
        campaign = await body(request, Campaign)
        return _json({"workflow_ids": await call(service.submit_campaign, who, campaign)}, 201)

    # -- read ----------------------------------------------------------------------------------

    @app.get(f"{API}/workflows")
    async def workflows(who: Who, active_only: bool = False) -> Response:
        return _json(rows(await call(service.workflows, active_only=active_only)))

    @app.get(f"{API}/workflows/{{workflow_id}}")
    async def workflow(who: Who, workflow_id: int) -> Response:
        return _json((await call(service.workflow, workflow_id))._asdict())

    @app.get(f"{API}/status")
    async def status(who: Who, workflow_id: int | None = None) -> Response:
        summaries = await call(service.status, workflow_id)
        return _json([{k: getattr(s, k) for k in s.__dataclass_fields__} for s in summaries])

    @app.get(f"{API}/workflows/{{workflow_id}}/wait")
    async def wait(who: Who, workflow_id: int, timeout: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 10.0) -> Response:
        """The final status once the workflow has ended, or null after ``timeout`` seconds."""
        try:
            final = await anyio.to_thread.run_sync(lambda: service.wait([workflow_id], timeout=timeout),
                                                   limiter=waiters)
        except TimeoutError:
            return _json({"status": None})
        return _json({"status": final[workflow_id]})

    @app.get(f"{API}/workflows/{{workflow_id}}/tasks")
    async def tasks(who: Who, workflow_id: int) -> Response:
        return _json(rows(await call(service.tasks, workflow_id)))

    @app.get(f"{API}/workflows/{{workflow_id}}/jobs")
    async def jobs(who: Who, workflow_id: int, status: Annotated[list[str] | None, Query()] = None,
                   label: str | None = None, site: str | None = None,
                   limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
                   offset: Annotated[int, Query(ge=0)] = 0) -> Response:
        """One page of jobs in idx order; ``next_offset`` is null on the last page."""
        page = await call(service.jobs, workflow_id, status, label=label, site=site, limit=limit + 1, offset=offset)
        more = len(page) > limit
        return _json({**rows(page[:limit]), "next_offset": offset + limit if more else None})

    @app.get(f"{API}/workflows/{{workflow_id}}/job-page")
    async def job_page(who: Who, workflow_id: int, status: Annotated[list[str] | None, Query()] = None,
                       label: str | None = None, site: str | None = None, error_class: str | None = None,
                       exit_code: int | None = None, task_id: int | None = None, name: str | None = None,
                       sort: Literal["idx", "-duration"] = "idx",
                       limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
                       offset: Annotated[int, Query(ge=0)] = 0) -> Response:
        """One page of jobs matching the filters, with each job's creation time and the total that match."""
        query = JobQuery(tuple(status or ()), label, site, error_class, exit_code, task_id, name, sort, limit, offset)
        page = await call(service.job_page, workflow_id, query)
        return _json({**rows(page.rows, JobRow._fields), "created": page.created, "total": page.total})

    @app.get(f"{API}/workflows/{{workflow_id}}/errors")
    async def error_groups(who: Who, workflow_id: int) -> Response:
        return _json(rows(await call(service.error_groups, workflow_id), ErrorGroupRow._fields))

    @app.get(f"{API}/workflows/{{workflow_id}}/manager")
    async def manager(who: Who, workflow_id: int) -> Response:
        await call(service.workflow, workflow_id)
        return _json({"alive": await call(service.manager_alive, workflow_id)})

    @app.get(f"{API}/workflows/{{workflow_id}}/max-pss")
    async def max_pss(who: Who, workflow_id: int) -> Response:
        return _json({str(k): v for k, v in (await call(service.max_pss, workflow_id)).items()})

    @app.get(f"{API}/workflows/{{workflow_id}}/quanta")
    async def quanta(who: Who, workflow_id: int) -> Response:
        return _json(rows(await call(service.quanta, workflow_id)))

    @app.get(f"{API}/jobs/{{job_id}}")
    async def job(who: Who, job_id: int) -> Response:
        row = await call(service.job, job_id)
        return _json({"job": row._asdict(), "attempts": rows(await call(service.attempts, job_id))})

    for name in ("attempts", "history", "transfers", "decisions"):
        _job_list(app, name, getattr(service, name))

    @app.get(f"{API}/jobs/{{job_id}}/log-files")
    async def log_files(who: Who, job_id: int, attempt: int | None = None) -> Response:
        return _json(await call(service.log_files, job_id, attempt))

    @app.get(f"{API}/logs")
    async def logs(who: Who, job_id: int | None = None, task_id: int | None = None, attempt: int | None = None,
                   grep: str | None = None, source: Literal["pilot", "payload"] | None = None) -> Response:
        return _json(await call(service.logs, job_id, task_id=task_id, attempt=attempt, grep=grep, source=source))

    @app.get(f"{API}/sites")
    async def sites(who: Who) -> Response:
        return _json(await call(service.sites))

    @app.get(f"{API}/audit")
    async def audit(who: Who, user: str | None = None, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Response:
        return _json(rows(await call(service.audit, user=user, limit=limit)))

    # -- act -----------------------------------------------------------------------------------

    @app.post(f"{API}/workflows/{{workflow_id}}/cancel")
    async def cancel(request: Request, who: Who, workflow_id: int) -> Response:
        raw = await request.body()
        req = await call(parse, CancelRequest, raw) if raw.strip() else CancelRequest()
        reached = await call(service.cancel, who, workflow_id, task_id=req.task_id, job_ids=req.job_ids)
        return _json({"reached": reached})

    @app.post(f"{API}/workflows/{{workflow_id}}/retry")
    async def retry(who: Who, workflow_id: int) -> Response:
        await call(service.retry, who, workflow_id)
        return _json({"workflow_id": workflow_id})

    @app.post(f"{API}/workflows/{{workflow_id}}/retry-jobs",
              description="Rerun failed, cancelled and pruned jobs (a task's, these, or all) while the workflow runs.")
    async def retry_jobs(request: Request, who: Who, workflow_id: int) -> Response:
        req = await body(request, RetryJobsRequest)
        n = await call(service.retry_jobs, who, workflow_id, task_id=req.task_id, job_ids=req.job_ids,
                       memory=req.memory)
        return _json({"retried": n})

    @app.post(f"{API}/workflows/{{workflow_id}}/hold", description="Broker nothing more of the workflow or task.")
    async def hold(request: Request, who: Who, workflow_id: int) -> Response:
        req = await body(request, HoldRequest)
        return _json({"reached": await call(service.hold, who, workflow_id, task_id=req.task_id)})

    @app.post(f"{API}/workflows/{{workflow_id}}/release", description="Broker a held workflow or task again.")
    async def release(request: Request, who: Who, workflow_id: int) -> Response:
        req = await body(request, HoldRequest)
        return _json({"reached": await call(service.release, who, workflow_id, task_id=req.task_id)})

    @app.put(f"{API}/workflows/{{workflow_id}}/priority", description="Set the priority of jobs; higher first.")
    async def set_priority(request: Request, who: Who, workflow_id: int) -> Response:
        req = await body(request, PriorityRequest)
        n = await call(service.set_priority, who, workflow_id, req.priority, task_id=req.task_id, job_ids=req.job_ids)
        return _json({"jobs": n})

    @app.post(f"{API}/resume")
    async def resume(request: Request, who: Who) -> Response:
        req = await body(request, ResumeRequest) if await request.body() else ResumeRequest()
        return _json({"workflow_ids": await call(service.resume, who, req.workflow_ids)})

    @app.put(f"{API}/sites/{{site}}/status")
    async def set_site_status(request: Request, who: Who, site: str) -> Response:
        req = await body(request, SiteStatusRequest)
        return _json({"applied": await call(service.set_site_status, who, site, req.status)})

    @app.post(f"{API}/prompt/notify")
    async def prompt_notify(request: Request, who: Who) -> Response:
        req = await body(request, PromptRequest)
        text = await call(service.prompt_notify, who, req.visit, visits=req.visits, detectors=req.detectors,
                          instrument=req.instrument)
        return _json({"text": text})

    from panray.monitor.reader import PanrayReader
    from panray.monitor.web import monitor_router

    app.include_router(monitor_router(PanrayReader(service), identity))  # the operator's pages, /monitor/
    return BodyLimit(app, max_body or service.settings.server_max_body)  # type: ignore[return-value]


def _job_list(app: FastAPI, name: str, read: Callable[[int], Sequence[Any]]) -> None:
    """``GET /jobs/{id}/<name>``: one of the per-job row lists (attempts, history, ...)."""

    async def endpoint(job_id: int, who: Who) -> Response:
        return _json(rows(await run_in_threadpool(read, job_id)))

    app.add_api_route(f"{API}/jobs/{{job_id}}/{name}", endpoint, methods=["GET"], name=name)
