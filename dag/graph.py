"""The job graph of one workflow, validated once and kept as compact integer arrays.

A workflow can hold 200k jobs and about a million edges, so nodes are integers (positions in
``names``) and edges live in CSR arrays (compressed sparse rows): ``parent_idx[parent_ptr[i]:
parent_ptr[i + 1]]`` are the parents of node ``i``, and likewise for children. No Python object
is made per node or per edge.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate, chain, repeat
from operator import sub

from panray.exceptions import CycleError, DanglingParentError, DuplicateJobError

__all__ = ["JobGraph", "build_graph"]


class JobGraph:
    """A directed acyclic graph of jobs over the node indices ``0 .. len(graph) - 1``.

    Build one with :func:`build_graph` (validates names) or :meth:`JobGraph.from_edges` (rebuilds a
    stored graph). Edges are given and returned as ``(child, parent)``: a child runs after its parents.

    Examples:
        >>> g = build_graph(["a", "b", "c"], [[], ["a"], ["a", "b"]])
        >>> list(g.children(g.index["a"])), list(g.parents(2)), g.n_parents(2)
        ([1, 2], [0, 1], 2)
        >>> g.topological_order(), g.roots(), sorted(g.edges())
        ([0, 1, 2], [0], [(1, 0), (2, 0), (2, 1)])
    """

    __slots__ = ("names", "index", "parent_ptr", "parent_idx", "child_ptr", "child_idx", "_order")

    def __init__(self, names: list[str], index: dict[str, int], parent_ptr: array, parent_idx: array):
        self.names = names
        self.index = index
        self.parent_ptr = parent_ptr
        self.parent_idx = parent_idx
        self.child_ptr, self.child_idx = _group(len(names), parent_idx, _owners(parent_ptr))
        self._order: list[int] | None = None

    @classmethod
    def from_edges(cls, n: int, edges: Iterable[tuple[int, int]], names: Sequence[str]) -> JobGraph:
        """Rebuild a graph from ``(child, parent)`` index pairs, e.g. as read back from the store.

        Only bounds are checked: the graph was validated when it was first built. A cycle, if one
        was stored anyway, surfaces as :class:`CycleError` from :meth:`topological_order`.

        Examples:
            >>> g = JobGraph.from_edges(3, [(2, 0), (1, 0)], ["a", "b", "c"])
            >>> list(g.children(0)), g.n_parents(1)
            ([1, 2], 1)
        """
        if len(names) != n:
            raise ValueError(f"{len(names)} names for {n} nodes")
        flat = array("i", chain.from_iterable(edges))
        if flat and (min(flat) < 0 or max(flat) >= n):
            bad = next(v for v in flat if not 0 <= v < n)
            raise ValueError(f"edge endpoint {bad} is outside 0..{n - 1}")
        children, parents = flat[0::2], flat[1::2]
        parent_ptr, parent_idx = _group(n, children, parents)
        names = list(names)
        return cls(names, dict(zip(names, range(n))), parent_ptr, parent_idx)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"JobGraph(nodes={len(self.names)}, edges={len(self.parent_idx)})"

    @property
    def n_edges(self) -> int:
        return len(self.parent_idx)

    def parents(self, i: int) -> Sequence[int]:
        return self.parent_idx[self.parent_ptr[i] : self.parent_ptr[i + 1]]

    def children(self, i: int) -> Sequence[int]:
        return self.child_idx[self.child_ptr[i] : self.child_ptr[i + 1]]

    def n_parents(self, i: int) -> int:
        return self.parent_ptr[i + 1] - self.parent_ptr[i]

    def n_children(self, i: int) -> int:
        return self.child_ptr[i + 1] - self.child_ptr[i]

    def edges(self) -> Iterator[tuple[int, int]]:
        """Every edge once as ``(child, parent)``, grouped by child in index order."""
        return zip(_owners(self.parent_ptr), self.parent_idx)

    def roots(self) -> list[int]:
        """Nodes without parents, in index order."""
        ptr = self.parent_ptr
        return [i for i in range(len(self.names)) if ptr[i] == ptr[i + 1]]

    def topological_order(self) -> list[int]:
        """Every node once, each after all its parents (a new list each call)."""
        if self._order is None:
            self._order = _topological_order(self)
        return list(self._order)


def build_graph(names: Sequence[str], parents: Sequence[Sequence[str]]) -> JobGraph:
    """Validate a workflow's jobs and parent names and build its :class:`JobGraph`.

    ``parents[i]`` names the parents of job ``names[i]``; a parent named twice counts once.
    Raises, and builds nothing, on the first problem found in this order: duplicate names
    (:class:`DuplicateJobError` listing all of them), a parent that is not a job
    (:class:`DanglingParentError`), a cycle (:class:`CycleError` naming one cycle along its edges).

    Examples:
        >>> build_graph(["a", "b"], [["b"], ["a"]])
        Traceback (most recent call last):
        ...
        panray.exceptions.CycleError: cycle in job graph: a -> b -> a
    """
    n = len(names)
    if len(parents) != n:
        raise ValueError(f"{n} names but {len(parents)} parent lists")
    names = list(names)
    index = dict(zip(names, range(n)))
    if len(index) != n:
        raise DuplicateJobError([name for name, count in Counter(names).items() if count > 1])
    parents = _without_repeats(parents)
    try:
        parent_idx = array("i", map(index.__getitem__, chain.from_iterable(parents)))
    except KeyError:
        raise _dangling(names, parents, index) from None
    graph = JobGraph(names, index, array("i", accumulate(map(len, parents), initial=0)), parent_idx)
    graph._order = _topological_order(graph)
    return graph


def _without_repeats(parents: Sequence[Sequence[str]]) -> Sequence[Sequence[str]]:
    """``parents`` with any name repeated within one job's list kept once (rare: copy only then)."""
    repeats = [i for i, ps in enumerate(parents) if len(ps) > 1 and len(set(ps)) < len(ps)]
    if not repeats:
        return parents
    parents = list(parents)
    for i in repeats:
        parents[i] = list(dict.fromkeys(parents[i]))
    return parents


def _dangling(
    names: list[str], parents: Sequence[Sequence[str]], index: dict[str, int]
) -> DanglingParentError:
    for name, ps in zip(names, parents):
        for parent in ps:
            if parent not in index:
                return DanglingParentError(name, parent)
    raise AssertionError("no dangling parent found after a failed lookup")


def _owners(ptr: array) -> array:
    """For CSR row pointers, the row of every entry: ``[0, 0, 2]`` for ``ptr == [0, 2, 2, 3]``."""
    return array("i", chain.from_iterable(map(repeat, range(len(ptr) - 1), map(sub, ptr[1:], ptr[:-1]))))


def _group(n: int, keys: Sequence[int], values: Sequence[int]) -> tuple[array, array]:
    """CSR arrays grouping ``values`` by ``keys`` (counting sort, stable): O(n + len(values))."""
    counts = [0] * (n + 1)
    for k in keys:
        counts[k + 1] += 1
    ptr = array("i", accumulate(counts))
    pos = list(ptr)
    out = array("i", bytes(4 * len(values)))
    for k, v in zip(keys, values):
        at = pos[k]
        out[at] = v
        pos[k] = at + 1
    return ptr, out


def _topological_order(graph: JobGraph) -> list[int]:
    """Kahn's algorithm; on a cycle, raise :class:`CycleError` naming one cycle."""
    pending = list(map(sub, graph.parent_ptr[1:], graph.parent_ptr[:-1]))
    order = [i for i, count in enumerate(pending) if not count]
    cptr, cidx = graph.child_ptr, graph.child_idx
    for node in order:
        for child in cidx[cptr[node] : cptr[node + 1]]:
            left = pending[child] - 1
            pending[child] = left
            if not left:
                order.append(child)
    if len(order) < len(pending):
        raise CycleError([graph.names[i] for i in _one_cycle(graph, pending)])
    return order


def _one_cycle(graph: JobGraph, pending: list[int]) -> list[int]:
    """One cycle among the nodes Kahn's algorithm could not order: parent before child, lowest first.

    Each such node still waits on a parent that is itself unordered, so walking from one to such
    a parent must come back to a node already visited; the walk from there on is a cycle.
    """
    node = next(i for i, count in enumerate(pending) if count)
    seen: dict[int, int] = {}
    walk: list[int] = []
    while node not in seen:
        seen[node] = len(walk)
        walk.append(node)
        node = next(p for p in graph.parents(node) if pending[p])
    cycle = walk[seen[node] :]
    cycle.reverse()
    first = cycle.index(min(cycle))
    return cycle[first:] + cycle[:first]
