"""Turn one payload log line into one structured entry.

Rubin payloads log one JSON record a line (``levelName``, ``message``, ``MDC``, ...). The pilot merges
panray's ids into each so operators can filter Cloud Logging on ``jsonPayload.PandaJobID`` and
friends; a line that is not a JSON object still ships, as ``message``. Names and types follow
PanDA's pilot, so queries written for its logs match: the ids are strings
(``jsonPayload.TaskID="6969"``) and ``PilotTimeStamp`` is the pilot's clock in epoch seconds.
``source`` tells the payload's lines (``payload``) from the pilot's own record (``pilot``).

Examples:
    >>> e = make_entry('{"levelName": "WARNING", "message": "hot"}', {"PandaJobID": "j1"}, "stdout")
    >>> e["severity"], e["message"], e["PandaJobID"], e["stream"], type(e["PilotTimeStamp"])
    ('WARNING', 'hot', 'j1', 'stdout', <class 'float'>)
    >>> make_entry("plain text", {}, "stderr")["message"]
    'plain text'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
import time
from typing import Any

ID_FIELDS: dict[str, str] = {
    "job_id": "PandaJobID",
    "task_id": "TaskID",
    "workflow_id": "RequestID",
    "attempt": "attemptNr",
    "source": "source",
}
"""Query keyword -> jsonPayload field, shared by every sink so filters mean the same everywhere."""
STRING_IDS = frozenset({"PandaJobID", "TaskID", "RequestID", "Harvester_WorkerID"})
"""Ids PanDA's pilot sends as strings; panray does the same, whatever type it holds them in."""
TIMESTAMP_FIELD = "PilotTimeStamp"
SOURCE_FIELD = "source"

_JSON_SCALARS = (str, int, float, bool, type(None))

_SEVERITY_BY_NAME = {
    "TRACE": "DEBUG",
    "DEBUG": "DEBUG",
    "VERBOSE": "DEBUG",
    "INFO": "INFO",
    "NOTICE": "NOTICE",
    "WARN": "WARNING",
    "WARNING": "WARNING",
    "ERROR": "ERROR",
    "CRITICAL": "CRITICAL",
    "FATAL": "CRITICAL",
}
_SEVERITY_BY_NUMBER = ((50, "CRITICAL"), (40, "ERROR"), (30, "WARNING"), (20, "INFO"), (1, "DEBUG"))


def panray_ids(
    *,
    job_id: str,
    task_id: str,
    workflow_id: str,
    attempt: int,
    site: str,
    pilot_id: str,
    label: str,
) -> dict[str, Any]:
    """The ids mapping for :func:`make_entry`, under the PanDA names operators already query by."""
    return {
        "PandaJobID": str(job_id),
        "TaskID": str(task_id),
        "RequestID": str(workflow_id),
        "attemptNr": attempt,
        "site": site,
        "Harvester_WorkerID": str(pilot_id),
        "label": label,
    }


def severity_of(record: Mapping[str, Any]) -> str:
    """Cloud Logging severity from Python-logging's ``levelName`` (or ``levelNo``); DEFAULT otherwise."""
    name = record.get("levelName")
    if isinstance(name, str) and name.upper() in _SEVERITY_BY_NAME:
        return _SEVERITY_BY_NAME[name.upper()]
    number = record.get("levelNo")
    if isinstance(number, int) and not isinstance(number, bool):
        return next((sev for floor, sev in _SEVERITY_BY_NUMBER if number >= floor), "DEFAULT")
    return "DEFAULT"


def make_entry(line: str, ids: Mapping[str, Any], stream: str) -> dict[str, Any]:
    """One flat entry: the payload's record, then the pilot's ids (which win), stream and severity.

    Id values that JSON cannot hold (paths, enums) become strings here, so no sink fails on them.
    """
    text = line.rstrip("\r\n")
    record: dict[str, Any] | None = None
    if text.lstrip().startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            record = parsed
    return entry_of(record if record is not None else {"message": text}, ids, stream)


def entry_of(record: Mapping[str, Any], ids: Mapping[str, Any], stream: str) -> dict[str, Any]:
    """:func:`make_entry` of a record already parsed (the pilot's own events: no JSON round trip)."""
    plain_ids = {k: str(v) if k in STRING_IDS or not isinstance(v, _JSON_SCALARS) else v for k, v in ids.items()}
    entry = {**record, **plain_ids, "stream": stream, "severity": severity_of(record)}
    entry.setdefault(SOURCE_FIELD, "payload")
    entry.setdefault(TIMESTAMP_FIELD, time.time())
    return entry
