"""A pilot's log spool on disk: entries not yet delivered survive a stop, a kill or an outage.

Each sink appends the entries it accepts, one JSON line each, to its own journal file in the
pilot's spool directory and records in a small offset file how far delivery has got (entries
are delivered and dropped oldest first, so what is done is always a prefix). A journal whose
owner is gone (its ``flock`` is free) is adopted by the next sink that opens the directory: a
pilot restarted under the same name re-sends what its predecessor could not. Entries keep their
``insertId``, so the service drops a re-sent entry that had in fact arrived.

Examples:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> first = DiskSpool(d)
    >>> ends = first.append(['{"insertId": "a"}', '{"insertId": "b"}'])
    >>> first.done(ends[0])  # "a" delivered, then the pilot dies without closing
    >>> first._file.close()  # killed: the lock goes with the process's file
    >>> DiskSpool(d).adopted
    ['{"insertId": "b"}']
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from pathlib import Path

_log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".jsonl"
OFFSET_SUFFIX = ".offset"
COMPACT_BYTES = 4 * 1024 * 1024
"""Delivered bytes at the head of a journal after which it is rewritten without them."""


class DiskSpool:
    """One sink's journal in ``directory``; :attr:`adopted` holds the orphans' pending lines."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._path = self.directory / f"{uuid.uuid4().hex}{JOURNAL_SUFFIX}"
        self._file = self._path.open("a+b")
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._offset = 0  #: delivered bytes at the head of the file
        self._base = 0  #: position of the file's first byte (bytes compacted away before it)
        self.adopted: list[str] = self._adopt()

    @property
    def path(self) -> Path:
        return self._path

    def _adopt(self) -> list[str]:
        """Pending lines of every journal here whose owner has gone; their files are removed."""
        lines: list[str] = []
        for journal in sorted(self.directory.glob("*" + JOURNAL_SUFFIX), key=lambda p: p.stat().st_mtime):
            if journal == self._path:
                continue
            try:
                with journal.open("rb") as f:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live sink owns it
                    f.seek(_read_offset(journal))
                    lines.extend(line.decode() for line in f.read().splitlines() if line.strip())
                    journal.unlink()
                    journal.with_suffix(OFFSET_SUFFIX).unlink(missing_ok=True)
            except OSError:
                _log.exception("cannot adopt log spool %s", journal)
        return lines

    def append(self, lines: list[str]) -> list[int]:
        """Write lines (JSON, no newline); returns the position after each, for :meth:`done`.

        Positions count bytes since this journal was made, so they stay valid across compactions.
        """
        data = b"".join(line.encode() + b"\n" for line in lines)
        self._file.seek(0, os.SEEK_END)
        pos = self._base + self._file.tell()
        self._file.write(data)
        self._file.flush()  # in the kernel: a killed pilot loses nothing
        ends = []
        for line in lines:
            pos += len(line.encode()) + 1
            ends.append(pos)
        return ends

    def done(self, position: int) -> None:
        """Everything before ``position`` is delivered or dropped; an empty journal starts over."""
        at = position - self._base
        if at <= self._offset:
            return
        self._file.seek(0, os.SEEK_END)
        if at >= self._file.tell():
            self._file.truncate(0)
            self._base, self._offset = position, 0
        elif at >= COMPACT_BYTES:
            self._file.seek(at)
            rest = self._file.read()
            self._file.truncate(0)
            self._file.write(rest)
            self._file.flush()
            self._base, self._offset = position, 0
        else:
            self._offset = at
        _write_offset(self._path, self._offset)

    def close(self) -> None:
        """Release the journal; one with nothing pending is removed."""
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() <= self._offset:
            self._path.unlink(missing_ok=True)
            self._path.with_suffix(OFFSET_SUFFIX).unlink(missing_ok=True)
        self._file.close()  # releases the lock


def _read_offset(journal: Path) -> int:
    try:
        return int(journal.with_suffix(OFFSET_SUFFIX).read_text() or 0)
    except (OSError, ValueError):
        return 0


def _write_offset(journal: Path, offset: int) -> None:
    """Atomically, so a kill mid-write leaves the old offset rather than a torn one."""
    target = journal.with_suffix(OFFSET_SUFFIX)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(str(offset))
    os.replace(tmp, target)
