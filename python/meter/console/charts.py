"""The console's charts, drawn on the server as SVG by pygal: no chart script in the browser, nothing to fetch.

Why pygal: a chart is an SVG image made from the rows the page's table shows, in a few milliseconds, by a
well-kept Python package; the page shows it as an ``<img>``, so the console's Content-Security-Policy stays without
any script but its own, and the chart works with scripting off. Each point's exact decimal is its label (``<desc
class="label">``): bars are drawn from floats, but what the chart says is the API's number, as the table below it.

A chart shows at most :data:`MAX_SERIES` groups, the largest; the table has them all.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pygal
from pygal.style import Style

from meter.encoding import plain
from meter.server.http import Answer

# pygal appends a legacy import hook to sys.meta_path at import (for its map plugins, unused here), which makes every
# failed import anywhere in the process warn (ImportWarning: no find_spec). Taken out again: nothing here needs it.
sys.meta_path[:] = [finder for finder in sys.meta_path if type(finder).__module__ != "pygal"]

__all__ = ["MAX_SERIES", "answer", "monthly_chart", "quantity", "usage_chart"]

MAX_SERIES = 10
#: What an SVG chart may do when opened on its own: draw with its own styles, run nothing.
SVG_POLICY = "default-src 'none'; style-src 'unsafe-inline'"
_STYLE = Style(
    background="white",
    plot_background="white",
    foreground="#1b1f24",
    foreground_strong="#1b1f24",
    foreground_subtle="#4a5560",
    colors=(
        "#1f4e79",
        "#f2a900",
        "#116329",
        "#a40e26",
        "#6639ba",
        "#0e7490",
        "#9a6700",
        "#57606a",
        "#bc4c00",
        "#0550ae",
    ),
    font_family="system-ui, sans-serif",
)


def usage_chart(rows: list[dict[str, Any]], meter: str, group_by: str, tz: str) -> bytes:
    """Bars of ``rows`` (a usage answer's) per window, a series per value of ``group_by`` (one series without)."""
    zone = ZoneInfo(tz)
    windows = sorted({row["window_start"] for row in rows})
    series: dict[str, dict[datetime, Decimal]] = defaultdict(dict)
    for row in rows:
        name = str(row.get(group_by) if group_by else meter) if not group_by or row.get(group_by) is not None else "—"
        series[name][row["window_start"]] = row["value"]
    largest = sorted(series, key=lambda name: (-sum(series[name].values()), name))[:MAX_SERIES]
    chart = pygal.Bar(
        width=960, height=320, js=[], style=_STYLE, show_legend=bool(group_by), legend_at_bottom=True,
        x_label_rotation=0 if len(windows) <= 14 else 45, truncate_label=-1, print_values=False,
        title=f"{meter} by {group_by}" if group_by else meter,
    )  # fmt: skip
    chart.x_labels = [_label(w.astimezone(zone)) for w in windows]
    for name in largest:
        values = series[name]
        chart.add(name, [_point(values.get(w)) for w in windows])
    svg = chart.render()
    assert isinstance(svg, bytes)
    return svg


def monthly_chart(title: str, kind: str, months: list[str], series: dict[str, dict[str, Decimal]]) -> bytes:
    """Bars (``kind="bar"``) or lines of amounts per month (``YYYY-MM``), a series per currency."""
    chart = (pygal.Bar if kind == "bar" else pygal.Line)(
        width=960, height=300, js=[], style=_STYLE, show_legend=len(series) > 1, legend_at_bottom=True,
        x_label_rotation=0 if len(months) <= 12 else 45, title=title,
    )  # fmt: skip
    chart.x_labels = months
    for currency in sorted(series)[:MAX_SERIES]:
        chart.add(currency, [_money(series[currency].get(month), currency) for month in months])
    svg = chart.render()
    assert isinstance(svg, bytes)
    return svg


def _money(amount: Decimal | None, currency: str) -> dict[str, Any] | None:
    return None if amount is None else {"value": float(amount), "label": f"{plain(amount)} {currency}"}


def answer(svg: bytes) -> Answer:
    """A chart as its own response, under a policy that lets it draw with its styles and run nothing."""
    return 200, svg, {"content-type": "image/svg+xml", "content-security-policy": SVG_POLICY}


def quantity(value: Decimal) -> str:
    """A usage value as the usage API writes it: plain, without trailing zeros (``14.5``, ``1200``)."""
    return plain(value.normalize())


def _point(value: Decimal | None) -> dict[str, Any] | None:
    return None if value is None else {"value": float(value), "label": quantity(value)}


def _label(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d}" if (moment.hour, moment.minute) == (0, 0) else f"{moment:%m-%d %H:%M}"
