"""A horizontal stacked bar chart as inline SVG (no JavaScript, no external resources)."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Sequence


@dataclass(frozen=True)
class Series:
    name: str
    color: str


def bar_chart_svg(title: str, labels: Sequence[str], values: Sequence[Sequence[float]],
                  series: Sequence[Series], *, width: int = 760, bar_height: int = 18) -> str:
    """One bar per label, stacked from ``values[i][j]`` (bar i, series j), with a legend."""
    label_w = min(320, 12 + 7 * max((len(label) for label in labels), default=10))
    plot_w = max(120, width - label_w - 70)
    top = 44
    height = top + len(labels) * (bar_height + 8) + 24
    vmax = max((sum(v) for v in values), default=0) or 1
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="16" font-weight="bold" font-size="14">{escape(title)}</text>',
    ]
    x = label_w
    for s in series:
        out.append(f'<rect x="{x}" y="24" width="12" height="12" fill="{escape(s.color)}"/>')
        out.append(f'<text x="{x + 16}" y="34">{escape(s.name)}</text>')
        x += 28 + 7 * len(s.name)
    for i, (label, vals) in enumerate(zip(labels, values)):
        y = top + i * (bar_height + 8)
        out.append(f'<text x="{label_w - 6}" y="{y + bar_height - 5}" text-anchor="end">'
                   f"{escape(label)}</text>")
        bx = float(label_w)
        for v, s in zip(vals, series):
            w = plot_w * v / vmax
            if w > 0:
                out.append(f'<rect x="{bx:.1f}" y="{y}" width="{w:.1f}" height="{bar_height}" '
                           f'fill="{escape(s.color)}"><title>{escape(s.name)}: {v:g}</title></rect>')
            bx += w
        out.append(f'<text x="{bx + 4:.1f}" y="{y + bar_height - 5}">{sum(vals):g}</text>')
    out.append("</svg>")
    return "\n".join(out)
