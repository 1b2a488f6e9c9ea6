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

from panray.logging_bridge.entries import SOURCE_FIELD, entry_of

if TYPE_CHECKING:
    from panray.logging_bridge.sinks import LogSink

class PilotLog:
    """Appends events to ``path`` and ships them to ``sink``; any thread may call :meth:`event`.

    ``buffered`` keeps events in memory until :meth:`take` or :meth:`flush` (a payload's start
    then does no file or sink work; the pilot's tailer ships them with the payload's lines).
    """

    def __init__(self, path: Path, ids: Mapping[str, Any], sink: LogSink | None, *, buffered: bool = False):
        self.path = path
        self._ids = {**ids, SOURCE_FIELD: "pilot"}
        self._sink = sink
        self._lock = threading.Lock()
        self._buffered = buffered
        self._pending: list[dict[str, Any]] = []

    def event(self, event: str, message: str, *, level: str = "INFO", **fields: Any) -> None:
        """One event: a short name (``started``), a sentence for people, and its figures."""
        entry = entry_of({"event": event, "message": message, "levelName": level, **fields}, self._ids, "pilot")
        if self._buffered:
            with self._lock:
                self._pending.append(entry)
            return
        with self._lock:
            self._append([entry])
        if self._sink is not None:
            self._sink.write([entry])

    def _append(self, entries: list[dict[str, Any]]) -> None:
        """Caller holds the lock, so that events land in the file in order."""
        with self.path.open("a", encoding="utf-8") as out:
            out.write("".join(json.dumps(e) + "\n" for e in entries))

    def take(self) -> list[dict[str, Any]]:
        """The events buffered since the last call, now appended to the file, for the caller to ship."""
        with self._lock:
            entries, self._pending = self._pending, []
            if entries:
                self._append(entries)
        return entries

    def flush(self) -> None:
        """Write and ship the buffered events."""
        entries = self.take()
        if entries and self._sink is not None:
            self._sink.write(entries)
