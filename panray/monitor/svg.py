"""A few SVG building blocks shared by the monitor's server-side drawings; all text is escaped."""

from __future__ import annotations

from html import escape

#: Job status -> fill colour, in the order bars stack (ended first, then active, then waiting).
STATUS_COLOURS = {
    "finished": "#2e9e44", "failed": "#d33a2c", "closed": "#7a4b3a", "cancelled": "#8e5bb5",
    "running": "#2f6fd6", "starting": "#5b93e8", "sent": "#8db4f0",
    "activated": "#e0b73a", "assigned": "#e8cd7a", "defined": "#efe0a8", "pending": "#d9d9d9",
}


def text(x: float, y: float, value: object, *, size: int = 11, anchor: str = "start", cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{klass}>'
            f"{escape(str(value))}</text>")


def document(width: float, height: float, body: list[str], *, label: str, cls: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" role="img" aria-label="{escape(label)}" '
            f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}">'
            + "".join(body) + "</svg>")


def status_bar(x: float, y: float, width: float, height: float, counts: dict[str, int]) -> list[str]:
    """A horizontal bar split by the share of jobs in each status."""
    total = sum(counts.values())
    out = [f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" fill="#eee"/>']
    pos = x
    for status, colour in STATUS_COLOURS.items():
        n = counts.get(status, 0)
        if n and total:
            w = width * n / total
            out.append(f'<rect x="{pos:.1f}" y="{y:.1f}" width="{w:.1f}" height="{height:.1f}" fill="{colour}">'
                       f"<title>{escape(status)}: {n}</title></rect>")
            pos += w
    return out
