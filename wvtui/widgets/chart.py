"""A plotext chart that builds only when its data or size changed, and knows what a build costs."""

from __future__ import annotations

import time

from textual.app import RenderResult
from textual_plotext import PlotextPlot


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

    def render(self) -> RenderResult:
        key = (self._version, self.size, self.app.theme)
        if key != self._cached_key or self._cached is None:
            t0 = time.perf_counter()
            self._cached = super().render()
            self.build_seconds = time.perf_counter() - t0
            self._cached_key = key
        return self._cached
