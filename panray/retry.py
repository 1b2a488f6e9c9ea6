"""What happens after an attempt fails: a new attempt, or failure for good.

PanDA/BPS rules: a job gets ``max_attempts`` attempts of its own; exit codes listed in
``retry_unless_exit`` (default 1 and 2: payload errors) are never retried; an out-of-memory
failure retries with ``request_memory x memory_multiplier`` capped at ``request_memory_max``;
system errors (lost pilot or heartbeat, node gone) are retried without using up the user's
attempts, up to their own cap.

Examples:
    >>> spec = RetrySpec(max_attempts=3, retry_unless_exit=(1, 2), memory_multiplier=2.0,
    ...                  request_memory_max=8000)
    >>> decide(spec, error_class="memory", exit_code=137, user_failures=1, system_failures=0,
    ...        request_memory=3000, max_system_retries=3)
    RetryDecision(retry=True, request_memory=6000, reason='out of memory: retry with 6000 MB')
    >>> decide(spec, error_class="payload", exit_code=1, user_failures=1, system_failures=0,
    ...        request_memory=3000, max_system_retries=3).retry
    False
"""

from __future__ import annotations

import json
from enum import Enum
from typing import NamedTuple


class ErrorClass(str, Enum):
    """Why an attempt did not finish; the store keeps the value in ``error_class``."""

    PAYLOAD = "payload"  #: the payload exited non-zero (the user's budget)
    MEMORY = "memory"  #: out of memory: exit 137 or PSS above the request (the user's budget, more memory)
    SYSTEM = "system"  #: lost pilot, node or heartbeat, control plane restarted (its own budget)
    CANCELLED = "cancelled"  #: cancelled by hand
    PRUNED = "pruned"  #: never run: an ancestor failed for good

    def __str__(self) -> str:
        return self.value


#: The values as plain strings, as they travel in messages and rows (drivers bind plain ``str``).
PAYLOAD, MEMORY, SYSTEM, CANCELLED, PRUNED = (e.value for e in ErrorClass)
USER_CLASSES = frozenset({PAYLOAD, MEMORY})


class RetrySpec(NamedTuple):
    max_attempts: int = 3
    retry_unless_exit: tuple[int, ...] = (1, 2)
    memory_multiplier: float | None = None
    request_memory_max: int | None = None

    @classmethod
    def from_json(cls, max_attempts: int, text: str) -> RetrySpec:
        d = json.loads(text or "{}")
        return cls(max_attempts, tuple(d.get("retry_unless_exit", (1, 2))),
                   d.get("memory_multiplier"), d.get("request_memory_max"))


class RetryDecision(NamedTuple):
    retry: bool
    request_memory: int
    reason: str



def decide(
    spec: RetrySpec, *, error_class: str, exit_code: int | None, user_failures: int, system_failures: int,
    request_memory: int, max_system_retries: int,
) -> RetryDecision:
    """Decide after a failed attempt. ``*_failures`` already count the attempt that just failed."""
    if error_class == SYSTEM:
        if system_failures <= max_system_retries:
            return RetryDecision(True, request_memory, f"system error {system_failures} of {max_system_retries}: retry")
        return RetryDecision(False, request_memory, f"system errors exceeded {max_system_retries}")
    if error_class == PAYLOAD and exit_code in spec.retry_unless_exit:
        return RetryDecision(False, request_memory, f"exit code {exit_code} is never retried")
    if user_failures >= spec.max_attempts:
        return RetryDecision(False, request_memory, f"attempts exhausted ({user_failures} of {spec.max_attempts})")
    if error_class == MEMORY and spec.memory_multiplier:
        cap = spec.request_memory_max or request_memory
        new = int(min(request_memory * spec.memory_multiplier, max(cap, request_memory)))  # float first: no overflow
        if new <= request_memory:
            return RetryDecision(False, request_memory, f"out of memory at the cap of {cap} MB")
        return RetryDecision(True, new, f"out of memory: retry with {new} MB")
    return RetryDecision(True, request_memory, f"attempt {user_failures} of {spec.max_attempts} failed: retry")
