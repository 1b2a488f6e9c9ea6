"""Which jobs may run now: per node, the number of parents not yet finished.

This is the hot path of dependency release (one ``finish`` per job), so the state is one bytearray
of flags and one int array of counters, and a call allocates only the list it returns.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from operator import sub

from .graph import JobGraph

__all__ = ["Releaser"]

_RELEASED = 1
_FINISHED = 2


class Releaser:
    """Releases each job exactly once, as soon as all its parents have finished.

    ``done`` holds nodes already finished (after a restart): they are never released again and
    count as finished parents. Call :meth:`ready` once to get the first frontier, then
    :meth:`finish` or :meth:`finish_many` as jobs end. A job that failed for good is simply never
    finished, so its descendants are never released; :meth:`descendants` lists them for pruning.

    Examples:
        >>> from panray.dag import build_graph
        >>> g = build_graph(["a", "b", "c"], [[], ["a"], ["a", "b"]])
        >>> r = Releaser(g)
        >>> r.ready(), r.finish(0), r.finish(0), r.finish(1)
        ([0], [1], [], [2])
        >>> Releaser(g, done=[0]).ready()
        [1]
    """

    __slots__ = ("_graph", "_flags", "_waiting")

    def __init__(self, graph: JobGraph, done: Iterable[int] = ()):
        self._graph = graph
        self._flags = bytearray(len(graph))
        self._waiting = array("i", map(sub, graph.parent_ptr[1:], graph.parent_ptr[:-1]))
        flags, waiting = self._flags, self._waiting
        cptr, cidx = graph.child_ptr, graph.child_idx
        for node in done:
            if flags[node] & _FINISHED:
                continue
            flags[node] = _RELEASED | _FINISHED
            for child in cidx[cptr[node] : cptr[node + 1]]:
                waiting[child] -= 1

    def ready(self) -> list[int]:
        """Release every node not done nor released yet whose parents have all finished."""
        flags, waiting = self._flags, self._waiting
        out = [i for i in range(len(flags)) if not flags[i] and not waiting[i]]
        for i in out:
            flags[i] = _RELEASED
        return out

    def finish(self, i: int) -> list[int]:
        """Mark ``i`` finished; return its children that thereby became ready (none if already finished)."""
        out: list[int] = []
        self._finish(i, out)
        return out

    def finish_many(self, idxs: Iterable[int]) -> list[int]:
        """:meth:`finish` for a batch: the children released by any of them, each once."""
        out: list[int] = []
        for i in idxs:
            self._finish(i, out)
        return out

    def _finish(self, i: int, out: list[int]) -> None:
        flags = self._flags
        if flags[i] & _FINISHED:
            return
        flags[i] = _RELEASED | _FINISHED
        waiting = self._waiting
        graph = self._graph
        cptr = graph.child_ptr
        for child in graph.child_idx[cptr[i] : cptr[i + 1]]:
            left = waiting[child] - 1
            waiting[child] = left
            if not left and not flags[child]:
                flags[child] = _RELEASED
                out.append(child)

    def is_released(self, i: int) -> bool:
        """Whether ``i`` was handed out (by :meth:`ready` or :meth:`finish`) or is finished."""
        return bool(self._flags[i])

    def is_finished(self, i: int) -> bool:
        return bool(self._flags[i] & _FINISHED)

    def descendants(self, roots: Iterable[int]) -> list[int]:
        """Every node reachable from ``roots`` through children, roots excluded, each once.

        Examples:
            >>> from panray.dag import build_graph
            >>> g = build_graph(["a", "b", "c", "d"], [[], ["a"], ["b"], []])
            >>> Releaser(g).descendants([0])
            [1, 2]
        """
        graph = self._graph
        seen = bytearray(len(graph))
        out: list[int] = []
        for root in roots:
            if not seen[root]:
                seen[root] = 1
                out.append(root)
        n_roots = len(out)
        cptr, cidx = graph.child_ptr, graph.child_idx
        for node in out:
            for child in cidx[cptr[node] : cptr[node + 1]]:
                if not seen[child]:
                    seen[child] = 1
                    out.append(child)
        return out[n_roots:]
