"""The pilot's own record of one job attempt, next to the payload's lines.

When a job fails as a *system* error the payload's log says nothing about why; this record does:
received, work directory, command decoded, started with pid, signals sent and why, exit, memory,
uploads done or failed, pilot errors. Each event is one JSON line in the attempt's ``pilot.log``
(uploaded at job end with the payload's files) and one entry with ``source: pilot`` through the
same sink as the payload's lines, carrying the same PanDA ids.

Examples:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> plog = PilotLog(d / "pilot.log", {"PandaJobID": "5", "attemptNr": 1}, sink=None)
    >>> plog.event("started", "payload started with pid 42", pid=42)
    >>> e = json.loads((d / "pilot.log").read_text())
    >>> e["source"], e["event"], e["pid"], e["PandaJobID"], e["severity"]
    ('pilot', 'started', 42, '5', 'INFO')
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from panray.logging_bridge.entries import SOURCE_FIELD, make_entry

if TYPE_CHECKING:
    from panray.logging_bridge.sinks import LogSink

class PilotLog:
    """Appends events to ``path`` and ships them to ``sink``; any thread may call :meth:`event`."""

    def __init__(self, path: Path, ids: Mapping[str, Any], sink: LogSink | None):
        self.path = path
        self._ids = {**ids, SOURCE_FIELD: "pilot"}
        self._sink = sink
        self._lock = threading.Lock()

    def event(self, event: str, message: str, *, level: str = "INFO", **fields: Any) -> None:
        """One event: a short name (``started``), a sentence for people, and its figures."""
        entry = make_entry(json.dumps({"event": event, "message": message, "levelName": level, **fields}),
                           self._ids, "pilot")
        with self._lock:
            with self.path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(entry) + "\n")
        if self._sink is not None:
            self._sink.write([entry])
