"""Small inline-SVG charts rendered on the server (no JavaScript library, nothing fetched)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape

from markupsafe import Markup

#: Colours of approval outcomes, the same as the status pills of the pages.
OUTCOME_COLORS = {"approved": "#16a34a", "rejected": "#dc2626", "expired": "#d97706", "cancelled": "#9ca3af"}
#: Colours of how model decisions were made (a decision policy, or a person), by their legend names.
DECISION_COLORS = {"auto-approved": "#86efac", "auto-rejected": "#fca5a5", "by a person": "#2563eb"}
PALETTE = ("#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
_W, _H = 640, 240
_L, _R, _T, _B = 52, 12, 26, 48


def _fmt(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2f}"


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _frame(y_max: float, y_min: float, y_label: str, fmt: Callable[[float], str] = _fmt) -> list[str]:
    parts = [
        f'<svg viewBox="0 0 {_W} {_H}" class="chart" role="img" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{_L - 6}" y="11" text-anchor="end" class="axis-label">{escape(y_label)}</text>',
    ]
    for i in range(5):
        value = y_min + (y_max - y_min) * i / 4
        y = _H - _B - (_H - _T - _B) * i / 4
        parts.append(f'<line x1="{_L}" x2="{_W - _R}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{_L - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{fmt(value)}</text>')
    return parts


def _x_labels(labels: Sequence[str], xs: Sequence[float]) -> list[str]:
    step = max(1, len(labels) // 8)
    return [
        f'<text x="{x:.1f}" y="{_H - _B + 16}" text-anchor="middle" class="tick">{escape(label)}</text>'
        for i, (label, x) in enumerate(zip(labels, xs, strict=True))
        if i % step == 0 or i == len(labels) - 1
    ]


def _color(i: int, name: str, colors: Mapping[str, str] | None) -> str:
    return (colors or {}).get(name) or PALETTE[i % len(PALETTE)]


def _legend(names: Sequence[str], colors: Mapping[str, str] | None = None) -> list[str]:
    parts, x = [], _L
    for i, name in enumerate(names):
        color = _color(i, name, colors)
        parts.append(f'<rect x="{x}" y="{_H - 16}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{x + 14}" y="{_H - 7}" class="tick">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return parts


def empty_chart(message: str = "No data yet") -> Markup:
    return Markup(
        f'<svg viewBox="0 0 {_W} 80" class="chart" xmlns="http://www.w3.org/2000/svg">'
        f'<text x="{_W / 2}" y="44" text-anchor="middle" class="empty">{escape(message)}</text></svg>'
    )


def line_chart(
    labels: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    y_label: str = "",
    percent: bool = False,
) -> Markup:
    """One line per series over shared x labels; ``None`` values leave a gap.

    :param percent: the values are shares (0 to 1): the axis runs from 0% to 100%.
    """
    values = [v for points in series.values() for v in points if v is not None]
    if not labels or not values:
        return empty_chart()
    fmt = _pct if percent else _fmt
    if percent:
        y_min, y_max = 0.0, 1.0
    else:
        y_min = min(0.0, min(values))
        y_max = max(values) if max(values) > y_min else y_min + 1
        y_max *= 1.05
    n = len(labels)
    xs = [_L + (_W - _L - _R) * (i + 0.5) / n for i in range(n)]

    def y_of(v: float) -> float:
        return _H - _B - (_H - _T - _B) * (v - y_min) / (y_max - y_min)

    parts = _frame(y_max, y_min, y_label, fmt)
    for idx, (name, points) in enumerate(series.items()):
        color = PALETTE[idx % len(PALETTE)]
        coords = [(x, y_of(v)) for x, v in zip(xs, points, strict=True) if v is not None]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for (x, y), v in zip(coords, [v for v in points if v is not None], strict=True):
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"><title>{escape(name)}: {fmt(v)}</title></circle>'
            )
    parts += _x_labels(labels, xs)
    parts += _legend(list(series))
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked_bar_chart(
    labels: Sequence[str],
    stacks: dict[str, Sequence[float]],
    *,
    y_label: str = "",
    colors: Mapping[str, str] | None = None,
) -> Markup:
    """Stacked bars per x label, one colour per stack (``colors`` maps a stack name to its colour)."""
    totals = [sum(stack[i] for stack in stacks.values()) for i in range(len(labels))]
    if not labels or not any(totals):
        return empty_chart()
    y_max = max(totals) * 1.1
    n = len(labels)
    slot = (_W - _L - _R) / n
    width = max(4.0, slot * 0.6)
    parts = _frame(y_max, 0.0, y_label)
    xs = []
    for i in range(n):
        x_center = _L + slot * (i + 0.5)
        xs.append(x_center)
        base = 0.0
        for idx, (name, stack) in enumerate(stacks.items()):
            value = stack[i]
            if not value:
                continue
            h = (_H - _T - _B) * value / y_max
            y = _H - _B - (_H - _T - _B) * base / y_max - h
            parts.append(
                f'<rect x="{x_center - width / 2:.1f}" y="{y:.1f}" width="{width:.1f}" height="{h:.1f}" '
                f'fill="{_color(idx, name, colors)}"><title>{escape(name)}: {_fmt(value)}</title></rect>'
            )
            base += value
    parts += _x_labels(labels, xs)
    parts += _legend(list(stacks), colors)
    parts.append("</svg>")
    return Markup("".join(parts))
