"""Payload commands travel encoded (Rubin's ``bash-c-enc``): never interpolated into a shell string.

A command is an argv list, a shell line (run as ``bash -c LINE``), or ``None`` for a no-op job
(ordering nodes, control-plane benchmarks) that the pilot completes in-process.

Examples:
    >>> enc = encode_command("echo 'hi there'; exit 3")
    >>> decode_command(enc)
    ['bash', '-c', "echo 'hi there'; exit 3"]
    >>> decode_command(encode_command(None)) is None
    True
"""

from __future__ import annotations

import json

NOOP = ""


def encode_command(command: list[str] | str | None) -> str:
    """Hex of the JSON argv; a shell line becomes ``["bash", "-c", line]``; ``None`` is a no-op."""
    if command is None:
        return NOOP
    argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
    return json.dumps(argv, separators=(",", ":")).encode().hex()


def decode_command(encoded: str) -> list[str] | None:
    """The argv to execute, or ``None`` for a no-op."""
    if not encoded:
        return None
    return json.loads(bytes.fromhex(encoded).decode())
