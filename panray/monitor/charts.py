"""Memory plots drawn on the server: PSS, RSS and VMEM over time from a prmon-format TSV.

The TSV is what the pilot's memory monitor uploads (``prmon.txt``: ``Time`` first, memory in kB).
Long series are thinned to at most :data:`MAX_POINTS` points, so the SVG stays small whatever
the job's length.

Examples:
    >>> svg = memory_svg("Time\\tvmem\\tpss\\trss\\n100\\t4096\\t1024\\t2048\\n101\\t4096\\t2048\\t3072\\n")
    >>> svg.startswith("<svg") and svg.count("<polyline") == 3
    True
    >>> memory_svg("Time\\tpss\\n") is None
    True
"""

from __future__ import annotations

from panray.monitor.svg import document, text

MAX_POINTS = 400
SERIES = (("pss", "#d33a2c"), ("rss", "#2f6fd6"), ("vmem", "#999999"))
_W, _H, _LEFT, _BOTTOM, _TOP, _RIGHT = 640.0, 240.0, 60.0, 30.0, 24.0, 90.0


def parse_prmon(tsv: str) -> dict[str, list[float]]:
    """Columns of a prmon TSV by name; rows that do not parse are skipped."""
    lines = [line.split("\t") for line in tsv.splitlines() if line.strip()]
    if not lines:
        return {}
    header, columns = lines[0], {name: [] for name in lines[0]}
    for row in lines[1:]:
        try:
            values = [float(v) for v in row]
        except ValueError:
            continue
        if len(values) == len(header):
            for name, value in zip(header, values):
                columns[name].append(value)
    return columns


def _thin(n: int) -> range:
    return range(0, n, max(1, -(-n // MAX_POINTS)))


def memory_svg(tsv: str) -> str | None:
    """The plot as an SVG document, or None if the file holds no sample."""
    cols = parse_prmon(tsv)
    times = cols.get("Time") or []
    if not times:
        return None
    t0, t1 = times[0], max(times[-1], times[0] + 1)
    series = [(name, colour, cols[name]) for name, colour in SERIES if cols.get(name)]
    top_mb = max(max(v) for _, _, v in series) / 1024 if series else 1.0
    top_mb = max(top_mb, 1.0)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    body = [f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>',
            text(_LEFT - 4, _TOP + 4, f"{top_mb:.0f} MB", anchor="end"), text(_LEFT - 4, _TOP + plot_h, "0", anchor="end"),
            text(_LEFT, _H - 8, "0 s"), text(_LEFT + plot_w, _H - 8, f"{t1 - t0:.0f} s", anchor="end"),
            text(_LEFT, 14, "memory over time (prmon)", size=12)]
    for k, (name, colour, values) in enumerate(series):
        points = " ".join(
            f"{_LEFT + plot_w * (times[i] - t0) / (t1 - t0):.1f},{_TOP + plot_h * (1 - values[i] / 1024 / top_mb):.1f}"
            for i in _thin(len(values)))
        body.append(f'<polyline class="series-{name}" fill="none" stroke="{colour}" stroke-width="1.5" '
                    f'points="{points}"/>')
        y = _TOP + 12 + 16 * k
        body.append(f'<line x1="{_W - _RIGHT + 10}" y1="{y - 4}" x2="{_W - _RIGHT + 30}" y2="{y - 4}" '
                    f'stroke="{colour}" stroke-width="2"/>')
        body.append(text(_W - _RIGHT + 34, y, f"{name.upper()} {max(values) / 1024:.0f} MB"))
    return document(_W, _H, body, label="memory plot: PSS, RSS and VMEM over time", cls="memory-plot")
