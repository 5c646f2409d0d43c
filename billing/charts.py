"""Charts drawn by the server as inline SVG: no JavaScript, no chart library, no CDN; they print and screenshot as
they look. Every mark carries a <title>, so hovering a bar shows its exact figures."""
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

FONT = 'font-family="-apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif" font-size="11"'


@dataclass(frozen=True)
class Series:
    name: str
    color: str


def nice_step(value: float, ticks: int = 4) -> float:
    """A round step (1, 2 or 5 x 10^k) that covers `value` in about `ticks` steps, so axis labels read well."""
    if value <= 0:
        return 1.0
    raw = value / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(step * magnitude for step in (1, 2, 5, 10) if raw <= step * magnitude * (1 + 1e-9))


def nice_ceiling(value: float) -> float:
    """The axis's top: the smallest multiple of nice_step(value) that is at least `value` (1 for nothing)."""
    step = nice_step(value)
    return step * max(1, math.ceil(value / step - 1e-9))


def column_chart(*, labels: Sequence[str], series: Sequence[Series], values: Sequence[Sequence[float]],
                 title: str, fmt: Callable[[float], str], tick_labels: Sequence[str] | None = None,
                 width: int = 1000, height: int = 190) -> SafeString:
    """Stacked columns, one per label (a day); `values[i]` holds one value per series for `labels[i]`.

    `tick_labels` (same length as `labels`, "" for none) names the columns along the axis; by default about a
    dozen evenly spread labels are shown.
    """
    left, right, top, bottom = 64, 8, 8, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    highest = max((sum(column) for column in values), default=0)
    step = nice_step(highest)
    top_value = nice_ceiling(highest)
    slot = plot_w / max(len(labels), 1)
    bar = slot * 0.8 if slot >= 4 else slot
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="{escape(title)}" {FONT}>']
    for tick in range(round(top_value / step) + 1):
        value = step * tick
        y = top + plot_h - plot_h * value / top_value
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{escape(fmt(value))}</text>')
    if tick_labels is None:
        step = max(1, math.ceil(len(labels) / 12))
        tick_labels = [label if index % step == 0 else "" for index, label in enumerate(labels)]
    for index, (label, column) in enumerate(zip(labels, values)):
        x = left + index * slot + (slot - bar) / 2
        tip = f"{label}: " + ", ".join(f"{s.name} {fmt(v)}" for s, v in zip(series, column))
        parts.append(f"<g><title>{escape(tip)}</title>")
        y = top + plot_h
        for s, value in zip(series, column):
            h = plot_h * value / top_value
            if h > 0:
                y -= h
                parts.append(f'<rect x="{x:.2f}" y="{y:.2f}" width="{bar:.2f}" height="{h:.2f}" fill="{s.color}"/>')
        # An invisible full-height target, so even an empty day shows its tooltip.
        parts.append(f'<rect x="{x:.2f}" y="{top}" width="{bar:.2f}" height="{plot_h}" fill="transparent"/></g>')
        if tick_labels[index]:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - 6}" text-anchor="middle" class="axis">'
                         f"{escape(tick_labels[index])}</text>")
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" class="baseline"/>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


def bar_list(rows: Sequence[tuple[str, float, str]], *, color: str, title: str, scale: float | None = None,
             width: int = 560, label_width: int = 150, row_height: int = 22) -> SafeString:
    """Horizontal bars, one per row of (label, value, shown value), longest value first as given.

    `scale` is the value of a full-length bar; by default a round number at or above the largest value.
    """
    value_width = 180
    bar_space = width - label_width - value_width
    scale = scale or nice_ceiling(max((value for _, value, _ in rows), default=0))
    height = max(len(rows), 1) * row_height + 4
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="{escape(title)}" {FONT}>']
    for index, (label, value, shown) in enumerate(rows):
        y = 2 + index * row_height
        short = label if len(label) <= 26 else label[:25] + "…"
        length = max(bar_space * value / scale, 1 if value > 0 else 0)
        parts.append(
            f"<g><title>{escape(label)}: {escape(shown)}</title>"
            f'<text x="{label_width - 8}" y="{y + row_height / 2 + 4:.1f}" text-anchor="end" class="label">'
            f"{escape(short)}</text>"
            f'<rect x="{label_width}" y="{y + 3}" width="{length:.2f}" height="{row_height - 6}" '
            f'fill="{color}" rx="2"/>'
            f'<text x="{label_width + length + 6:.1f}" y="{y + row_height / 2 + 4:.1f}" class="value">'
            f"{escape(shown)}</text></g>"
        )
    if not rows:
        parts.append(f'<text x="{label_width}" y="16" class="axis">No usage in this range.</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))
