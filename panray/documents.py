"""Reading YAML and JSON documents (workflow files, settings) without trusting them.

Only regular files are read (a FIFO would block, ``/dev/zero`` never ends), at most
``MAX_FILE_BYTES``; nesting is bounded by ``MAX_DEPTH``; YAML is loaded safely (no Python
tags) and its aliases may expand to at most ``MAX_ALIAS_NODES`` nodes in total, so a
"billion laughs" file of a few hundred bytes is refused instead of filling memory later.

Examples:
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.yaml")
    >>> _ = open(p, "w").write("env: &e {A: '1'}\\njobs: [{env: *e}, {env: *e}]\\n")
    >>> read_document(p)["jobs"][1]
    {'env': {'A': '1'}}
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from panray.exceptions import PanrayError

MAX_FILE_BYTES = 1024 * 1024 * 1024  #: 1 GiB: a million-job workflow file is a few hundred MB
MAX_DEPTH = 64  #: nesting levels of mappings and lists
MAX_ALIAS_NODES = 1_000_000  #: nodes that YAML aliases may add by expansion, over the whole file


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that counts nesting depth and the nodes each alias would expand to."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._expanded += self._size(node)
            if self._expanded > MAX_ALIAS_NODES:
                raise _Refused(f"YAML aliases expand to more than {MAX_ALIAS_NODES:,} nodes "
                               f"(line {node.start_mark.line + 1}): an alias bomb? write the values out")
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _size(self, node: yaml.Node) -> int:
        """Nodes under ``node`` with aliases expanded; memoized, so shared subtrees count once to compute."""
        key = id(node)
        size = self._sizes.get(key)
        if size is None:
            size = 1
            if isinstance(node, yaml.SequenceNode):
                size += sum(self._size(n) for n in node.value)
            elif isinstance(node, yaml.MappingNode):
                size += sum(self._size(k) + self._size(v) for k, v in node.value)
            self._sizes[key] = size
        return size


class _Refused(Exception):
    """A bound of this module was hit while loading."""


def _read_bounded(path: Path, error: type[PanrayError]) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (FIFO, device or socket)"
        raise error(f"{path}: cannot read: {kind}")
    if st.st_size > MAX_FILE_BYTES:
        raise error(f"{path}: {st.st_size:,} bytes, more than the limit of {MAX_FILE_BYTES:,}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:  # grew while being read, or a /proc file that lies about its size
        raise error(f"{path}: more than the limit of {MAX_FILE_BYTES:,} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start})") from None


def read_document(path: str | Path, error: type[PanrayError] = PanrayError) -> Any:
    """The data of a ``.json`` file (JSON) or any other (YAML); problems raise ``error`` in one line."""
    path = Path(path)
    text = _read_bounded(path, error)
    try:
        if path.suffix == ".json":
            return json.loads(text)
        loader = _BoundedLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _Refused as exc:
        raise error(f"{path}: {exc}") from None
    except RecursionError:
        raise error(f"{path}: nested too deeply") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise error(f"{path}: cannot read: {_problem(exc)}") from None


def _problem(exc: Exception) -> str:
    """The parser's complaint and its line, as one line."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        return exc.problem + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else "")
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
