"""What the ``panray`` command's modules share: store ids, the global options, the session a
command runs with, help examples, JSON output, and the status table every wait ends with."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from panray.exceptions import NotFoundError, PanrayError

if TYPE_CHECKING:
    from panray.api import Panray
    from panray.config import Settings

_ID_MAX = 2**63 - 1  #: ids are 1 .. 2**63 - 1 in both databases
_F = TypeVar("_F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class StoreId(click.ParamType):
    """An id of the store: an id no store can hold is unknown, like any other missing one."""

    name = "integer"

    def __init__(self, what: str):
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            n = value
        else:
            try:
                n = int(value)
            except ValueError:
                self.fail(f"{value!r} is not a {self.what} id (an integer)", param, ctx)
        if not 0 < n <= _ID_MAX:
            raise NotFoundError(f"no {self.what} {n} in this store")
        return n


WORKFLOW, JOB, TASK = StoreId("workflow"), StoreId("job"), StoreId("task")


@dataclass(slots=True)
class Globals:
    config: str | None
    db: str | None
    home: str | None
    url: str | None
    token: str | None
    debug: bool


def settings_of(g: Globals) -> Settings:
    from panray.config import Settings

    s = Settings.load(g.config)
    updates: dict[str, Any] = {}
    if g.db:
        updates["db_url"] = g.db
    if g.home:
        updates["home"] = Path(g.home)
    return s.model_copy(update=updates) if updates else s


def session(fn: _F) -> _F:
    """Run the command with a :class:`Panray` session (embedded, or the ``--url`` server's client)."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from panray.api import Panray

        g: Globals = click.get_current_context().find_object(Globals)  # type: ignore[assignment]
        with Panray(settings_of(g), url=g.url, token=g.token) as pr:
            return fn(pr, *args, **kwargs)

    return run  # type: ignore[return-value]


def example(*lines: str) -> str:
    """An ``Examples:`` block for a command's help (click keeps ``\\b`` paragraphs as they are)."""
    return "\n\n\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def json_out(rows: Any) -> None:
    from panray.monitor import to_json

    print(to_json(rows if isinstance(rows, list) else [rows]))


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")


def said(as_json: bool, text: str, **record: Any) -> None:
    """What a control command did: one line of text, or with ``--json`` the record."""
    print(json.dumps(record) if as_json else text)



def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def count_text(d: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(d.items())) or "-"


def alive_text(value: bool | None) -> str:
    return {True: "alive", False: "gone", None: "-"}[value]


def show_status(pr: Panray, rows: Sequence[Any], alive: dict[int, bool | None] | None = None) -> None:
    from panray.cli_output import show
    from panray.monitor.tables import _quanta

    alive = alive or {}
    show(["id", "name", "owner", "status", "manager", "tasks", "finished", "failed", "pruned", "total", "quanta",
          "created"],
         [(w.workflow_id, w.name, w.owner, w.status, alive_text(alive.get(w.workflow_id)), count_text(w.tasks),
           w.jobs.get("finished", 0), w.jobs.get("failed", 0), w.jobs.get("closed", 0), w.total, _quanta(w.quanta),
           when(w.created)) for w in rows])



def no_wait_needs_a_server(pr: Panray, no_wait: bool, command: str, untouched: str) -> None:
    """Refuse ``--no-wait`` when nothing would outlive this process: an embedded cluster ends with
    it, and the workflow would stay where it is for good."""
    if no_wait and not pr.remote and pr.running() is None:
        raise PanrayError(f"--no-wait needs a running panray: start one with `panray serve` (or {command} without "
                          f"--no-wait); nothing was {untouched}")


def run_and_show(pr: Panray, ids: list[int], wait: bool) -> int:
    if not wait:
        print(" ".join(map(str, ids)))
        return 0
    from panray.cli_output import WaitDisplay

    statuses = pr.wait(ids, progress=WaitDisplay())
    show_status(pr, [s for i in ids for s in pr.status(i)])
    return 0 if all(v == "Finished" for v in statuses.values()) else 1

