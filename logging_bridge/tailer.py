"""Follow a payload's stdout/stderr files and ship each complete line as it appears.

A line still being written (no newline yet) stays in the tailer until its end arrives, so an entry is
never half a record; at :meth:`LogTailer.stop` whatever tail is left ships whole.

A pilot follows all its payloads with one :class:`PilotTailer` thread, and each poll ships what
every payload wrote in one sink write; :class:`LogTailer` follows the files of one payload.

Examples:
    >>> tailer = LogTailer([(out, "stdout"), (err, "stderr")], ids, sink, interval=2.0)  # doctest: +SKIP
    >>> tailer.start(); run_payload(); shipped = tailer.stop(); sink.close()  # doctest: +SKIP
    >>> shared = PilotTailer(sink, interval=2.0); shared.start()               # doctest: +SKIP
    >>> shared.follow(key, files, ids, pilot_log); run_payload(); shared.finish(key)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from panray.logging_bridge.entries import make_entry
from panray.logging_bridge.sinks import LogSink

if TYPE_CHECKING:
    from panray.logging_bridge.pilot_log import PilotLog

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


class _Followed:
    """One payload's files, its ids and the pilot's buffered record of it."""

    def __init__(self, files: Sequence[tuple[Path, str]], ids: Mapping[str, Any], pilot_log: PilotLog | None):
        self.files = [_FollowedFile(path, stream) for path, stream in files]
        self.ids = dict(ids)
        self.pilot_log = pilot_log
        self.shipped = 0

    def entries(self, final: bool) -> list[dict[str, Any]]:
        lines = [make_entry(line, self.ids, f.stream) for f in self.files for line in f.read_lines(final)]
        self.shipped += len(lines)
        return lines + (self.pilot_log.take() if self.pilot_log is not None else [])


class PilotTailer:
    """Ships, every ``interval`` seconds, the new complete lines of every payload it follows.

    One thread and one sink write per poll for all of a pilot's payloads; a payload's
    :class:`~panray.logging_bridge.pilot_log.PilotLog` events ride along.
    """

    def __init__(self, sink: LogSink, interval: float = 2.0):
        self._sink = sink
        self._interval = interval
        self._lock = threading.Lock()
        self._followed: dict[Any, _Followed] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the daemon thread that polls every ``interval``."""
        self._thread = threading.Thread(target=self._loop, name="panray-log-tailer", daemon=True)
        self._thread.start()

    def follow(self, key: Any, files: Sequence[tuple[Path, str]], ids: Mapping[str, Any],
               pilot_log: PilotLog | None = None) -> None:
        with self._lock:
            self._followed[key] = _Followed(files, ids, pilot_log)

    def finish(self, key: Any) -> int:
        """Ship what is left of ``key`` (unterminated tails too) and stop following it; total lines."""
        with self._lock:
            followed = self._followed.pop(key, None)
            if followed is None:
                return 0
            entries = followed.entries(final=True)
            if entries:
                self._sink.write(entries)
            return followed.shipped

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a full disk must not end the tailing; finish() retries
                _log.exception("log tailer poll failed")

    def poll(self, final: bool = False) -> int:
        """Ship what is new now in every followed file (the thread calls this); lines shipped."""
        with self._lock:
            before = sum(f.shipped for f in self._followed.values())
            entries = [e for followed in self._followed.values() for e in followed.entries(final)]
            if entries:
                self._sink.write(entries)
            return sum(f.shipped for f in self._followed.values()) - before

    def close(self) -> None:
        """Stop the thread (what is still followed stays unshipped until :meth:`finish`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class LogTailer:
    """Ships new complete lines of ``files`` (path, stream name) every ``interval`` seconds."""

    def __init__(
        self,
        files: Sequence[tuple[Path, str]],
        ids: Mapping[str, Any],
        sink: LogSink,
        interval: float = 2.0,
    ):
        self._shared = PilotTailer(sink, interval)
        self._shared.follow(self, files, ids)

    def start(self) -> None:
        """Start the daemon thread that polls every ``interval``."""
        self._shared.start()

    def poll(self, final: bool = False) -> int:
        """Ship what is new now (the thread calls this); returns the number of lines shipped."""
        return self._shared.poll(final)

    def stop(self) -> int:
        """Stop polling, ship everything left including unterminated tails; total lines shipped."""
        self._shared.close()
        return self._shared.finish(self)
