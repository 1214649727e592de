"""Event log: evaluations, checkpoints (with path), warnings and errors, in the order they came."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from core.events import (CheckpointSaved, EpochEnd, EvalResult, Event, Paused, Resumed, RunError,
                         RunFinished, RunStarted, RunWarning)

from .format import duration, loss as fmt_loss


def describe(event: Event) -> Text | None:
    """One log line for an event worth keeping, or None for ticks and state changes."""
    if isinstance(event, RunStarted):
        text = Text.assemble(("start ", "bold green"),
                             f"{event.model} on {event.device}, {event.num_params:,} parameters, "
                             f"{event.steps_per_epoch:,} steps/epoch, run dir {event.out_dir}")
        if event.resumed_from:
            text.append(f", resumed from {event.resumed_from} at step {event.start_step:,}")
        return text
    if isinstance(event, EvalResult):
        kind = "manual eval" if event.manual else "eval"
        text = Text.assemble((f"[e{event.epoch + 1} s{event.step}] ", "dim"), (kind + " ", "bold magenta"),
                             f"loss {fmt_loss(event.loss)}  Acc@1 {event.acc1:.2f}  Acc@5 {event.acc5:.2f}  "
                             f"({event.images:,} images, {duration(event.seconds)})")
        if event.is_best:
            text.append("  new best", style="bold green")
        return text
    if isinstance(event, CheckpointSaved):
        return Text.assemble((f"[e{event.epoch + 1} s{event.step}] ", "dim"), ("checkpoint ", "bold blue"),
                             f"({event.reason}) {event.path}")
    if isinstance(event, EpochEnd):
        return Text.assemble((f"[e{event.epoch + 1} s{event.step}] ", "dim"), ("epoch done ", "bold"),
                             f"in {duration(event.seconds)}, {event.img_per_s:,.0f} img/s")
    if isinstance(event, Paused):
        return Text.assemble((f"[e{event.epoch + 1} s{event.step}] ", "dim"), ("paused", "bold yellow"))
    if isinstance(event, Resumed):
        return Text.assemble((f"[e{event.epoch + 1} s{event.step}] ", "dim"), ("resumed", "bold green"))
    if isinstance(event, RunWarning):
        text = Text.assemble((f"warning ({event.kind}) ", "bold yellow"), event.message)
        for path in event.paths[:5]:
            text.append(f"\n    {path}", style="dim")
        if len(event.paths) > 5:
            text.append(f"\n    … and {len(event.paths) - 5} more", style="dim")
        return text
    if isinstance(event, RunError):
        return Text.assemble((f"error ({event.kind}) ", "bold white on red"), " ", (event.message, "bold red"))
    if isinstance(event, RunFinished):
        return Text.assemble((f"[e{event.epoch + 1} s{event.step}] ", "dim"), ("run finished ", "bold"),
                             f"({event.reason}) best Acc@1 {event.best_acc1:.2f}  Acc@5 {event.best_acc5:.2f}  "
                             f"in {duration(event.seconds)}")
    return None


class EventLog(RichLog):
    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=5000, wrap=True, markup=False, highlight=False, **kwargs)
        self.plain: list[str] = []  # the text of every line written, for search and tests

    def _write(self, text: Text) -> None:
        self.plain.append(text.plain)
        del self.plain[:-5000]
        self.write(text)

    def apply(self, event: Event) -> None:
        line = describe(event)
        if line is not None:
            self._write(line)

    def note(self, text: str, style: str = "italic") -> None:
        """A line from the console itself (key feedback, telemetry failures)."""
        self._write(Text(text, style=style))
