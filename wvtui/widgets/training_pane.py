"""Training pane: the loss over steps (raw and smoothed), the learning rate, epoch and run progress."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar, Static

from core.events import Event, RunStarted, StepStats

from .chart import Chart
from ..eventtext import loss as fmt_loss

# Days-long runs report tens of thousands of ticks; the chart only has ~200 columns, so the
# history is halved (every other point dropped) whenever it reaches this size.
MAX_POINTS = 4000


class TrainingPane(Vertical):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.steps: list[int] = []
        self.raw: list[float] = []
        self.smoothed: list[float] = []
        self.last: StepStats | None = None
        self.steps_per_epoch = 0
        self.total_steps = 0
        self.start_step = 0
        self.dirty = True  # text and progress bars: cheap, redrawn every frame
        self.chart_dirty = True  # the chart: redrawn within the app's CPU budget

    def compose(self) -> ComposeResult:
        # Held, not queried: the app's frame timer may still fire while the app tears down.
        self.chart = Chart(id="loss-chart")
        self.lr_line = Static(id="lr-line")
        # The percentages are our own fixed-width labels: ProgressBar's own label asks for a
        # layout pass on every change, and a layout pass re-renders every widget on screen.
        self.epoch_bar = ProgressBar(id="epoch-progress", show_eta=False, show_percentage=False)
        self.run_bar = ProgressBar(id="run-progress", show_eta=False, show_percentage=False)
        self.epoch_pct = Static(classes="progress-pct")
        self.run_pct = Static(classes="progress-pct")
        yield self.chart
        yield self.lr_line
        with Horizontal(classes="progress-row"):
            yield Label("epoch", classes="progress-label")
            yield self.epoch_bar
            yield self.epoch_pct
            yield Label("run", classes="progress-label")
            yield self.run_bar
            yield self.run_pct

    def apply(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.steps_per_epoch = event.steps_per_epoch
            self.total_steps = event.total_steps
            self.start_step = event.start_step
        elif isinstance(event, StepStats):
            self.last = event
            self.steps_per_epoch = event.steps_per_epoch
            self.total_steps = event.total_steps
            self.steps.append(event.step)
            self.raw.append(event.last_loss)
            self.smoothed.append(event.loss)
            if len(self.steps) >= MAX_POINTS:
                del self.steps[1::2], self.raw[1::2], self.smoothed[1::2]
        else:
            return
        self.dirty = self.chart_dirty = True

    def redraw_chart(self) -> None:
        self.chart_dirty = False
        plot = self.chart
        plt = plot.blank("step", "loss")
        # Non-finite losses would wreck the axis range; they are reported in the log instead.
        pts = [(s, r, m) for s, r, m in zip(self.steps, self.raw, self.smoothed) if r == r and m == m
               and abs(r) != float("inf") and abs(m) != float("inf")]
        if pts:
            xs = [p[0] for p in pts]
            plt.plot(xs, [p[1] for p in pts], label="raw", marker="braille", color="gray")
            plt.plot(xs, [p[2] for p in pts], label="smoothed", marker="braille", color="cyan")
        else:
            plt.title("waiting for the first training step")
        plot.replot()

    def redraw(self) -> None:
        self.dirty = False
        s = self.last
        line = Text(no_wrap=True, overflow="ellipsis")
        if s is None:
            line.append("lr --   loss --", style="dim")
        else:
            line.append("lr ", style="dim")
            line.append(f"{s.lr:.5g}", style="bold")
            line.append("   loss ", style="dim")
            line.append(fmt_loss(s.last_loss), style="bold")
            line.append("   smoothed ", style="dim")
            line.append(fmt_loss(s.loss), style="bold cyan")
            line.append("   bad images ", style="dim")
            line.append(f"{s.bad_images:,}", style="bold red" if s.bad_images else "bold")
        self.lr_line.update(line, layout=False)

        epoch_done = s.epoch_step if s is not None else 0
        run_done = s.step if s is not None else self.start_step
        epoch_total, run_total = max(self.steps_per_epoch, 1), max(self.total_steps, 1)
        self.epoch_bar.update(total=epoch_total, progress=epoch_done)
        self.run_bar.update(total=run_total, progress=run_done)
        self.epoch_pct.update(f"{100 * epoch_done / epoch_total:3.0f}%", layout=False)
        self.run_pct.update(f"{100 * run_done / run_total:3.0f}%", layout=False)
