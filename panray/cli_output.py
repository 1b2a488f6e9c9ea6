"""How the ``panray`` command shows things: rich tables fitted to the terminal, the plain
monitor tables when the output is not a terminal (pipes, files, ``grep``), JSON with ``--json``,
and the progress of a wait.

The plain form is stable for scripts: a header line, a rule, one line per row. The progress
display redraws one line only on a terminal; redirected, it writes a line every
:data:`PLAIN_EVERY` seconds and at the end, so a log file gets no ``\\r`` flood.

Examples:
    >>> show(["id", "status"], [(1, "running")], tty=False)
    id  status
    --  -------
    1   running
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

PLAIN_EVERY = 10.0  #: seconds between progress lines when stderr is not a terminal
_ENDED = ("finished", "failed", "closed", "cancelled")
#: Columns a terminal may fold (long free text); the others keep one line.
_FOLD = frozenset({"name", "diag", "message", "example", "command", "inputs", "tasks"})


def is_tty(stream: TextIO | None = None) -> bool:
    return bool(getattr(stream or sys.stdout, "isatty", lambda: False)())


def show(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None,
         tty: bool | None = None) -> None:
    """Print a table: rich and fitted to the terminal's width, or plain when not a terminal."""
    if not (is_tty() if tty is None else tty):
        from panray.monitor import table

        if title:
            print(title)
        print(table(headers, rows))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, box=None, header_style="bold", pad_edge=False, title_justify="left")
    for h in headers:
        t.add_column(h, overflow="fold" if h in _FOLD else "ellipsis", no_wrap=h not in _FOLD)
    for r in rows:
        t.add_row(*(Text("" if v is None else str(v)) for v in r))  # Text: stored names are never markup
    Console().print(t)


class WaitDisplay:
    """A ``wait`` observer: ended/total with a bar, elapsed, rate, ETA, running, failed, retries."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = is_tty(self.stream) if tty is None else tty
        self.t0 = time.monotonic()
        self._last_plain = 0.0
        self._first: dict[int, int] = {}  #: workflow -> jobs ended when the wait began (rate from then on)

    def __call__(self, p: dict[str, Any], final: bool) -> None:
        line = self.line(p, time.monotonic())
        if self.tty:
            self.stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        elif final or time.monotonic() - self._last_plain >= PLAIN_EVERY:
            self._last_plain = time.monotonic()
            self.stream.write(line + "\n")
        self.stream.flush()

    def line(self, p: dict[str, Any], now: float) -> str:
        counts, total = p["counts"], max(p["total"], 1)
        ended = sum(counts.get(s, 0) for s in _ENDED)
        first = self._first.setdefault(p["workflow_id"], ended)
        elapsed = now - self.t0
        rate = (ended - first) / elapsed if elapsed > 0 else 0.0
        eta = f"{_span((total - ended) / rate)}" if rate > 0 and ended < total else "-"
        fill = int(20 * ended / total)
        retries = f", {p['retries']} retries" if "retries" in p else ""
        return (f"workflow {p['workflow_id']} [{'#' * fill}{'.' * (20 - fill)}] {ended}/{p['total']} ended, "
                f"{counts.get('running', 0)} running, {counts.get('failed', 0)} failed{retries}; "
                f"{_span(elapsed)} elapsed, {rate:.1f} jobs/s, ETA {eta}")


def _span(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h03m``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


__all__ = ["PLAIN_EVERY", "WaitDisplay", "is_tty", "show"]
