"""A pilot's outbox: starts and outcomes per workflow manager, kept until the manager has stored them.

Reports leave in numbered batches (one sequence per pilot incarnation); a manager answers each
report call with the highest number whose effects it has persisted, and only then does the
outbox drop them. A manager that died before persisting loses nothing: its successor collects
what the outbox still holds (:meth:`Outbox.held`) and the pilot sends it again
(:meth:`Outbox.resend`), so a payload that finished is never taken for lost and run again.

Examples:
    >>> box = Outbox()
    >>> box.add_started("m", "s1")
    >>> box.flush()
    {'m': (1, ['s1'], [])}
    >>> box.add_ended("m", [])
    >>> box.resend("m")
    (1, ['s1'], [])
    >>> box.ack("m", 1); box.resend("m") is None
    True
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

Batch = tuple[int, list[Any], list[Any]]  #: (sequence number, started, ended)


class Outbox:
    """See the module docstring; thread-safe (payload threads add, the report thread sends)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self._started: dict[str, list[Any]] = defaultdict(list)
        self._ended: dict[str, list[Any]] = defaultdict(list)
        self._unacked: dict[str, list[Batch]] = defaultdict(list)
        self._ended_keys: list[tuple[str, int]] = []  #: (manager, job_id) ended since the last pull
        self._seq = 0

    def add_started(self, manager: str, started: Any) -> None:
        with self.lock:
            self._started[manager].append(started)
        self.wake.set()

    def add_ended(self, manager: str, outcomes: list[Any]) -> None:
        with self.lock:
            self._ended[manager].extend(outcomes)
            self._ended_keys.extend((manager, o.job_id) for o in outcomes)
        self.wake.set()

    def take_ended_keys(self) -> list[tuple[str, int]]:
        """What the site queue should stop counting as held by this pilot."""
        with self.lock:
            keys, self._ended_keys = self._ended_keys, []
        return keys

    def restore_ended_keys(self, keys: list[tuple[str, int]]) -> None:
        with self.lock:
            self._ended_keys.extend(keys)

    def flush(self) -> dict[str, Batch]:
        """The new reports, one numbered batch per manager; they stay until acknowledged."""
        with self.lock:
            out: dict[str, Batch] = {}
            for manager in set(self._started) | set(self._ended):
                self._seq += 1
                batch = out[manager] = (self._seq, self._started.pop(manager, []), self._ended.pop(manager, []))
                self._unacked[manager].append(batch)
            return out

    def ack(self, manager: str, seq: int) -> None:
        """The manager stored every batch up to ``seq``."""
        with self.lock:
            kept = [b for b in self._unacked.get(manager, ()) if b[0] > seq]
            if kept:
                self._unacked[manager] = kept
            else:
                self._unacked.pop(manager, None)

    def drop(self, manager: str) -> None:
        """The manager is gone for good (its name is not registered): nobody will read these."""
        with self.lock:
            self._unacked.pop(manager, None)
            self._started.pop(manager, None)
            self._ended.pop(manager, None)

    def waiting(self) -> list[str]:
        """Managers that have not acknowledged everything yet."""
        with self.lock:
            return list(self._unacked)

    def resend(self, manager: str) -> Batch | None:
        """Every unacknowledged batch for ``manager`` as one, numbered by the last of them."""
        with self.lock:
            batches = self._unacked.get(manager)
            if not batches:
                return None
            return batches[-1][0], [s for b in batches for s in b[1]], [e for b in batches for e in b[2]]

    def held(self, manager: str) -> tuple[list[Any], list[Any]]:
        """(started, ended) not yet acknowledged by ``manager``, new ones included."""
        with self.lock:
            batches = self._unacked.get(manager, [])
            started = [s for b in batches for s in b[1]] + list(self._started.get(manager, ()))
            ended = [e for b in batches for e in b[2]] + list(self._ended.get(manager, ()))
            return started, ended
