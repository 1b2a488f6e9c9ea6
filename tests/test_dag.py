"""panray.dag: graph validation, compact storage, dependency release, task grouping, DAG shapes."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from panray.dag import JobGraph, Releaser, build_graph, ci_hsc, drp, partition_tasks
from panray.exceptions import CycleError, DanglingParentError, DuplicateJobError


def _graph(spec: dict[str, list[str]]) -> JobGraph:
    return build_graph(list(spec), list(spec.values()))


def _assert_is_cycle(names: list[str], parents: list[list[str]], cycle: list[str]) -> None:
    parents_of = dict(zip(names, parents))
    assert cycle and len(set(cycle)) == len(cycle)
    for parent, child in zip(cycle, cycle[1:] + cycle[:1]):
        assert parent in parents_of[child], f"{parent} -> {child} is not an edge"


# --- validation -------------------------------------------------------------------------------


def test_cycle_error_names_exactly_the_cycle_in_edge_order():
    spec = {"a": [], "b": ["a", "d"], "c": ["b"], "d": ["c"], "e": ["d"], "f": ["a"]}
    with pytest.raises(CycleError) as err:
        _graph(spec)
    assert err.value.cycle == ["b", "c", "d"]
    assert "b -> c -> d -> b" in str(err.value)


def test_self_loop_is_a_cycle_of_one():
    with pytest.raises(CycleError) as err:
        _graph({"a": [], "b": ["a", "b"]})
    assert err.value.cycle == ["b"]


@pytest.mark.parametrize("seed", range(5))
def test_cycle_found_in_a_large_shuffled_graph_is_a_real_cycle(seed):
    rng = random.Random(seed)
    shape = drp(2_000, seed=seed)
    order = list(range(len(shape)))
    rng.shuffle(order)
    names = [shape.names[i] for i in order]
    parents = [list(shape.parents[i]) for i in order]
    # Close a loop: the first isr job now also waits on a forcedPhotCcd job downstream of it.
    isr = names.index("isr:v0000:d000")
    parents[isr].append(next(n for n in names if n.startswith("forcedPhotCcd:v0000:")))
    with pytest.raises(CycleError) as err:
        build_graph(names, parents)
    _assert_is_cycle(names, parents, err.value.cycle)
    assert "isr:v0000:d000" in err.value.cycle


def test_dangling_parent_is_named():
    with pytest.raises(DanglingParentError) as err:
        _graph({"a": [], "b": ["a", "ghost"], "c": ["phantom"]})
    assert (err.value.job, err.value.parent) == ("b", "ghost")
    assert "'ghost'" in str(err.value) and "'b'" in str(err.value)


def test_duplicates_are_all_named_once():
    with pytest.raises(DuplicateJobError) as err:
        build_graph(["a", "b", "a", "c", "b", "a"], [[]] * 6)
    assert err.value.names == ["a", "b"]
    assert "'a', 'b'" in str(err.value)


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError):
        build_graph(["a", "b"], [[]])


def test_repeated_parent_counts_once():
    g = _graph({"a": [], "b": ["a", "a"]})
    assert g.n_parents(1) == 1 and list(g.children(0)) == [1]
    assert list(g.edges()) == [(1, 0)]


# --- graph structure ----------------------------------------------------------------------------


def test_graph_accessors_on_a_diamond():
    g = _graph({"d": ["b", "c"], "b": ["a"], "c": ["a"], "a": []})
    a, b, c, d = (g.index[x] for x in "abcd")
    assert sorted(g.children(a)) == [b, c] and sorted(g.parents(d)) == [b, c]
    assert g.roots() == [a] and len(g) == 4 and g.n_edges == 4
    assert sorted(g.edges()) == sorted([(d, b), (d, c), (b, a), (c, a)])
    order = g.topological_order()
    assert order[0] == a and order[-1] == d


def test_topological_order_respects_every_edge_of_a_shuffled_drp_graph():
    shape = drp(5_000, seed=3)
    perm = list(range(len(shape)))
    random.Random(1).shuffle(perm)
    g = build_graph([shape.names[i] for i in perm], [shape.parents[i] for i in perm])
    position = {node: k for k, node in enumerate(g.topological_order())}
    assert len(position) == len(g)
    assert all(position[parent] < position[child] for child, parent in g.edges())


def test_from_edges_rebuilds_the_same_graph():
    shape = ci_hsc()
    g = build_graph(shape.names, shape.parents)
    stored = list(g.edges())
    random.Random(0).shuffle(stored)
    h = JobGraph.from_edges(len(g), stored, g.names)
    assert h.index == g.index
    for i in range(len(g)):
        assert sorted(h.parents(i)) == sorted(g.parents(i))
        assert sorted(h.children(i)) == sorted(g.children(i))
    assert set(h.topological_order()) == set(range(len(g)))


def test_from_edges_checks_bounds_and_reports_stored_cycles():
    with pytest.raises(ValueError, match="outside"):
        JobGraph.from_edges(2, [(1, 0), (2, 1)], ["a", "b"])
    with pytest.raises(ValueError):
        JobGraph.from_edges(3, [], ["a", "b"])
    looped = JobGraph.from_edges(2, [(1, 0), (0, 1)], ["a", "b"])
    with pytest.raises(CycleError) as err:
        looped.topological_order()
    assert err.value.cycle == ["a", "b"]


# --- release ----------------------------------------------------------------------------------


def _simulate(graph: JobGraph, rng: random.Random, done: set[int] = frozenset()) -> list[int]:
    """Finish released jobs in random order and random batches; check each release as it happens."""
    releaser = Releaser(graph, done)
    finished = set(done)
    released: list[int] = []

    def accept(batch: list[int]) -> None:
        for node in batch:
            assert all(p in finished for p in graph.parents(node)), graph.names[node]
            assert releaser.is_released(node)
        released.extend(batch)
        pool.extend(batch)

    pool: list[int] = []
    accept(releaser.ready())
    while pool:
        batch = [pool.pop(rng.randrange(len(pool))) for _ in range(min(len(pool), rng.randint(1, 4)))]
        finished.update(batch)
        accept(releaser.finish(batch[0]) if len(batch) == 1 else releaser.finish_many(batch))
    return released


@pytest.mark.parametrize(
    "make",
    [ci_hsc, lambda: ci_hsc(visits=6, detectors=5, bands=("g", "r", "i"), patches=4), lambda: drp(3_000, 7)],
    ids=["ci_hsc", "ci_hsc-4-patches", "drp-3000"],
)
def test_release_order_respects_parents(make):
    shape = make()
    g = build_graph(shape.names, shape.parents)
    released = _simulate(g, random.Random(len(shape)))
    assert len(released) == len(g) == len(set(released))


def test_finish_is_idempotent_and_ready_releases_once():
    g = _graph({"a": [], "b": ["a"], "c": ["a"]})
    r = Releaser(g)
    assert r.ready() == [0] and r.ready() == []
    assert sorted(r.finish(0)) == [1, 2]
    assert r.finish(0) == [] and r.finish_many([0, 0]) == []
    assert not r.is_finished(1) and r.is_released(1)


def test_child_is_released_by_its_last_parent_only():
    g = _graph({"a": [], "b": [], "c": ["a", "b"]})
    r = Releaser(g)
    assert r.ready() == [0, 1]
    assert r.finish(1) == [] and not r.is_released(2)
    assert r.finish(0) == [2]


@pytest.mark.parametrize("seed", range(4))
def test_restart_releases_exactly_the_frontier(seed):
    rng = random.Random(seed)
    shape = drp(2_000, seed=seed)
    g = build_graph(shape.names, shape.parents)
    order = g.topological_order()
    finished_prefix = set(order[: rng.randrange(len(g))])
    arbitrary = set(rng.sample(range(len(g)), len(g) // 3))
    for done in (finished_prefix, arbitrary):
        frontier = [i for i in range(len(g)) if i not in done and all(p in done for p in g.parents(i))]
        r = Releaser(g, done)
        assert r.ready() == frontier
        assert all(r.is_released(i) and r.is_finished(i) for i in done)
        assert r.finish_many(done) == []
        released = _simulate(g, rng, done)
        assert sorted(released) == sorted(set(range(len(g))) - done)


def test_descendants_on_a_hand_made_graph():
    g = _graph({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d"], "x": [], "y": ["x", "c"]})
    r = Releaser(g)
    names = lambda idxs: sorted(g.names[i] for i in idxs)  # noqa: E731
    assert names(r.descendants([g.index["a"]])) == ["b", "c", "d", "e", "y"]
    assert names(r.descendants([g.index["c"], g.index["d"], g.index["c"]])) == ["e", "y"]
    assert r.descendants([g.index["e"]]) == []
    result = r.descendants([g.index["a"], g.index["x"]])
    assert len(result) == len(set(result)) == 5


def test_failed_job_blocks_exactly_its_descendants():
    shape = ci_hsc()
    g = build_graph(shape.names, shape.parents)
    r = Releaser(g)
    failed = g.index["calibrate:v0003:d001"]
    pruned = set(r.descendants([failed]))
    pool, released = r.ready(), set()
    while pool:
        node = pool.pop()
        released.add(node)
        if node != failed:
            pool += r.finish(node)
    assert released == set(range(len(g))) - pruned
    assert g.index["consolidateObjectTable:t0000"] in pruned


# --- tasks ------------------------------------------------------------------------------------


def test_partition_tasks_one_task_per_label_in_first_appearance_order():
    tasks, task_of = partition_tasks(["b", "a", "b", "c"])
    assert tasks == [("b", 0, 2), ("a", 0, 1), ("c", 0, 1)]
    assert task_of == [0, 1, 0, 2]


def test_partition_tasks_splits_large_labels_into_balanced_chunks():
    labels = ["isr"] * 25 + ["calibrate"] * 10 + ["isr"] * 2
    tasks, task_of = partition_tasks(labels, chunk_size=10)
    assert tasks == [("isr", 0, 9), ("isr", 1, 9), ("isr", 2, 9), ("calibrate", 0, 10)]
    assert Counter(task_of) == {0: 9, 1: 9, 2: 9, 3: 10}
    assert task_of[:9] == [0] * 9 and task_of[9:18] == [1] * 9 and task_of[-2:] == [2, 2]
    assert all(tasks[t][0] == label for label, t in zip(labels, task_of))


def test_partition_tasks_edge_cases():
    assert partition_tasks([]) == ([], [])
    assert partition_tasks(["a"] * 3, chunk_size=1) == ([("a", 0, 1), ("a", 1, 1), ("a", 2, 1)], [0, 1, 2])
    with pytest.raises(ValueError):
        partition_tasks(["a"], chunk_size=0)


# --- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1_000, 10_000, 50_000, 200_000])
def test_drp_size_within_two_percent_and_acyclic(n):
    shape = drp(n)
    assert abs(len(shape) - n) <= 0.02 * n
    assert len(shape.labels) == len(shape.parents) == len(shape.tags) == len(shape)
    g = build_graph(shape.names, shape.parents)
    assert len(g.topological_order()) == len(shape)
    assert g.roots() == [g.index["pipetaskInit"]]


def _named(shape, label: str) -> set[str]:
    return {name for name, job_label in zip(shape.names, shape.labels) if job_label == label}


def test_drp_seed_moves_visits_but_keeps_the_size():
    a, b = drp(50_000, seed=0), drp(50_000, seed=1)
    assert sorted(a.labels) == sorted(b.labels)
    assert _named(a, "makeWarp") != _named(b, "makeWarp")
    assert drp(50_000, seed=1).parents == b.parents


def test_ci_hsc_has_the_fan_in_and_fan_out_of_a_quantum_graph():
    shape = ci_hsc()
    g = build_graph(shape.names, shape.parents)
    labels = Counter(shape.labels)
    assert labels["isr"] == labels["calibrate"] == labels["forcedPhotCcd"] == 33
    assert labels["makeWarp"] == 11 and labels["assembleCoadd"] == 2 and labels["mergeDetections"] == 1

    def parent_labels(name: str) -> Counter:
        return Counter(shape.labels[p] for p in g.parents(g.index[name]))

    assert g.n_children(g.index["pipetaskInit"]) == 33
    assert g.n_children(g.index["consolidateObjectTable:t0000"]) == 33
    assert parent_labels("consolidateVisitSummary:v0004") == {"calibrate": 3}
    assert parent_labels("makeWarp:v0004:p000") == {"calibrate": 3, "consolidateVisitSummary": 1}
    # Visits alternate bands: six g visits (0, 2, ..., 10) and five r visits.
    assert parent_labels("assembleCoadd:p000:g") == {"makeWarp": 6}
    assert parent_labels("assembleCoadd:p000:r") == {"makeWarp": 5}
    assert parent_labels("mergeDetections:p000") == {"detection": 2}
    assert g.n_children(g.index["deblend:p000"]) == 2
    assert parent_labels("forcedPhotCcd:v0007:d002") == {
        "consolidateObjectTable": 1,
        "calibrate": 1,
        "consolidateVisitSummary": 1,
    }
    data_id = {"instrument": "HSC", "visit": 1, "detector": 2, "band": "r"}
    assert shape.tags[g.index["isr:v0001:d002"]] == data_id


def test_ci_hsc_with_several_patches_spreads_detectors_over_them():
    shape = ci_hsc(visits=4, detectors=3, bands=("g", "r"), patches=2)
    g = build_graph(shape.names, shape.parents)
    calibrates = _named(shape, "calibrate")
    warp_parents = [g.parents(g.index[f"makeWarp:v0000:p00{k}"]) for k in (0, 1)]
    warp_calibrates = [sorted({shape.names[p] for p in ps} & calibrates) for ps in warp_parents]
    assert warp_calibrates == [
        ["calibrate:v0000:d000", "calibrate:v0000:d001"],
        ["calibrate:v0000:d001", "calibrate:v0000:d002"],
    ]
    assert Counter(shape.labels)["forcedPhotCoadd"] == 4
