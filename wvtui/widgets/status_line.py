"""The two-line status header: run state, progress, speed, ETA and the last key's feedback."""

from __future__ import annotations

import time
from typing import Callable

from rich.text import Text
from textual.widgets import Static

from core.events import CheckpointSaved, Event, RunFinished, RunStarted, RunState, StepStats

from ..eventtext import duration

STATE_STYLES = {
    RunState.STARTING: "bold cyan",
    RunState.RUNNING: "bold green",
    RunState.PAUSED: "bold yellow",
    RunState.EVALUATING: "bold magenta",
    RunState.CHECKPOINTING: "bold blue",
    RunState.STOPPING: "bold yellow",
    RunState.FINISHED: "bold",
    RunState.ERROR: "bold white on red",
}


class StatusLine(Static):
    """Everything a user wants at a glance, redrawn by the app's frame timer only."""

    def __init__(self, *, demo: bool = False, clock: Callable[[], float] = time.time, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.demo = demo
        self._clock = clock
        self.state = RunState.STARTING
        self.detail = ""  # e.g. the finish reason
        self.pending = ""  # feedback for the last key until the trainer confirms it
        self.model = "--"
        self.device = "--"
        self.epochs = 0
        self.epoch = 0
        self.step = 0
        self.total_steps = 0
        self.stats: StepStats | None = None
        self.last_checkpoint: str = "none"
        self.dirty = True

    def set_state(self, state: RunState, detail: str = "") -> None:
        self.state = state
        self.detail = detail
        self.dirty = True

    def set_pending(self, text: str) -> None:
        self.pending = text
        self.dirty = True

    def apply(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.model = event.model
            self.device = event.device
            self.epochs = int(event.config.get("epochs", 0))
            self.epoch = event.start_epoch
            self.step = event.start_step
            self.total_steps = event.total_steps
        elif isinstance(event, StepStats):
            self.stats = event
            self.epoch = event.epoch
            self.step = event.step
            self.total_steps = event.total_steps
        elif isinstance(event, CheckpointSaved):
            self.last_checkpoint = time.strftime("%H:%M:%S", time.localtime(self._clock()))
        elif isinstance(event, RunFinished):
            self.epoch = event.epoch
            self.step = event.step
        else:
            return
        self.dirty = True

    def redraw(self) -> None:
        self.dirty = False
        line1 = Text(no_wrap=True, overflow="ellipsis")
        if self.demo:
            line1.append(" DEMO ", style="bold black on yellow")
            line1.append(" ")
        state = self.state.value.upper() + (f" ({self.detail})" if self.detail else "")
        line1.append(f" {state} ", style=STATE_STYLES.get(self.state, "bold"))
        if self.pending:
            line1.append(f"  {self.pending}", style="italic yellow")
        line1.append(f"  │ {self.model} on {self.device}", style="dim" if self.model == "--" else "")
        line1.append(f"  │ last ckpt {self.last_checkpoint}")

        s = self.stats
        line2 = Text(no_wrap=True, overflow="ellipsis")
        epoch_shown = min(self.epoch + 1, self.epochs) if self.epochs else self.epoch + 1
        line2.append(f"epoch {epoch_shown}/{self.epochs or '?'}", style="bold")
        line2.append(f"  step {self.step:,}/{self.total_steps:,}")
        if s is not None:
            line2.append(f"  {s.img_per_s:,.0f} img/s")
            wait_style = "bold red" if s.data_wait > 0.2 else ""
            line2.append(f"  wait {s.data_wait * 100:.0f}%", style=wait_style)
            line2.append(f"  ETA ep {duration(s.eta_epoch_s)} run {duration(s.eta_run_s)}")
            line2.append(f"  elapsed {duration(s.elapsed_s)}")
        self.update(Text("\n").join([line1, line2]), layout=False)  # always two lines
