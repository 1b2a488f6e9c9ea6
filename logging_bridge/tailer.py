"""Follow a payload's stdout/stderr files and ship each complete line as it appears.

A line still being written (no newline yet) stays in the tailer until its end arrives, so an entry is
never half a record; at :meth:`LogTailer.stop` whatever tail is left ships whole.

Examples:
    >>> tailer = LogTailer([(out, "stdout"), (err, "stderr")], ids, sink, interval=2.0)  # doctest: +SKIP
    >>> tailer.start(); run_payload(); shipped = tailer.stop(); sink.close()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from panray.logging_bridge.entries import make_entry
from panray.logging_bridge.sinks import LogSink

_log = logging.getLogger(__name__)


class _FollowedFile:
    """One file's read position and the incomplete line read so far."""

    def __init__(self, path: Path, stream: str):
        self.path, self.stream = Path(path), stream
        self.offset = 0
        self.partial = b""

    def read_lines(self, final: bool) -> list[str]:
        try:
            with self.path.open("rb") as handle:
                if handle.seek(0, 2) < self.offset:
                    self.offset, self.partial = 0, b""
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            data = b""
        self.offset += len(data)
        pieces = (self.partial + data).split(b"\n")
        self.partial = pieces.pop()
        if final and self.partial:
            pieces.append(self.partial)
            self.partial = b""
        return [text for raw in pieces if (text := raw.decode("utf-8", "replace").rstrip("\r")).strip()]


class LogTailer:
    """Ships new complete lines of ``files`` (path, stream name) every ``interval`` seconds."""

    def __init__(
        self,
        files: Sequence[tuple[Path, str]],
        ids: Mapping[str, Any],
        sink: LogSink,
        interval: float = 2.0,
    ):
        self._files = [_FollowedFile(path, stream) for path, stream in files]
        self._ids = dict(ids)
        self._sink = sink
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.shipped = 0

    def start(self) -> None:
        """Start the daemon thread that polls every ``interval``."""
        self._thread = threading.Thread(target=self._loop, name="panray-log-tailer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a full disk must not end the tailing; stop() retries
                _log.exception("log tailer poll failed")

    def poll(self, final: bool = False) -> int:
        """Ship what is new now (the thread calls this); returns the number of lines shipped."""
        with self._lock:
            entries = [make_entry(line, self._ids, followed.stream)
                       for followed in self._files for line in followed.read_lines(final)]
            if entries:
                self._sink.write(entries)
            self.shipped += len(entries)
            return len(entries)

    def stop(self) -> int:
        """Stop polling, ship everything left including unterminated tails; total lines shipped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll(final=True)
        return self.shipped
