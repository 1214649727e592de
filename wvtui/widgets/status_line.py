"""The two-line status header: run state, progress, speed, time, best Acc@1, lr, the last
checkpoint and the last key's feedback.

The header is live: the elapsed time and a pause's length tick on every frame from the last
report plus the wall time since, and it never cuts a number. What does not fit the terminal's
width is abbreviated or left out, least useful first (`fit`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from rich.text import Text
from textual.widgets import Static

from core.events import (CheckpointSaved, EvalResult, Event, LearningRateSet, RunFinished, RunStarted, RunState,
                         StateChanged, StepStats)

from ..eventtext import duration, is_pause, is_resume

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
ENDED = (RunState.FINISHED, RunState.ERROR)
DEFAULT_WIDTH = 78  # 80 columns less the padding, until the first layout says otherwise
KEEP = float("inf")  # a field that is never shortened


@dataclass(frozen=True)
class Field:
    """One item of a header line: its variants, longest first (an empty one drops it), and for
    each step down the priority at which it is taken (the lowest goes first)."""

    variants: Sequence[Text]
    priorities: Sequence[float] = ()


def fit(fields: Sequence[Field], width: int, sep: str = "  ") -> Text:
    """The fields joined by `sep`, shortened step by step, lowest priority first, until the line
    fits `width` cells. Fields are never cut mid-word; a line of unshortenable fields may overflow."""
    chosen = [0] * len(fields)

    def parts() -> list[Text]:
        return [f.variants[c] for f, c in zip(fields, chosen) if f.variants[c].cell_len]

    def cells(shown: list[Text]) -> int:
        return sum(p.cell_len for p in shown) + len(sep) * max(len(shown) - 1, 0)

    taken: list[tuple[float, int]] = []
    while cells(parts()) > width:
        steps = [(f.priorities[c], i) for i, (f, c) in enumerate(zip(fields, chosen)) if c < len(f.priorities)]
        if not steps:
            break
        taken.append(min(steps))
        chosen[taken[-1][1]] += 1
    # A later, bigger step may have made room: give back what still fits, most important first.
    for _, i in sorted(taken, reverse=True):
        chosen[i] -= 1
        if cells(parts()) > width:
            chosen[i] += 1
    return Text(sep, no_wrap=True).join(parts())


def _text(*segments: tuple[str, str]) -> Text:
    text = Text(no_wrap=True)
    for chunk, style in segments:
        text.append(chunk, style=style)
    return text


DROP = Text("")


class StatusLine(Static):
    """Everything a user wants at a glance, redrawn by the app's frame timer only.

    `apply(event, when)` takes the trainer's events; `when` is the event's unix time (a
    replayed history record's), else the clock's now. The app sets the run state with
    `set_state` and the last key's feedback with `set_pending`."""

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
        self.epoch = 0  # 1-based: the epoch in progress (or the last one, once ended)
        self.step = 0
        self.total_steps = 0
        self.stats: StepStats | None = None
        self.lr: float | None = None
        self.best_acc1: float | None = None
        self.resumed: tuple[int, int] | None = None  # (epochs completed, step) a resumed run started at
        self.last_checkpoint: str = "none"  # HH:MM:SS of the last save
        self.last_checkpoint_at: tuple[int, int] | None = None  # its (epoch, step)
        self.finished: RunFinished | None = None
        # Where elapsed time is counted from: (elapsed seconds, the unix time they were true at).
        self._elapsed_base: tuple[float, float] | None = None
        self._ended_at: float | None = None
        self.paused_since: float | None = None  # when the pause shown began (the step is `step`)
        self._dirty = True
        self._drawn_ticks: tuple = ()

    # -- state -----------------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """Whether a redraw would change the header: new data, or a shown clock moved on a second."""
        return self._dirty or self._ticks() != self._drawn_ticks

    @dirty.setter
    def dirty(self, value: bool) -> None:
        self._dirty = value

    def set_state(self, state: RunState, detail: str = "") -> None:
        now = self._clock()
        if state is RunState.PAUSED and self.paused_since is None:
            self.paused_since = now  # no pause event seen (e.g. a replay that began paused)
        elif state in (RunState.RUNNING, RunState.STOPPING) or state in ENDED:
            self.paused_since = None
        if state in ENDED and self._ended_at is None:
            self._ended_at = now
        self.state = state
        self.detail = detail
        self._dirty = True

    def set_pending(self, text: str) -> None:
        self.pending = text
        self._dirty = True

    def apply(self, event: Event, when: float | None = None) -> None:
        now = self._clock() if when is None else when
        if isinstance(event, RunStarted):
            self.model = event.model
            self.device = event.device
            self.epochs = int(event.config.get("epochs", 0))
            # start_epoch counts completed epochs: the one about to run is the next.
            self.epoch = min(event.start_epoch + 1, self.epochs) if self.epochs else event.start_epoch + 1
            self.step = event.start_step
            self.total_steps = event.total_steps
            self.resumed = (event.start_epoch, event.start_step) if event.resumed_from else None
            self._elapsed_base = (event.elapsed_s, now)  # earlier segments of a resumed run
            self._ended_at = None
            self.finished = None
        elif isinstance(event, StepStats):
            self.stats = event
            self.epoch = event.epoch
            self.step = event.step
            self.total_steps = event.total_steps
            self.lr = event.lr
            self._elapsed_base = (event.elapsed_s, now)
        elif isinstance(event, StateChanged):
            self.step = event.step
            if is_pause(event):
                self.paused_since = now
            elif is_resume(event):
                self.paused_since = None
        elif isinstance(event, CheckpointSaved):
            self.last_checkpoint = time.strftime("%H:%M:%S", time.localtime(now))
            self.last_checkpoint_at = (event.epoch, event.step)
        elif isinstance(event, EvalResult):
            self.best_acc1 = event.best_acc1
        elif isinstance(event, RunFinished):
            self.epoch = event.epoch
            self.step = event.step
            self.finished = event
            self.best_acc1 = event.best_acc1 if math.isfinite(event.best_acc1) else self.best_acc1
            self._ended_at = now
            self.paused_since = None
        elif isinstance(event, LearningRateSet):
            self.lr = event.new  # applies from this step on: no need to wait for the next report
        else:
            return
        self._dirty = True

    # -- time --------------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.finished is not None or self.state in ENDED

    def elapsed(self) -> float | None:
        """The run's elapsed seconds (earlier segments of a resumed run included), ticking while it lives."""
        if self._elapsed_base is None:
            return None
        seconds, at = self._elapsed_base
        until = self._ended_at if self.ended and self._ended_at is not None else self._clock()
        return seconds + max(until - at, 0.0)

    def paused_for(self) -> float | None:
        if self.state is not RunState.PAUSED or self.paused_since is None:
            return None
        return max(self._clock() - self.paused_since, 0.0)

    def _ticks(self) -> tuple:
        # The whole seconds shown: when one moves on, the header is redrawn.
        elapsed, paused = self.elapsed(), self.paused_for()
        return (None if elapsed is None else int(elapsed), None if paused is None else int(paused))

    def on_resize(self) -> None:
        self._dirty = True

    # -- drawing -----------------------------------------------------------------------------------

    def redraw(self) -> None:
        self._dirty = False
        self._drawn_ticks = self._ticks()
        width = self.size.width or DEFAULT_WIDTH
        line1, line2 = fit(self._line1(), width), fit(self._line2(), width)
        self.update(Text("\n").join([line1, line2]), layout=False)  # always two lines

    def _line1(self) -> list[Field]:
        state = self.state.value.upper() + (f" ({self.detail})" if self.detail else "")
        badge = _text((" DEMO ", "bold black on yellow"), (" ", "")) if self.demo else Text()
        badge.append(f" {state} ", style=STATE_STYLES.get(self.state, "bold"))
        fields = [Field([badge])]
        if self.pending:
            fields.append(Field([_text((self.pending, "italic yellow"))]))
        best = "--" if self.best_acc1 is None else f"{self.best_acc1:.2f}"
        fields.append(Field([_text(("best Acc@1 ", "dim"), (best, "bold green")),
                             _text(("best ", "dim"), (best, "bold green")), DROP], (40, 80)))
        lr = "--" if self.lr is None else f"{self.lr:.4g}"
        fields.append(Field([_text(("lr ", "dim"), (lr, "bold")), DROP], (70,)))
        if self.last_checkpoint_at is None:
            fields.append(Field([_text(("last ckpt ", "dim"), ("none", "")), _text(("ckpt ", "dim"), ("none", "")),
                                 DROP], (20, 30)))
        else:
            e, s = self.last_checkpoint_at
            fields.append(Field([_text(("last ckpt ", "dim"), (self.last_checkpoint, ""), (f" e{e} s{s:,}", "dim")),
                                 _text(("ckpt ", "dim"), (self.last_checkpoint, "")), DROP], (20, 50)))
        if self.resumed is not None:
            e, s = self.resumed
            fields.append(Field([_text((f"resumed from epoch {e} step {s:,}", "green")),
                                 _text((f"resumed e{e} s{s:,}", "green")), DROP], (25, 45)))
        if self.model != "--":
            fields.append(Field([_text((f"{self.model} on {self.device}", "")), _text((self.model, "")), DROP],
                                (10, 15)))
        return fields

    def _line2(self) -> list[Field]:
        epoch, epochs = self.epoch or "--", self.epochs or "?"  # nothing known before RunStarted
        fields = [
            Field([_text((f"epoch {epoch}/{epochs}", "bold")), _text((f"ep {epoch}/{epochs}", "bold"))], (35,)),
            Field([_text(("step ", ""), (f"{self.step:,}/{self.total_steps:,}", ""))]),
        ]
        paused = self.paused_for()
        s = self.stats
        if self.ended:
            reason = self.finished.reason if self.finished is not None else self.detail or self.state.value
            fields.append(Field([_text(("done" if reason == "completed" else reason, "bold"))]))
        elif paused is not None:
            fields.append(Field([_text((f"paused {duration(paused)}", "bold yellow"))]))
        elif s is not None:
            fields.append(Field([_text((f"{s.img_per_s:,.0f} img/s", "")), DROP], (40,)))
            starved = s.data_wait > 0.2  # the input pipeline is the bottleneck: worth the room
            fields.append(Field([_text((f"wait {s.data_wait * 100:.0f}%", "bold red" if starved else "")),
                                 DROP], (65 if starved else 30,)))
            eta_epoch, eta_run = duration(s.eta_epoch_s), duration(s.eta_run_s)
            fields.append(Field([_text(("ETA ", "dim"), (f"ep {eta_epoch} run {eta_run}", "")),
                                 _text(("ETA ", "dim"), (eta_run, "")), DROP], (20, 50)))
        elapsed = self.elapsed()
        if elapsed is not None:
            fields.append(Field([_text(("elapsed ", "dim"), (duration(elapsed), "")), DROP], (60,)))
        return fields
