"""A plotext chart that builds only when its data or size changed, and knows what a build costs;
and the helpers every chart of the console draws with: whole-number ticks and a history thinned
to what the chart's columns can show."""

from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
from rich.text import Text
from textual.app import RenderResult
from textual_plotext import PlotextPlot

# Braille markers put two points in a column: more than this many per column cannot be seen.
POINTS_PER_COLUMN = 2
TICK_STEPS = (1, 2, 5)


class Chart(PlotextPlot):
    """Plotext builds in pure Python: tens of milliseconds for a wide chart. Textual asks for a
    render on every layout pass (a progress label changing width is enough), so the last build
    is reused until `replot()` says the data changed; its cost lets the app budget redraws."""

    build_seconds = 0.0

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._version = 0
        self._cached_key: tuple | None = None
        self._cached: RenderResult | None = None

    def blank(self, xlabel: str = "", ylabel: str = ""):
        """Clear the figure for a rebuild and return plotext's `plt` to draw into."""
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if xlabel:
            plt.xlabel(xlabel)
        if ylabel:
            plt.ylabel(ylabel)
        return plt

    def replot(self) -> None:
        """Call after changing the data through `plt`."""
        self._version += 1
        self.refresh()

    def columns(self, default: int = 120) -> int:
        """The chart's width in cells (a default before the first layout)."""
        return self.size.width or default

    def render(self) -> RenderResult:
        key = (self._version, self.size, self.app.theme)
        if key != self._cached_key or self._cached is None:
            t0 = time.perf_counter()
            self._cached = super().render()
            self.build_seconds = time.perf_counter() - t0
            self._cached_key = key
        return self._cached


class ChartGroup:
    """The charts of one pane, as the app's frame budget sees them: one build cost, their sum."""

    def __init__(self, *charts: Chart) -> None:
        self.charts = charts

    @property
    def build_seconds(self) -> float:
        return sum(chart.build_seconds for chart in self.charts)


def int_ticks(lo: float, hi: float, most: int) -> list[int]:
    """At most `most` whole-number ticks spanning [lo, hi], 1, 2 or 5 times a power of ten apart."""
    most = max(most, 2)
    first, last = math.ceil(lo), math.floor(hi)
    if last < first:
        return [round((lo + hi) / 2)]
    span = max(last - first, 1)
    power = 1
    while True:
        for step in TICK_STEPS:
            every = step * power
            if span / every < most:
                start = math.ceil(first / every) * every
                return list(range(start, last + 1, every)) or [first]
        power *= 10


def tick_label(value: int) -> str:
    """A step count as a short axis label: 950, 12k, 1.5M."""
    if abs(value) >= 1_000_000 and value % 100_000 == 0:
        return f"{value / 1_000_000:g}M"
    if abs(value) >= 10_000 and value % 1000 == 0:
        return f"{value // 1000}k"
    return str(value)


def set_int_xticks(plt, lo: float, hi: float, columns: int) -> None:
    """Whole-number x ticks, about one per eight columns, and the whole-number x range they sit in."""
    lo, hi = math.floor(lo), math.ceil(hi)
    if hi <= lo:
        hi = lo + 1
    ticks = int_ticks(lo, hi, max(columns // 8, 3))
    plt.xlim(lo, hi)
    plt.xticks(ticks, [tick_label(t) for t in ticks])


def thin(x: Sequence[float], *ys: Sequence[float], points: int) -> tuple[list[float], ...]:
    """x and each y as lists of at most `points` points: consecutive points averaged in equal
    runs. Points where any y is not finite are left out first (they would wreck the axis)."""
    xa = np.asarray(x, dtype=float)
    ya = [np.asarray(y, dtype=float) for y in ys]
    keep = np.isfinite(xa)
    for y in ya:
        keep &= np.isfinite(y)
    if not keep.all():
        xa, ya = xa[keep], [y[keep] for y in ya]
    n = len(xa)
    if n > points > 0:
        starts = np.linspace(0, n, points + 1).astype(np.int64)[:-1]
        counts = np.diff(np.append(starts, n))
        xa = np.add.reduceat(xa, starts) / counts
        ya = [np.add.reduceat(y, starts) / counts for y in ya]
    return (xa.tolist(), *(y.tolist() for y in ya))


# plotext's colour names as Rich writes them, for legends drawn outside the plot.
RICH_COLORS = {"gray": "bright_black"}


def legend(entries: Sequence[tuple[dict, str]], note: str = "") -> Text:
    """A chart's legend as one line of text above it, where it hides no data: each entry is
    (the plotext style the series is drawn with, its label); then an optional note."""
    text = Text(no_wrap=True, overflow="ellipsis")
    for i, (style, label) in enumerate(entries):
        if i:
            text.append("  ")
        color = RICH_COLORS.get(style.get("color", ""), style.get("color", ""))
        text.append(MARKER_SYMBOLS.get(style["marker"], style["marker"]), style=f"bold {color}")
        text.append(f" {label}")
    if note:
        text.append(("  " if entries else "") + note, style="dim")
    return text


# What plotext draws for its named markers (one cell of each).
MARKER_SYMBOLS = {"braille": "⢕", "hd": "▞", "dot": "•", "sd": "█"}


def envelope(x: Sequence[float], y: Sequence[float], buckets: int) -> tuple[list[float], list[float]]:
    """A noisy series thinned to `buckets` runs of consecutive points, each kept as its lowest
    and its highest value (a band as wide as the noise, where a mean would smooth it away).
    Non-finite points are left out; a series short enough is returned as it is."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    n = len(xa)
    if n <= 2 * buckets or buckets <= 0:
        return xa.tolist(), ya.tolist()
    starts = np.linspace(0, n, buckets + 1).astype(np.int64)[:-1]
    ends = np.append(starts[1:], n)
    lo, hi = np.minimum.reduceat(ya, starts), np.maximum.reduceat(ya, starts)
    # Both ends of a run at its first and last x: the band keeps the x range it covers.
    xs = np.column_stack([xa[starts], xa[ends - 1]]).ravel()
    ys = np.column_stack([lo, hi]).ravel()
    return xs.tolist(), ys.tolist()
