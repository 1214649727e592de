"""Event log: evaluations, checkpoints (with path), pauses, warnings and errors, in the order they came.

The words are `wvtui.eventtext`'s, the same the headless printer writes; the pane adds the
time (HH:MM:SS, local) in front of every line, and a dim "e<epoch> s<step>" position in front of
each event that has one. Epochs are shown as the events carry them (1-based).
"""

from __future__ import annotations

import time
from typing import Callable

from rich.text import Text
from textual.widgets import RichLog

from core.events import Event

from ..eventtext import describe

MAX_LINES = 5000
SCROLLBAR = 2  # Textual's vertical scrollbar, in cells


class EventLog(RichLog):
    def __init__(self, *, clock: Callable[[], float] = time.time, **kwargs) -> None:
        super().__init__(max_lines=MAX_LINES, wrap=True, markup=False, highlight=False, **kwargs)
        self._clock = clock
        self.plain: list[str] = []  # the text of every line written, for search and tests
        self._pending: list[tuple[str, Text]] = []

    def _stamp(self, when: float | None) -> str:
        return time.strftime("%H:%M:%S", time.localtime(self._clock() if when is None else when))

    def _write(self, stamp: str, text: Text) -> None:
        self.plain.append(f"{stamp} {text.plain}")
        del self.plain[:-MAX_LINES]
        # Written in one batch once the caller is done: a replayed history sends hundreds of
        # lines at once, and each write of its own costs a render and a layout update.
        self._pending.append((stamp, text))
        if len(self._pending) == 1 and self.is_attached:
            self.call_later(self.flush)

    def flush(self) -> None:
        """Write what `apply` and `note` gave since the last flush (it calls itself soon after)."""
        pending, self._pending = self._pending[-MAX_LINES:], []
        if not pending:
            return
        # Wrapped here, beside the time: a line that wraps stays clear of the time's column. A
        # log in a hidden tab has no width yet; the screen's is what it will get.
        width = self.scrollable_content_region.width or self.app.size.width - SCROLLBAR
        console = self.app.console
        out = Text()
        for n, (stamp, text) in enumerate(pending):
            indent = " " * (len(stamp) + 1)
            for i, line in enumerate(text.wrap(console, max(width - len(indent), 20))):
                out.append("\n" if n or i else "")
                out.append(f"{stamp} " if i == 0 else indent, style="dim")
                out.append_text(line)
        self.write(out)

    def on_mount(self) -> None:
        self.flush()

    def apply(self, event: Event, when: float | None = None) -> None:
        """when: the event's unix time (a replayed history record's); None: now."""
        lines = describe(event)
        if not lines:
            return
        step = getattr(event, "step", None)
        where = f"e{event.epoch} s{step} " if step is not None and hasattr(event, "epoch") else ""
        text = Text()
        for i, line in enumerate(lines):
            if i:
                text.append("\n" + " " * len(where))
            else:
                text.append(where, style="dim")
            text.append_tokens(line)
        self._write(self._stamp(when), text)

    def note(self, text: str, style: str = "italic", when: float | None = None) -> None:
        """A line from the console itself (key feedback, telemetry failures)."""
        self._write(self._stamp(when), Text(text, style=style))
