"""The label-level DAG of a workflow as SVG: one node per label, sized by its job count and
coloured by the mix of its jobs' statuses, with labels blocked by failures marked.

A label is *blocked* when some of its jobs were pruned (closed): an ancestor failed for good.
Layers are the longest path from a root over the condensed label graph, so a label cycle (a
label feeding itself through another) still draws.

Examples:
    >>> svg = dag_svg([("isr", "calibrate")], {"isr": {"finished": 3}, "calibrate": {"closed": 1, "running": 2}})
    >>> svg.count('class="dag-node') == 2 and "blocked" in svg
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from html import escape

import networkx as nx

from panray.monitor.svg import document, status_bar, text

_NODE_H, _LAYER_GAP, _ROW_GAP, _MIN_W, _MAX_W, _PAD = 34.0, 70.0, 14.0, 90.0, 220.0, 20.0


def _layers(edges: Sequence[tuple[str, str]], labels: Sequence[str]) -> list[list[str]]:
    g = nx.DiGraph()
    g.add_nodes_from(labels)
    g.add_edges_from((p, c) for p, c in edges if p != c)
    cond = nx.condensation(g)
    depth: dict[int, int] = {}
    for node in nx.topological_sort(cond):
        depth[node] = max((depth[p] + 1 for p in cond.predecessors(node)), default=0)
    layers: dict[int, list[str]] = {}
    for node, members in cond.nodes(data="members"):
        layers.setdefault(depth[node], []).extend(sorted(members))
    return [layers[d] for d in sorted(layers)]


def dag_svg(edges: Sequence[tuple[str, str]], counts: Mapping[str, Mapping[str, int]],
            link: Callable[[str], str] | None = None) -> str:
    """``edges``: (parent label, child label); ``counts``: label -> {job status: n}."""
    labels = sorted(set(counts) | {x for e in edges for x in e})
    layers = _layers(edges, labels)
    biggest = max((sum(c.values()) for c in counts.values()), default=1) or 1

    def width(label: str) -> float:
        n = sum(counts.get(label, {}).values())
        return _MIN_W + (_MAX_W - _MIN_W) * math.sqrt(n / biggest)

    pos: dict[str, tuple[float, float, float]] = {}
    for row, layer in enumerate(layers):
        x = _PAD
        for label in layer:
            w = width(label)
            pos[label] = (x, _PAD + row * (_NODE_H + _LAYER_GAP), w)
            x += w + _ROW_GAP
    total_w = max((x + w for x, _, w in pos.values()), default=0.0) + _PAD
    total_h = _PAD * 2 + len(layers) * (_NODE_H + _LAYER_GAP) - _LAYER_GAP
    body = ['<defs><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="6" markerHeight="6" '
            'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#888"/></marker></defs>']
    for parent, child in edges:
        if parent == child:
            continue
        (px, py, pw), (cx, cy, cw) = pos[parent], pos[child]
        body.append(f'<line x1="{px + pw / 2:.1f}" y1="{py + _NODE_H:.1f}" x2="{cx + cw / 2:.1f}" y2="{cy:.1f}" '
                    'stroke="#888" marker-end="url(#arrow)"/>')
    for label in labels:
        x, y, w = pos[label]
        c = dict(counts.get(label, {}))
        n, pruned, failed = sum(c.values()), c.get("closed", 0), c.get("failed", 0)
        blocked = " blocked" if pruned else ""
        border = ' stroke="#d33a2c" stroke-width="2" stroke-dasharray="4 2"' if pruned else ' stroke="#555"'
        node = [f'<g class="dag-node{blocked}" data-label="{escape(label)}">',
                f"<title>{escape(label)}: {n} jobs, {failed} failed, {pruned} pruned (blocked by a failure)</title>",
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{_NODE_H}" fill="white" rx="4"{border}/>',
                *status_bar(x + 4, y + 20, w - 8, 9, c),
                text(x + 5, y + 14, f"{label} ({n})" + (f" blocked: {pruned}" if pruned else ""), size=11),
                "</g>"]
        if link is not None:
            node = [f'<a href="{escape(link(label))}">', *node, "</a>"]
        body.extend(node)
    return document(total_w, total_h, body, label="label graph of the workflow", cls="dag")
