"""The remote side of :class:`panray.Panray`: the service's methods over HTTP, same return types.

Mutating methods take the same ``who`` argument as :class:`~panray.service.Service` and ignore
it: the server knows the caller from the token alone. The token is ``token``, else
``PANRAY_TOKEN``, else the home's token file (``panray serve`` leaves one for its local user).
A server's error comes back as the same :class:`PanrayError` subclass with the same message.

Examples:
    >>> svc = RemoteService("http://127.0.0.1:8470", token=token, settings=Settings())   # doctest: +SKIP
    >>> svc.status(1)[0].status                                                          # doctest: +SKIP
    'Finished'
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import httpx

from panray.config import Settings
from panray.exceptions import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PanrayError,
    PermissionDeniedError,
)
from panray.identity import Identity
from panray.models import Campaign
from panray.server.app import API, MAX_PAGE, MAX_WAIT, BodyTooLargeError, InputError
from panray.server.auth import token_file
from panray.service import Progress, WorkflowSummary
from panray.store.base import AttemptRow, AuditRow, DecisionRow, ErrorGroupRow, HistoryRow, JobPage, JobQuery, JobRow
from panray.store.base import QuantumRow, TaskRow, TransferRow, WorkflowRow

__all__ = ["RemoteService", "resolve_token"]

_R = TypeVar("_R", bound=NamedTuple)
_ERRORS: dict[int, type[PanrayError]] = {
    401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
    409: ConflictError, 413: BodyTooLargeError, 422: InputError,
}
#: Connect fast, but give a 200k-job submit the minutes it may need.
_TIMEOUT = httpx.Timeout(600.0, connect=10.0)


def resolve_token(token: str | None, settings: Settings) -> str:
    """The explicit token, else ``PANRAY_TOKEN``, else the home's token file."""
    token = token or os.environ.get("PANRAY_TOKEN")
    if token:
        return token.strip()
    path = token_file(settings)
    try:
        return path.read_text().strip()
    except OSError:
        raise AuthenticationError(f"no token: pass token=, set PANRAY_TOKEN or run `panray token` ({path} absent)")\
            from None


def _table(data: dict[str, Any], row: Callable[..., _R]) -> list[_R]:
    return [row(*r) for r in data["rows"]]


class RemoteService:
    """A client of one panray server, authenticating with a bearer token."""

    def __init__(self, url: str, *, token: str | None = None, settings: Settings | None = None):
        self.settings = settings or Settings.load()
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url + API, timeout=_TIMEOUT,
                                  headers={"Authorization": f"Bearer {resolve_token(token, self.settings)}"})

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise PanrayError(f"panray server {self.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {response.status_code}: {response.text[:200]}"
            raise _ERRORS.get(response.status_code, PanrayError)(message)
        return response.json()

    def _get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params={k: v for k, v in params.items() if v is not None})

    # -- submit --------------------------------------------------------------------------------

    def submit_campaign(self, who: Identity | None, campaign: Campaign) -> list[int]:
        body = campaign.model_dump_json(exclude_unset=True)
        out = self._call("POST", "/campaigns", content=body, headers={"Content-Type": "application/json"})
        return list(out["workflow_ids"])

    # -- read ----------------------------------------------------------------------------------

    def workflow(self, workflow_id: int) -> WorkflowRow:
        return WorkflowRow(**self._get(f"/workflows/{workflow_id}"))

    def workflows(self, *, active_only: bool = False) -> list[WorkflowRow]:
        return _table(self._get("/workflows", active_only=active_only), WorkflowRow)

    def status(self, workflow_id: int | None = None) -> list[WorkflowSummary]:
        return [WorkflowSummary(**s) for s in self._get("/status", workflow_id=workflow_id)]

    def is_final(self, workflow_id: int) -> bool:
        from panray.statuses import FINAL_WORKFLOW_STATES

        return self.workflow(workflow_id).status in {s.value for s in FINAL_WORKFLOW_STATES}

    def tasks(self, workflow_id: int) -> list[TaskRow]:
        return _table(self._get(f"/workflows/{workflow_id}/tasks"), TaskRow)

    def jobs(self, workflow_id: int, status: Sequence[str] | None = None, *, label: str | None = None,
             site: str | None = None, limit: int | None = None, offset: int = 0) -> list[JobRow]:
        """Pages through the server's job list until ``limit`` jobs (or all) have come."""
        if status is not None and not status:
            return []
        out: list[JobRow] = []
        next_offset: int | None = offset
        while next_offset is not None and (limit is None or len(out) < limit):
            page = min(MAX_PAGE, limit - len(out)) if limit is not None else MAX_PAGE
            data = self._call("GET", f"/workflows/{workflow_id}/jobs", params=[
                *(("status", s) for s in status or ()), *((k, v) for k, v in (("label", label), ("site", site))
                                                          if v is not None),
                ("limit", page), ("offset", next_offset)])
            out += _table(data, JobRow)
            next_offset = data["next_offset"]
        return out

    def job_page(self, workflow_id: int, query: JobQuery) -> JobPage:
        params = [*(("status", s) for s in query.status), *(
            (k, v) for k, v in (("label", query.label), ("site", query.site), ("error_class", query.error_class),
                                ("exit_code", query.exit_code), ("task_id", query.task_id), ("name", query.name),
                                ("sort", query.sort), ("limit", query.limit), ("offset", query.offset))
            if v is not None)]
        data = self._call("GET", f"/workflows/{workflow_id}/job-page", params=params)
        return JobPage(_table(data, JobRow), list(data["created"]), int(data["total"]))

    def error_groups(self, workflow_id: int) -> list[ErrorGroupRow]:
        return _table(self._get(f"/workflows/{workflow_id}/errors"), ErrorGroupRow)

    def manager_alive(self, workflow_id: int) -> bool | None:
        alive = self._get(f"/workflows/{workflow_id}/manager")["alive"]
        return None if alive is None else bool(alive)

    def job(self, job_id: int) -> JobRow:
        return JobRow(**self._get(f"/jobs/{job_id}")["job"])

    def attempts(self, job_id: int) -> list[AttemptRow]:
        return _table(self._get(f"/jobs/{job_id}/attempts"), AttemptRow)

    def history(self, job_id: int) -> list[HistoryRow]:
        return _table(self._get(f"/jobs/{job_id}/history"), HistoryRow)

    def transfers(self, job_id: int) -> list[TransferRow]:
        return _table(self._get(f"/jobs/{job_id}/transfers"), TransferRow)

    def decisions(self, job_id: int) -> list[DecisionRow]:
        return _table(self._get(f"/jobs/{job_id}/decisions"), DecisionRow)

    def max_pss(self, workflow_id: int) -> dict[int, int]:
        return {int(k): v for k, v in self._get(f"/workflows/{workflow_id}/max-pss").items()}

    def quanta(self, workflow_id: int) -> list[QuantumRow]:
        return _table(self._get(f"/workflows/{workflow_id}/quanta"), QuantumRow)

    def logs(self, job_id: int | None = None, *, task_id: int | None = None, attempt: int | None = None,
             grep: str | None = None, source: str | None = None) -> list[dict[str, Any]]:
        return list(self._get("/logs", job_id=job_id, task_id=task_id, attempt=attempt, grep=grep, source=source))

    def log_files(self, job_id: int, attempt: int | None = None) -> list[str]:
        return list(self._get(f"/jobs/{job_id}/log-files", attempt=attempt))

    def sites(self) -> list[dict[str, Any]]:
        return list(self._get("/sites"))

    def audit(self, *, user: str | None = None, limit: int = 100) -> list[AuditRow]:
        return _table(self._get("/audit", user=user, limit=limit), AuditRow)

    def wait(self, workflow_ids: Sequence[int], *, timeout: float | None = None,
             progress: Progress | None = None) -> dict[int, str]:
        """Long-polls the server per workflow (each request blocks there up to ``MAX_WAIT`` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out: dict[int, str] = {}
        for wf_id in workflow_ids:
            while True:
                left = MAX_WAIT if deadline is None else min(MAX_WAIT, max(deadline - time.monotonic(), 0.0))
                step = min(left, 0.5) if progress else left
                status = self._get(f"/workflows/{wf_id}/wait", timeout=step)["status"]
                if progress:
                    progress(self._progress(wf_id), status is not None)
                if status is not None:
                    out[wf_id] = status
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"workflow {wf_id} still running after {timeout} s")
        return out

    def _progress(self, workflow_id: int) -> dict[str, Any]:
        [s] = self.status(workflow_id)
        return {"workflow_id": workflow_id, "counts": s.jobs, "total": s.total}

    # -- act -----------------------------------------------------------------------------------

    def cancel(self, who: Identity | None, workflow_id: int, *, task_id: int | None = None,
               job_ids: Sequence[int] | None = None) -> bool:
        body = {"task_id": task_id, "job_ids": None if job_ids is None else list(job_ids)}
        return bool(self._call("POST", f"/workflows/{workflow_id}/cancel", json=body)["reached"])

    def retry(self, who: Identity | None, workflow_id: int) -> None:
        self._call("POST", f"/workflows/{workflow_id}/retry")

    def retry_jobs(self, who: Identity | None, workflow_id: int, *, task_id: int | None = None,
                   job_ids: Sequence[int] | None = None, memory: int | None = None) -> int:
        body = {"task_id": task_id, "job_ids": None if job_ids is None else list(job_ids), "memory": memory}
        return int(self._call("POST", f"/workflows/{workflow_id}/retry-jobs", json=body)["retried"])

    def hold(self, who: Identity | None, workflow_id: int, *, task_id: int | None = None) -> bool:
        return bool(self._call("POST", f"/workflows/{workflow_id}/hold", json={"task_id": task_id})["reached"])

    def release(self, who: Identity | None, workflow_id: int, *, task_id: int | None = None) -> bool:
        return bool(self._call("POST", f"/workflows/{workflow_id}/release", json={"task_id": task_id})["reached"])

    def set_priority(self, who: Identity | None, workflow_id: int, priority: int, *, task_id: int | None = None,
                     job_ids: Sequence[int] | None = None) -> int:
        body = {"priority": priority, "task_id": task_id, "job_ids": None if job_ids is None else list(job_ids)}
        return int(self._call("PUT", f"/workflows/{workflow_id}/priority", json=body)["jobs"])

    def held(self, workflow_id: int) -> bool | list[int]:
        from panray.core.workflow_core import held_of

        return held_of(self.workflow(workflow_id).settings)

    def resume(self, who: Identity | None, workflow_ids: Sequence[int] | None = None) -> list[int]:
        body = None if workflow_ids is None else {"workflow_ids": list(workflow_ids)}
        return list(self._call("POST", "/resume", json=body)["workflow_ids"])

    def set_site_status(self, who: Identity | None, site: str, status: str) -> bool:
        return bool(self._call("PUT", f"/sites/{site}/status", json={"status": status})["applied"])

    def prompt_notify(self, who: Identity | None, visit: int, *, visits: int = 1,
                      detectors: Sequence[int] | None = None, instrument: str = "LSSTCam") -> str:
        body = {"visit": visit, "visits": visits, "detectors": None if detectors is None else list(detectors),
                "instrument": instrument}
        return str(self._call("POST", "/prompt/notify", json=body)["text"])
