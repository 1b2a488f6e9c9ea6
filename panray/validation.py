"""The validation layer at panray's door: constrained types, JSON-able tags, one-line errors.

Every entry point (Python API, workflow files, bps conversion, HTTP) builds the models of
:mod:`panray.models` and :mod:`panray.config`, so what is refused here never reaches the store
or a pilot. The limits, and why:

* integers stored in ``INTEGER`` columns (memory MB, cores, attempts, priority) fit PostgreSQL's
  32-bit ``INTEGER``: ``-2**31 .. 2**31 - 1`` (SQLite takes 64 bits, PostgreSQL does not);
* floats are finite; ``memory_multiplier`` lies in ``[1, 100]``;
* names (jobs, workflows, parents, datasets) hold 1 to 1,000 characters, labels, owners, sites
  and queues 1 to 200, none of them a control character (``\\x00-\\x1f``, ``\\x7f-\\x9f``);
* commands: no NUL in any argument, at most 128 KiB per argument (Linux ``MAX_ARG_STRLEN``);
  ``["panray:sleep", S]`` needs a finite ``0 <= S <= 30 days``;
* environment names are non-empty without ``=`` or NUL, values without NUL;
* tags become plain JSON: dates as ISO strings, sets as sorted lists, keys as strings; bytes,
  NaN/infinity and other objects are refused; at most 32 levels deep and 1 MiB encoded.

Examples:
    >>> jsonable_tags({"day": __import__("datetime").date(2026, 1, 2), 3: {2, 1}})
    {'day': '2026-01-02', '3': [1, 2]}
    >>> show("a\\nb")
    "'a\\\\nb'"
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, Field, StringConstraints, ValidationError

from panray.exceptions import PanrayError, WorkflowValidationError, show

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
NAME_MAX = 1_000  #: characters in a job, workflow, parent or dataset name
LABEL_MAX = 200  #: characters in a label, owner, site or queue name
ARG_MAX = 128 * 1024  #: characters in one command argument (Linux MAX_ARG_STRLEN)
ENV_MAX = 128 * 1024  #: characters in one environment value
SLEEP_MAX = 30 * 86_400.0  #: seconds of an in-process ``panray:sleep`` payload
MEMORY_MULTIPLIER_MAX = 100.0
TAGS_DEPTH_MAX = 32
TAGS_BYTES_MAX = 1024 * 1024

_NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX, pattern=_NO_CONTROL)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=LABEL_MAX, pattern=_NO_CONTROL)]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=LABEL_MAX, pattern=r"^[^=\x00]+$")]
EnvValue = Annotated[str, StringConstraints(max_length=ENV_MAX, pattern=r"^[^\x00]*$")]
Int32 = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)]
PositiveInt32 = Annotated[int, Field(gt=0, le=INT32_MAX)]
ExitCode = Annotated[int, Field(ge=0, le=255)]

_PATTERN_MEANING = {
    _NO_CONTROL: "contains a control character",
    r"^[^=\x00]+$": "an environment variable name must not contain '=' or NUL",
    r"^[^\x00]*$": "contains a NUL character",
}


def jsonable_tags(tags: Mapping[Any, Any]) -> dict[str, Any]:
    """Tags as plain JSON values (see the module docstring); raises ValueError naming the key.

    Most tags are a flat data ID (str keys, str/int values): those pass without a walk or an encoding.
    """
    size = 0
    for k, v in tags.items():
        t = type(v)
        if type(k) is not str or t not in _FLAT:
            break
        size += len(k) + (len(v) if t is str else 20) + 6  # + quotes, colon, comma
    else:
        if size * 6 <= TAGS_BYTES_MAX:  # JSON takes at most 6 characters per character (\uXXXX)
            return dict(tags)
    out = _jsonable(tags, "", 0)
    size = len(json.dumps(out, separators=(",", ":")))
    if size > TAGS_BYTES_MAX:
        raise ValueError(f"tags take {size:,} bytes as JSON, more than {TAGS_BYTES_MAX:,}")
    return out  # type: ignore[no-any-return]


_FLAT = frozenset({str, int, bool, type(None)})


def _jsonable(v: Any, where: str, depth: int) -> Any:
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if depth >= TAGS_DEPTH_MAX:
        raise ValueError(f"{_at(where)}nested deeper than {TAGS_DEPTH_MAX} levels")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{_at(where)}{v} is not a finite number")
        return v
    if isinstance(v, Mapping):
        out: dict[str, Any] = {}
        for k, item in v.items():
            if not isinstance(k, (str, int, float, bool, _dt.date, _dt.time)) and k is not None:
                raise ValueError(f"{_at(where)}key of type {type(k).__name__} cannot be a JSON key")
            key = k.isoformat() if isinstance(k, (_dt.date, _dt.time)) else k if isinstance(k, str) else json.dumps(k)
            if key in out:
                raise ValueError(f"{_at(where)}keys {show(key)} collide once written as JSON strings")
            out[key] = _jsonable(item, f"{where}.{key}" if where else key, depth + 1)
        return out
    if isinstance(v, (list, tuple)):
        return [_jsonable(x, f"{where}[{i}]", depth + 1) for i, x in enumerate(v)]
    if isinstance(v, (set, frozenset)):
        items = [_jsonable(x, f"{where}{{}}", depth + 1) for x in v]
        return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))
    if isinstance(v, (_dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        raise ValueError(f"{_at(where)}bytes (YAML !!binary) cannot be stored as JSON; give a string")
    raise ValueError(f"{_at(where)}a {type(v).__name__} cannot be stored as JSON")


def _at(where: str) -> str:
    return f"at {show(where, quote=False)}: " if where else ""


def _describe(err: Mapping[str, Any]) -> str:
    """One error's message in panray's words, with the offending value shortened and escaped."""
    msg = str(err["msg"])
    if err["type"] == "string_pattern_mismatch":
        msg = _PATTERN_MEANING.get(str((err.get("ctx") or {}).get("pattern")), msg)
    elif err["type"] == "value_error" and msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    value = err.get("input")
    if err["type"] in {"missing", "extra_forbidden"} or isinstance(value, (Mapping, list)) or value is None:
        return msg
    return f"{msg} (got {show(value) if isinstance(value, str) else show(repr(value), quote=False)})"


def _where(loc: tuple[Any, ...], data: Any) -> str:
    """A location like ``workflow 'w': job 'b' (jobs[1]): request_memory``, naming what it can."""
    parts: list[str] = []
    path = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        else:  # a key from the input (an environment name, a tag) is shown escaped when it is odd
            key = str(part)
            path += ("." if path else "") + (key if key.isprintable() and key.strip() == key else show(key))
        data = _child(data, part)
        named = isinstance(part, int) and i > 0 and loc[i - 1] in ("jobs", "workflows")
        if (named or part in ("init_job", "final_job")) and isinstance(data, Mapping) and isinstance(data.get("name"), str):
            kind = "workflow" if loc[i - 1] == "workflows" else "job"
            parts.append(f"{kind} {show(data['name'])} ({path})")
            path = ""
    if path:
        parts.append(path)
    return ": ".join(parts)


def _child(data: Any, part: Any) -> Any:
    if isinstance(data, BaseModel):
        data = data.__dict__
    try:
        return data[part]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return None


def one_line(err: ValidationError, source: str, data: Any = None) -> str:
    """The first error of ``err`` as one line: source, where (named), what, and how many more."""
    first = err.errors(include_url=False)[0]
    where = _where(tuple(first["loc"]), data)
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {where + ': ' if where else ''}{_describe(first)}{more}"


class BoundaryModel(BaseModel):
    """A model whose validation errors are one-line :class:`PanrayError` s, whatever the entry point.

    ``_error`` is the PanrayError subclass raised; it is also a ``ValueError`` where callers
    caught pydantic's errors before.
    """

    _error: ClassVar[type[PanrayError]] = WorkflowValidationError

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise self._error(one_line(err, type(self).__name__, data)) from None

    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]  # not a custom init: nested models skip it

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, source: str | None = None, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as err:
            raise cls._error(one_line(err, source or cls.__name__, obj)) from None
