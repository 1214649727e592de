"""The console's frame: which panes to redraw now, and when a chart may be rebuilt again."""

from __future__ import annotations

import time
from typing import Any, Sequence


class Frames:
    """panes: (pane, the tab it lives in or None for always shown, whether it holds charts).

    A pane has `dirty` and `redraw()`; one with charts also `chart_dirty`, `redraw_chart()` and
    `chart.build_seconds` (what its last chart build cost)."""

    def __init__(self, panes: Sequence[tuple[Any, str | None, bool]], chart_interval: float,
                 chart_budget: float | None) -> None:
        self.panes = panes
        self.chart_interval = chart_interval
        self.chart_budget = chart_budget
        self._drawn_at: dict[int, float] = {}

    def draw(self, active: str | None) -> None:
        # Panes in hidden tabs stay dirty and catch up on the first frame after they are shown,
        # so a long run spends nothing on charts nobody is looking at.
        now = time.monotonic()
        for pane, tab, charts in self.panes:
            if not (pane.is_attached and (tab is None or tab == active)):
                continue
            if pane.dirty:
                pane.redraw()
            if (charts and pane.chart_dirty
                    and now - self._drawn_at.get(id(pane), float("-inf")) >= self.chart_wait(pane)):
                self._drawn_at[id(pane)] = now
                pane.redraw_chart()

    def chart_wait(self, pane: Any) -> float:
        wait = self.chart_interval
        if self.chart_budget:
            wait = max(wait, pane.chart.build_seconds / self.chart_budget)
        return wait
