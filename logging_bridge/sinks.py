"""Where structured log entries go: a local JSON-lines directory or Google Cloud Logging.

Both sinks take the flat entries of :func:`~panray.logging_bridge.entries.make_entry` and answer the
same id queries, so ``panray logs`` does not care which one a deployment uses.

The Cloud Logging sink exists because the library's own ``CloudLoggingHandler`` transport drops a
batch on any failure and loses its queue at exit. Here one background thread owns a bounded spool,
retries with exponential backoff (each request has a timeout, so a hanging endpoint cannot stall it),
and ``flush``/``close`` wait for delivery. Every entry carries an ``insertId`` so a retried request
that did land is deduplicated by the service. Given a directory, the spool is also kept on disk
(:mod:`~panray.logging_bridge.spool`): what a stop, a kill or an outage leaves undelivered is sent
by the next sink opened there. When the bound is hit the newest entries go, and each job that lost
lines gets an entry saying how many (``panrayDroppedLines``), which ``panray logs`` shows.

Examples:
    >>> import tempfile
    >>> from panray.logging_bridge import make_entry
    >>> sink = LocalSink(Path(tempfile.mkdtemp()))
    >>> sink.write([make_entry("hello", {"PandaJobID": "j1", "attemptNr": 1}, "stdout")])
    >>> [e["message"] for e in sink.query(job_id="j1")]
    ['hello']
"""

from __future__ import annotations

import functools
import json
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from panray.config import Settings
from panray.logging_bridge.entries import ID_FIELDS, SOURCE_FIELD, STRING_IDS, TIMESTAMP_FIELD, make_entry
from panray.logging_bridge.spool import DiskSpool

if TYPE_CHECKING:  # the Google clients load only with a cloud sink: ~35 MiB and ~0.3 s in every pilot
    from google.auth.credentials import Credentials
    from google.cloud.logging_v2.resource import Resource

MAX_ENTRY_BYTES = 256 * 1024
MAX_REQUEST_BYTES = 10 * 1024 * 1024
TRUNCATION_MARKER = " ...[truncated by panray]"
DROPPED_FIELD = "panrayDroppedLines"
"""Set on the entry that tells how many of a job's lines a full spool dropped."""
_NOTICE_IDS = (*ID_FIELDS.values(), "site", "Harvester_WorkerID", "label")
_KEPT_ON_TRUNCATION = frozenset({*ID_FIELDS.values(), "site", "Harvester_WorkerID", "label",
                                 TIMESTAMP_FIELD, SOURCE_FIELD, "stream", "severity"})


class LogSink(ABC):
    """Ships entries somewhere queryable; ``write`` never blocks on the network."""

    @abstractmethod
    def write(self, entries: Sequence[dict[str, Any]]) -> None:
        """Accept entries for delivery (buffered; see :meth:`flush`)."""

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written so far is delivered; True when it was."""
        return True

    def close(self, timeout: float | None = 30.0) -> bool:
        """Flush and release resources; True when nothing was left undelivered."""
        return self.flush(timeout)

    @abstractmethod
    def stats(self) -> dict[str, int]:
        """Counters: delivered, retried, dropped, truncated, pending."""

    @abstractmethod
    def query(
        self,
        *,
        job_id: str | None = None,
        task_id: str | None = None,
        workflow_id: str | None = None,
        attempt: int | None = None,
        grep: str | None = None,
        limit: int | None = None,
        source: str | None = None,
    ) -> list[dict[str, Any]]:
        """Entries matching every given id and ``source`` (and ``grep`` in ``message``), oldest first."""

    def __enter__(self) -> LogSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _id_filters(**ids: Any) -> dict[str, Any]:
    """Query keywords -> jsonPayload fields, leaving out the ones not asked for."""
    return {ID_FIELDS[key]: value for key, value in ids.items() if value is not None}


class LocalSink(LogSink):
    """JSON-lines files ``<dir>/<workflow>/<task>/<job>.<attempt>.jsonl``: one writer per file."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._delivered = 0
        self._made: set[Path] = set()  #: folders known to exist: no mkdir per write

    def _path(self, values: dict[str, Any]) -> Path:
        def part(field: str) -> str:
            value = values.get(field)
            return "*" if value == "*" else _safe(value)

        name = f"{part('PandaJobID')}.{part('attemptNr')}.jsonl"
        return self.directory / part("RequestID") / part("TaskID") / name

    def write(self, entries: Sequence[dict[str, Any]]) -> None:
        by_file: dict[Path, list[str]] = {}
        for entry in entries:
            by_file.setdefault(self._path(entry), []).append(json.dumps(entry) + "\n")
        with self._lock:
            for path, lines in by_file.items():
                if path.parent not in self._made:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self._made.add(path.parent)
                with path.open("a", encoding="utf-8") as out:
                    out.write("".join(lines))
            self._delivered += len(entries)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"delivered": self._delivered, "retried": 0, "dropped": 0, "truncated": 0,
                    "pending": 0}

    def query(
        self,
        *,
        job_id: str | None = None,
        task_id: str | None = None,
        workflow_id: str | None = None,
        attempt: int | None = None,
        grep: str | None = None,
        limit: int | None = None,
        source: str | None = None,
    ) -> list[dict[str, Any]]:
        wanted = _id_filters(job_id=job_id, task_id=task_id, workflow_id=workflow_id, attempt=attempt,
                             source=source)
        pattern = self._path({field: wanted.get(field, "*") for field in ID_FIELDS.values()})
        found: list[dict[str, Any]] = []
        for path in sorted(self.directory.glob(str(pattern.relative_to(self.directory))),
                           key=_natural_key):
            for entry in _read_jsonl(path):
                if _matches(entry, wanted, grep):
                    found.append(entry)
                    if limit is not None and len(found) >= limit:
                        return found
        return found


def _safe(value: Any) -> str:
    """A path component that cannot escape the directory or act as a glob pattern."""
    return "_" if value is None else re.sub(r"[^A-Za-z0-9_.-]", "_", str(value)).lstrip(".") or "_"


def _natural_key(path: Path) -> list[Any]:
    """So that attempt 10 sorts after attempt 2."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", str(path))]


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def _matches(entry: dict[str, Any], wanted: dict[str, Any], grep: str | None) -> bool:
    if any(str(entry.get(field)) != str(value) for field, value in wanted.items()):
        return False
    return grep is None or grep.lower() in str(entry.get("message", "")).lower()


def _wire_size(obj: Any) -> int:
    """Bytes on the wire: the client serialises with ``json.dumps`` defaults (ASCII escapes)."""
    return len(json.dumps(obj))


def fit_entry(entry: dict[str, Any], limit: int = MAX_ENTRY_BYTES) -> tuple[dict[str, Any], bool]:
    """Cut the largest strings (then, if need be, the whole record) so the entry fits ``limit``.

    The cut text ends with :data:`TRUNCATION_MARKER` and the entry gains ``panrayTruncatedBytes``
    (its original size), so a reader knows it is looking at part of a line.
    """
    size = _wire_size(entry)
    if size <= limit:
        return entry, False
    out = {**entry, "panrayTruncatedBytes": size}
    cut: set[str] = set()
    while (size := _wire_size(out)) > limit:
        candidates = [k for k, v in out.items() if isinstance(v, str) and k not in cut]
        key = max(candidates, key=lambda k: len(out[k]), default=None)
        if key is None or len(out[key]) <= len(TRUNCATION_MARKER):
            rest = {k: v for k, v in out.items() if k not in _KEPT_ON_TRUNCATION}
            out = {k: v for k, v in out.items() if k in _KEPT_ON_TRUNCATION}
            out["message"] = json.dumps(rest)
            out["panrayTruncatedBytes"] = entry.get("panrayTruncatedBytes", _wire_size(entry))
            cut = set(out) - {"message"}
            continue
        keep = max(0, len(out[key]) - (size - limit) - len(TRUNCATION_MARKER) - 16)
        out[key] = out[key][:keep] + TRUNCATION_MARKER
        cut.add(key)
    return out, True


@dataclass(frozen=True)
class CloudSinkOptions:
    """Delivery knobs of :class:`CloudLoggingSink`; the defaults suit a pilot."""

    max_spool: int = 100_000
    max_spool_bytes: int = 64 * 1024 * 1024  #: on the wire; newer entries are dropped beyond it
    request_timeout: float = 10.0
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    max_batch_entries: int = 1000
    max_request_bytes: int = MAX_REQUEST_BYTES - 64 * 1024
    max_entry_bytes: int = MAX_ENTRY_BYTES - 4 * 1024
    query_days: int = 30


def _describe(exc: Exception) -> str:
    """``BadRequest: 400 POST ...: reason``: the HTTP status stays visible in stats and logs."""
    return f"{type(exc).__name__}: {exc}"


def _rfc3339(value: Any) -> str:
    """The Zulu form the API (and the client's parser) wants, of epoch seconds or an ISO time;
    now when ``value`` is neither."""
    try:
        moment = (datetime.fromtimestamp(value, UTC) if isinstance(value, int | float)
                  else datetime.fromisoformat(str(value)))
    except (ValueError, OverflowError, OSError):
        moment = datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _retryable(exc: Exception) -> bool:
    """Outages (5xx, 408, 429, refused, reset, timed out) are retried; a rejected request is not."""
    import requests
    from google.api_core.exceptions import GoogleAPICallError

    if isinstance(exc, requests.RequestException):
        return True
    if isinstance(exc, GoogleAPICallError):
        return exc.code is None or exc.code in (408, 429) or exc.code >= 500
    return False


@functools.cache
def _google() -> Any:
    """The Google client classes panray adapts, imported on first use (a cloud sink's)."""
    from types import SimpleNamespace

    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from google.auth.transport.requests import AuthorizedSession
    from google.cloud import logging as cloud_logging
    from google.cloud.logging_v2.resource import Resource

    class TimeoutSession(AuthorizedSession):  # type: ignore[misc]
        """Every request gets our timeout: the client's own default is 60 s, too long for a pilot."""

        def __init__(self, credentials: Credentials, timeout: float):
            super().__init__(credentials)
            self._timeout = timeout

        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            kwargs["timeout"] = self._timeout
            return super().request(method, url, *args, **kwargs)

    class Client(cloud_logging.Client):  # type: ignore[misc]
        """A client whose every logger has our resource: the library otherwise *detects* one by probing
        the metadata server, for ``client.logger(name)`` and for each log name ``list_entries`` returns."""

        def __init__(self, *, resource: Resource, **kwargs: Any):
            super().__init__(**kwargs)
            self._panray_resource = resource

        def logger(self, name: str, *, labels: Any = None, resource: Resource | None = None) -> Any:
            return super().logger(name, labels=labels, resource=resource or self._panray_resource)

    return SimpleNamespace(auth=google.auth, AnonymousCredentials=AnonymousCredentials, logging=cloud_logging,
                           Resource=Resource, TimeoutSession=TimeoutSession, Client=Client)


class CloudLoggingSink(LogSink):
    """Google Cloud Logging through the real client, with a spool that survives outages.

    ``endpoint`` points the client elsewhere (a test server) and implies anonymous credentials;
    without it the deployment's default credentials are used. ``resource`` defaults to ``global``,
    always set so the client never probes a metadata server to guess one.
    """

    def __init__(
        self,
        project: str,
        log_name: str = "Panda-RubinLog",
        endpoint: str | None = None,
        resource: Resource | None = None,
        *,
        credentials: Credentials | None = None,
        options: CloudSinkOptions | None = None,
        spool_dir: Path | None = None,
    ):
        self.options = options or CloudSinkOptions()
        g = _google()
        if credentials is None:
            credentials = (g.AnonymousCredentials() if endpoint
                           else g.auth.default(scopes=g.logging.Client.SCOPE)[0])
        self._session = g.TimeoutSession(credentials, self.options.request_timeout)
        resource = resource or g.Resource(type="global", labels={"project_id": project})
        self._client = g.Client(
            resource=resource,
            project=project,
            credentials=credentials,
            _http=self._session,
            _use_grpc=False,
            client_options={"api_endpoint": endpoint} if endpoint else None,
        )
        self.full_log_name = self._client.logger(log_name).full_name
        self._resource = resource._to_dict()
        self._id_prefix = uuid.uuid4().hex[:12]
        self._seq = 0
        self._spool: deque[_Item] = deque()
        self._inflight: list[_Item] = []
        self._spool_bytes = 0
        self._cond = threading.Condition()
        self._counts = {"delivered": 0, "retried": 0, "dropped": 0, "truncated": 0, "recovered": 0}
        self.last_error: str | None = None
        self._closing = self._abort = False
        self._lost: dict[tuple[tuple[str, Any], ...], int] = {}  #: lines dropped per job, not yet told
        self._disk = DiskSpool(spool_dir) if spool_dir is not None else None
        self._written_end = 0  #: journal position after the last entry spooled
        if self._disk is not None and self._disk.adopted:
            recovered = [json.loads(line) for line in self._disk.adopted]
            self._counts["recovered"] = len(recovered)
            self._enqueue(recovered, bound=False)  # within the bound when spooled, with its notices
        self._worker = threading.Thread(target=self._run, name="panray-cloud-logging", daemon=True)
        self._worker.start()

    def write(self, entries: Sequence[dict[str, Any]]) -> None:
        """Spool entries; when the spool is full the newest are dropped (counted, and told per job)."""
        wire = [self._to_wire(entry) for entry in entries]
        with self._cond:
            if self._closing:
                self._counts["dropped"] += len(wire)
                return
            self._enqueue(wire)
            self._cond.notify_all()

    def _enqueue(self, wire: list[dict[str, Any]], *, bound: bool = True) -> None:
        """Append to the spool and its journal what fits the bounds; the rest is dropped and
        counted per job for a later notice. The caller holds the lock.

        The newest go, not the oldest: so the journal's undelivered part stays one tail."""
        room_n = self.options.max_spool - len(self._spool)
        room_b = self.options.max_spool_bytes - self._spool_bytes
        kept: list[tuple[dict[str, Any], str]] = []
        for entry in wire:
            line = json.dumps(entry)
            if bound and (len(kept) >= room_n or len(line) > room_b):
                room_n = 0  # full: everything after this goes too, so order is kept
                payload = entry.get("jsonPayload", {})
                key = tuple((f, payload.get(f)) for f in _NOTICE_IDS)
                self._lost[key] = self._lost.get(key, 0) + 1
                self._counts["dropped"] += 1
                continue
            kept.append((entry, line))
            room_b -= len(line)
        ends = (self._disk.append([line for _, line in kept]) if self._disk is not None
                else [0] * len(kept))
        for (entry, line), end in zip(kept, ends):
            self._spool.append((entry, len(line), end))
            self._spool_bytes += len(line)
        if ends:
            self._written_end = ends[-1]

    def _tell_losses(self) -> None:
        """Spool one entry per job that lost lines, saying how many (caller holds the lock)."""
        if self._lost:
            lost, self._lost = self._lost, {}
            self._enqueue([self._to_wire(_drop_notice(ids, n)) for ids, n in lost.items()], bound=False)

    def _settle(self) -> None:
        """Tell the journal how far delivery (or dropping) has got (caller holds the lock)."""
        if self._disk is None:
            return
        head = self._inflight[0] if self._inflight else self._spool[0] if self._spool else None
        self._disk.done(self._written_end if head is None else head[2] - head[1] - 1)

    def _to_wire(self, entry: dict[str, Any]) -> dict[str, Any]:
        payload, truncated = fit_entry(entry, self.options.max_entry_bytes)
        with self._cond:
            self._seq += 1
            seq = self._seq
            self._counts["truncated"] += truncated
        return {
            "insertId": f"{self._id_prefix}-{seq:010d}",
            "timestamp": _rfc3339(entry.get(TIMESTAMP_FIELD)),
            "severity": entry.get("severity", "DEFAULT"),
            "jsonPayload": payload,
        }

    def _take_batch(self) -> list[_Item]:
        """Oldest entries that fit one request (caller holds the lock)."""
        batch: list[_Item] = []
        total = 0
        while self._spool and len(batch) < self.options.max_batch_entries:
            size = self._spool[0][1] + 2
            if batch and total + size > self.options.max_request_bytes:
                break
            batch.append(self._spool.popleft())
            self._spool_bytes -= size - 2
            total += size
        return batch

    def _run(self) -> None:
        delay = self.options.backoff_initial
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._spool or self._inflight or self._closing)
                if self._abort or not (self._spool or self._inflight):
                    return
                if not self._inflight:
                    self._inflight = self._take_batch()
                batch = [wire for wire, _, _ in self._inflight]
            try:
                self._client.logging_api.write_entries(
                    batch, logger_name=self.full_log_name, resource=self._resource, partial_success=True)
                error = None
            except Exception as exc:  # noqa: BLE001 - classified just below, never lost silently
                error = exc
            with self._cond:
                if error is None or not _retryable(error):
                    self._counts["delivered" if error is None else "dropped"] += len(batch)
                    self.last_error = None if error is None else _describe(error)
                    self._inflight = []
                    self._settle()
                    if error is None:
                        self._tell_losses()
                    delay = self.options.backoff_initial
                    self._cond.notify_all()
                    continue
                self._counts["retried"] += 1
                self.last_error = _describe(error)
                self._cond.wait_for(lambda: self._abort, timeout=delay)
                delay = min(delay * 2, self.options.backoff_max)

    def _pending(self) -> int:
        return len(self._spool) + len(self._inflight)

    def flush(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._pending() == 0, timeout)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Deliver what is spooled within ``timeout``; whatever is left stays in the journal for the
        next sink on the same directory or, without one, is counted as dropped."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._worker.join(timeout)
        if self._worker.is_alive():
            with self._cond:
                self._abort = True
                self._cond.notify_all()
            self._worker.join(self.options.request_timeout + 1.0)
        with self._cond:
            left = self._pending()
            if self._disk is None:
                self._counts["dropped"] += left
            else:
                self._tell_losses()  # journaled: the next sink here sends them
                left = self._pending()
                self._disk.close()
            self._spool.clear()
            self._inflight = []
        self._session.close()
        return left == 0

    def stats(self) -> dict[str, int]:
        """Counters; ``recovered`` entries came from the journal of a sink that stopped before
        delivering them, ``dropped`` ones were lost to the spool's bound (or, with no journal, to
        a close before delivery)."""
        with self._cond:
            return {**self._counts, "pending": self._pending()}

    def query(
        self,
        *,
        job_id: str | None = None,
        task_id: str | None = None,
        workflow_id: str | None = None,
        attempt: int | None = None,
        grep: str | None = None,
        limit: int | None = None,
        source: str | None = None,
    ) -> list[dict[str, Any]]:
        """Filter on jsonPayload ids over the last ``options.query_days`` (the default retention)."""
        since = datetime.now(UTC) - timedelta(days=self.options.query_days)
        clauses = [f"logName={json.dumps(self.full_log_name)}",
                   f'timestamp>="{since.strftime("%Y-%m-%dT%H:%M:%SZ")}"']
        wanted = _id_filters(job_id=job_id, task_id=task_id, workflow_id=workflow_id, attempt=attempt,
                             source=source)
        clauses += [f"jsonPayload.{field}={_filter_value(str(value) if field in STRING_IDS else value)}"
                    for field, value in wanted.items()]
        if grep is not None:
            clauses.append(f"jsonPayload.message:{json.dumps(grep)}")
        found = self._client.list_entries(
            filter_=" AND ".join(clauses), order_by=_google().logging.ASCENDING, max_results=limit,
            page_size=min(limit or 1000, 1000))
        return [dict(entry.payload) for entry in found]


_Item = tuple[dict[str, Any], int, int]
"""A spooled entry: wire form, size on the wire, journal position after it (0 without one)."""


def _drop_notice(ids: tuple[tuple[str, Any], ...], n: int) -> dict[str, Any]:
    """The entry telling that ``n`` lines of one job were dropped by a full spool."""
    entry = make_entry(f"panray dropped {n} log lines of this job: the pilot's log spool was full",
                       {k: v for k, v in ids if v is not None}, "panray")
    entry["severity"] = "WARNING"
    entry[DROPPED_FIELD] = n
    return entry


def _filter_value(value: Any) -> str:
    """Numbers bare, everything else as a quoted string, as the filter language wants."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return json.dumps(str(value))


def make_sink(settings: Settings, spool_dir: Path | None = None) -> LogSink:
    """The deployment's sink: local files under ``logs_dir`` unless ``log_sink`` is ``cloud``;
    ``spool_dir`` (a pilot's) keeps the cloud sink's undelivered entries on disk."""
    if settings.log_sink == "cloud":
        return CloudLoggingSink(settings.gcp_project, settings.log_name,
                                endpoint=settings.cloud_logging_endpoint, spool_dir=spool_dir,
                                options=CloudSinkOptions(max_spool_bytes=settings.log_spool_bytes))
    return LocalSink(settings.logs_dir)
