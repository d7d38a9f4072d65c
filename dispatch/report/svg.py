"""Draw a ``timeline.Chart`` as inline SVG.

Plain SVG elements with classes (colours live in the stylesheet), a ``<title>``
per bar so hovering works even with scripts off, and nothing fetched: the page
stays one file.
"""
from __future__ import annotations

from html import escape
from math import floor, log10

from dispatch.common.text import clip
from dispatch.report.common import fmt_ms
from dispatch.report.timeline import Bar, Chart

WIDTH = 1200
LABEL_W = 200
RIGHT_PAD = 80
AXIS_H = 26
ROW_H = 24
BAR_H = 16
CHAR_W = 6.6  # average width of an 11px sans-serif glyph, to decide whether a label fits


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def nice_step(span_ms: float, target: int = 8) -> float:
    """A 1/2/5 x 10^k tick step giving about ``target`` ticks over ``span_ms``."""
    raw = max(span_ms, 1e-3) / target
    power = 10 ** floor(log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def render_chart(chart: Chart, chart_id: str, aria_label: str) -> str:
    """The chart as an ``<svg>`` element; empty charts say so instead of drawing an axis."""
    if not chart.rows:
        return f'<p class="empty" id="{_e(chart_id)}">No timing recorded.</p>'
    plot_w = WIDTH - LABEL_W - RIGHT_PAD
    scale = plot_w / max(chart.span_ms, 1e-3)
    height = AXIS_H + ROW_H * len(chart.rows) + 6
    out = [f'<svg class="gantt" id="{_e(chart_id)}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
           f'height="{height}" role="img" aria-label="{_e(aria_label)}">']
    out += _bands(chart, height)
    out += _lead_in(chart, scale, height)
    out += _axis(chart.span_ms, scale, height)
    if chart.axis_label:
        out.append(f'<text class="axis-label" x="8" y="{AXIS_H - 9}">{_e(chart.axis_label)}</text>')
    positions: dict[str, tuple[float, float, float]] = {}
    for i, row in enumerate(chart.rows):
        y = AXIS_H + i * ROW_H
        if row.label:
            label = _e(clip(row.label, int((LABEL_W - 16) / (CHAR_W + 0.6))))
            tip = f"<title>{_e(row.label_tip or row.label)}</title>"
            out.append(f'<text class="row-label" x="8" y="{y + ROW_H / 2 + 4:.1f}">{tip}{label}</text>')
        if row.note and not row.bars:
            out.append(f'<text class="row-note" x="{LABEL_W + 6}" y="{y + ROW_H / 2 + 4:.1f}">{_e(row.note)}</text>')
        for bar in row.bars:
            out.append(_bar(bar, y, scale))
            x0 = LABEL_W + bar.start_ms * scale
            positions[bar.key] = (x0, x0 + max((bar.end_ms - bar.start_ms) * scale, 2.0), y + ROW_H / 2)
    for a, b in chart.links:
        if a in positions and b in positions:
            (_, ax, ay), (bx, _, by) = positions[a], positions[b]
            out.append(f'<path class="crit-link" d="M{ax:.1f},{ay:.1f} C{ax + 14:.1f},{ay:.1f} '
                       f'{bx - 14:.1f},{by:.1f} {bx:.1f},{by:.1f}"/>')
    out.append("</svg>")
    return "\n".join(out)


def _bands(chart: Chart, height: int) -> list[str]:
    """Alternate background per group, so a worker's lanes read as one block."""
    out, start = [], 0
    for i in range(1, len(chart.rows) + 1):
        if i == len(chart.rows) or chart.rows[i].group != chart.rows[start].group:
            cls = "band odd" if chart.rows[start].group % 2 else "band"
            out.append(f'<rect class="{cls}" x="0" y="{AXIS_H + start * ROW_H}" width="{WIDTH}" '
                       f'height="{(i - start) * ROW_H}"/>')
            start = i
    out.append(f'<line class="divider" x1="{LABEL_W}" y1="{AXIS_H - 4}" x2="{LABEL_W}" y2="{height}"/>')
    return out


def _lead_in(chart: Chart, scale: float, height: int) -> list[str]:
    """The time before the first bar, shaded and named, so a blank start is never a mystery."""
    if chart.lead_in_ms <= 0:
        return []
    w = chart.lead_in_ms * scale
    label = next((t for t in ("start-up " + fmt_ms(chart.lead_in_ms), "start-up") if len(t) * CHAR_W + 8 <= w), "")
    out = [f'<g class="lead-in"><title>{_e(chart.lead_in_tip)}</title>'
           f'<rect x="{LABEL_W}" y="{AXIS_H - 4}" width="{w:.1f}" height="{height - AXIS_H + 4}"/>']
    if label:
        out.append(f'<text x="{LABEL_W + 4}" y="{height - 8}">{_e(label)}</text>')
    return out + ["</g>"]


def _axis(span_ms: float, scale: float, height: int) -> list[str]:
    step = nice_step(span_ms)
    out, t = [], 0.0
    while t <= span_ms + step * 1e-6:
        x = LABEL_W + t * scale
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{AXIS_H - 4}" x2="{x:.1f}" y2="{height}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{AXIS_H - 9}">{_e(fmt_ms(t) if t else "0")}</text>')
        t += step
    return out


def _bar(bar: Bar, y: float, scale: float) -> str:
    x = LABEL_W + bar.start_ms * scale
    w = max((bar.end_ms - bar.start_ms) * scale, 2.0)
    by = y + (ROW_H - BAR_H) / 2
    cls = f"bar s-{bar.status}" + (" crit" if bar.critical else "")
    parts = [f'<g class="{cls}" data-key="{_e(bar.key)}">', f"<title>{_e(bar.tip)}</title>",
             f'<rect x="{x:.1f}" y="{by:.1f}" width="{w:.1f}" height="{BAR_H}" rx="3"/>']
    fits = int((w - 8) / CHAR_W)
    if bar.label and fits >= min(len(bar.label), 4):
        parts.append(f'<text class="bar-label" x="{x + 4:.1f}" y="{by + BAR_H - 4:.1f}">'
                     f"{_e(clip(bar.label, fits))}</text>")
    if bar.note:
        parts.append(f'<text class="bar-note" x="{x + w + 5:.1f}" y="{by + BAR_H - 4:.1f}">{_e(bar.note)}</text>')
    parts.append("</g>")
    body = "".join(parts)
    return f'<a href="#{_e(bar.anchor)}">{body}</a>' if bar.anchor else body
