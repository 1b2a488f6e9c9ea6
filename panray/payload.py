"""Payload commands travel encoded (Rubin's ``bash-c-enc``): never interpolated into a shell string.

A command is an argv list, a shell line (run as ``bash -c LINE``), or ``None`` for a no-op job
(ordering nodes, control-plane benchmarks) that the pilot completes in-process. A function job
carries an importable ``module:function`` with JSON arguments instead, run as a Ray task.

Examples:
    >>> enc = encode_command("echo 'hi there'; exit 3")
    >>> decode_command(enc)
    ['bash', '-c', "echo 'hi there'; exit 3"]
    >>> decode_command(encode_command(None)) is None
    True
    >>> decode_function(encode_function("math:hypot", [3, 4], {}, "hyp:0"))
    FunctionCall(function='math:hypot', args=[3, 4], kwargs={}, name='hyp:0')
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

NOOP = ""
#: ``["panray:sleep", SECONDS]`` is held by the pilot as a timer, without a process: the
#: in-process payload for measuring the control plane with many jobs running at once.
SLEEP = "panray:sleep"
_SLEEP_PREFIX = "sleep:"
_FUNCTION_PREFIX = "fn:"


class FunctionCall(NamedTuple):
    """A function payload: what to import and call, and the job's name (its Ray task's name)."""

    function: str  #: ``module:qualified.name``
    args: list[Any]
    kwargs: dict[str, Any]
    name: str


def occupies_slot(encoded: str) -> bool:
    """Whether a payload needs a pilot slot (a process); in-process no-ops and sleeps do not."""
    return bool(encoded) and not encoded.startswith(_SLEEP_PREFIX)


def sleep_seconds(encoded: str) -> float | None:
    """The duration of an in-process sleep payload, else ``None``; ValueError if it is not a finite ``>= 0``."""
    if not encoded.startswith(_SLEEP_PREFIX):
        return None
    seconds = float(encoded[len(_SLEEP_PREFIX):])
    if not (math.isfinite(seconds) and seconds >= 0):  # a NaN deadline would spin the pilot's timer loop
        raise ValueError(f"sleep payload of {seconds} seconds")
    return seconds


def encode_command(command: list[str] | str | None) -> str:
    """Hex of the JSON argv; a shell line becomes ``["bash", "-c", line]``; ``None`` is a no-op."""
    if command is None:
        return NOOP
    if not isinstance(command, str) and len(command) == 2 and command[0] == SLEEP:
        return f"{_SLEEP_PREFIX}{float(command[1])}"
    argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
    return json.dumps(argv, separators=(",", ":")).encode().hex()


def decode_command(encoded: str) -> list[str] | None:
    """The argv to execute, or ``None`` for a no-op."""
    if not encoded:
        return None
    return json.loads(bytes.fromhex(encoded).decode())


def encode_function(function: str, args: list[Any], kwargs: dict[str, Any], name: str) -> str:
    """``fn:`` and the hex of the JSON call: arguments travel as data, never as code."""
    body = json.dumps([function, args, kwargs, name], separators=(",", ":"))
    return _FUNCTION_PREFIX + body.encode().hex()


def is_function(encoded: str) -> bool:
    return encoded.startswith(_FUNCTION_PREFIX)


def decode_function(encoded: str) -> FunctionCall:
    return FunctionCall(*json.loads(bytes.fromhex(encoded[len(_FUNCTION_PREFIX):]).decode()))


def describe(encoded: str) -> str:
    """The payload as a person reads it: the command line shell-quoted (as shown, never run
    through a shell), the function call, the in-process sleep, or ``(no-op)``.

    Examples:
        >>> describe(encode_command(["bash", "-c", 'echo "$1"', "x", "a b"]))
        'bash -c \\'echo "$1"\\' x \\'a b\\''
    """
    import shlex

    if not encoded:
        return "(no-op)"
    seconds = sleep_seconds(encoded)
    if seconds is not None:
        return f"{SLEEP} {seconds:g}"
    try:
        if is_function(encoded):
            call = decode_function(encoded)
            return f"{call.function}(*{call.args!r}, **{call.kwargs!r})"
        return shlex.join(decode_command(encoded) or [])
    except (ValueError, TypeError):  # not written by encode_command: shown, never a reason to fail
        return f"(not an encoded command: {encoded[:60]!r})"
