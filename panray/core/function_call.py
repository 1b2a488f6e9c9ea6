"""Runs a function payload's call inside the process that executes it (a Ray task's worker).

The call's stdout and stderr go to the attempt's ``payload.stdout``/``payload.stderr`` and its
``logging`` records to ``payload.stdout`` as JSON lines, as a command payload's would: the
pilot's log tailer ships both through the logging bridge. The result must be JSON of at most
``MAX_RESULT_BYTES``; it is written to ``result.json``, uploaded with the attempt's files, so the
store holds only its reference (the attempt's log URL) and a large result never travels through
Ray's control plane.

Examples:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> run_call(FunctionCall("math:hypot", [3, 4], {}, "hyp"), d)
    CallResult(ok=True, error_class=None, diag=None)
    >>> run_call(FunctionCall("math:sqrt", [-1], {}, "neg"), d).diag
    'ValueError: math domain error'
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import traceback
from pathlib import Path
from typing import Any, NamedTuple

from panray.payload import FunctionCall

#: A larger result is refused (a payload error): results are summaries, data goes to the butler.
MAX_RESULT_BYTES = 16 * 1024 * 1024
RESULT_FILE = "result.json"
DIAG_CHARS = 500


class CallResult(NamedTuple):
    ok: bool
    error_class: str | None  #: None on success, else "payload"
    diag: str | None  #: ``ExceptionClass: message`` of a failure


class _JsonLines(logging.Handler):
    """``logging`` records as the JSON lines the log tailer turns into structured entries."""

    def __init__(self, stream: Any):
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        entry = {"name": record.name, "levelName": record.levelname, "levelNo": record.levelno,
                 "filename": record.filename, "funcName": record.funcName, "lineNo": record.lineno,
                 "message": record.getMessage()}
        self.stream.write(json.dumps(entry) + "\n")
        self.stream.flush()


def resolve(function: str) -> Any:
    """The callable named ``module:qualified.name``."""
    module, _, qualname = function.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def run_call(call: FunctionCall, work_dir: Path) -> CallResult:
    """Import and call; an exception (or a result that is not JSON) is the payload's failure."""
    work_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    with open(work_dir / "payload.stdout", "a", buffering=1) as out, \
            open(work_dir / "payload.stderr", "a", buffering=1) as err:
        handler = _JsonLines(out)
        root.addHandler(handler)
        level, root.level = root.level, min(root.level, logging.INFO)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                value = resolve(call.function)(*call.args, **call.kwargs)
                text = json.dumps(value, allow_nan=False)
                if len(text) > MAX_RESULT_BYTES:
                    raise ValueError(f"result of {len(text):,} bytes of JSON exceeds {MAX_RESULT_BYTES:,}")
        except Exception as exc:  # the payload's own failure (a cancel interrupts with BaseException)
            traceback.print_exc(file=err)
            return CallResult(False, "payload", f"{type(exc).__name__}: {exc}"[:DIAG_CHARS])
        finally:
            root.removeHandler(handler)
            root.level = level
    (work_dir / RESULT_FILE).write_text(text)
    return CallResult(True, None, None)
