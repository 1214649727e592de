"""Event log: evaluations, checkpoints (with path), pauses, warnings and errors, in the order they came.

The words are `wvtui.eventtext`'s, the same the headless printer writes; the pane adds a dim
"e<epoch> s<step>" position in front of each event that has one.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from core.events import Event

from ..eventtext import describe

MAX_LINES = 5000


class EventLog(RichLog):
    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=MAX_LINES, wrap=True, markup=False, highlight=False, **kwargs)
        self.plain: list[str] = []  # the text of every line written, for search and tests

    def _write(self, text: Text) -> None:
        self.plain.append(text.plain)
        del self.plain[:-MAX_LINES]
        self.write(text)

    def apply(self, event: Event) -> None:
        lines = describe(event)
        if not lines:
            return
        step = getattr(event, "step", None)
        where = f"e{event.epoch + 1} s{step} " if step is not None and hasattr(event, "epoch") else ""
        text = Text()
        for i, line in enumerate(lines):
            if i:
                text.append("\n" + " " * len(where))
            elif where:
                text.append(where, style="dim")
            text.append_tokens(line)
        self._write(text)

    def note(self, text: str, style: str = "italic") -> None:
        """A line from the console itself (key feedback, telemetry failures)."""
        self._write(Text(text, style=style))
