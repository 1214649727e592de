"""Training pane: the loss over steps (raw, smoothed and the validation loss at each evaluation,
on a linear or log scale), the throughput (img/s and data wait), the learning rate, epoch and
run progress."""

from __future__ import annotations

import math
from array import array

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar, Static

from core.events import EvalResult, Event, LearningRateSet, RunStarted, StepStats

from .chart import POINTS_PER_COLUMN, Chart, ChartGroup, envelope, int_ticks, legend, set_int_xticks, thin
from .status_line import DROP, Field, _text, fit
from ..eventtext import loss as fmt_loss

# A run reports at most two ticks a second: days of them fit in a few MB of arrays. Past this
# many the history is halved (every other point dropped); charts thin it to their width anyway.
MAX_POINTS = 200_000
# Distinct symbols, not colour only: the legend must read on a monochrome terminal too.
RAW = dict(marker="braille", color="gray")
SMOOTHED = dict(marker="hd", color="cyan")
VAL = dict(marker="◆", color="magenta")
SPEED = dict(marker="braille", color="green")
WAIT = dict(marker="hd", color="red")


def _where(keep, xs, ys) -> tuple[list, list]:
    """The (x, y) pairs whose y passes `keep`, as two lists."""
    pairs = [(x, y) for x, y in zip(xs, ys) if keep(y)]
    return [x for x, _ in pairs], [y for _, y in pairs]


class TrainingPane(Vertical):
    DEFAULT_CSS = """
    TrainingPane #training-charts { height: 1fr; min-height: 7; }
    TrainingPane #loss-box { width: 2fr; }
    TrainingPane #speed-box { width: 1fr; }
    TrainingPane .chart-legend { height: 1; padding: 0 1; }
    TrainingPane #speed-chart { height: 1fr; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # The history of ticks, one entry each (compact: a long run sends hundreds of thousands).
        self._steps = array("q")
        self.raw = array("d")
        self.smoothed = array("d")
        self.img_per_s = array("d")
        self.data_wait = array("d")
        self.val_steps: list[int] = []
        self.val_loss: list[float] = []
        self.last: StepStats | None = None
        self.lr: float | None = None  # the last tick's, or a newer one set by a command
        self.last_eval: EvalResult | None = None
        self.steps_per_epoch = 0
        self.total_steps = 0
        self.start_step = 0
        self.log_scale = False
        self.dirty = True  # text and progress bars: cheap, redrawn every frame
        self.chart_dirty = True  # the charts: redrawn within the app's CPU budget

    @property
    def steps(self) -> list[int]:
        """The step of every tick held (a copy)."""
        return list(self._steps)

    def compose(self) -> ComposeResult:
        # Held, not queried: the app's frame timer may still fire while the app tears down.
        self.loss_chart = Chart(id="loss-chart")
        self.speed_chart = Chart(id="speed-chart")
        self.chart = ChartGroup(self.loss_chart, self.speed_chart)
        self.lr_line = Static(id="lr-line")
        # The percentages are our own fixed-width labels: ProgressBar's own label asks for a
        # layout pass on every change, and a layout pass re-renders every widget on screen.
        self.epoch_bar = ProgressBar(id="epoch-progress", show_eta=False, show_percentage=False)
        self.run_bar = ProgressBar(id="run-progress", show_eta=False, show_percentage=False)
        self.epoch_pct = Static(classes="progress-pct")
        self.run_pct = Static(classes="progress-pct")
        self.loss_legend = Static(classes="chart-legend", id="loss-legend")
        self.speed_legend = Static(classes="chart-legend", id="speed-legend")
        with Horizontal(id="training-charts"):
            with Vertical(id="loss-box"):
                yield self.loss_legend
                yield self.loss_chart
            with Vertical(id="speed-box"):
                yield self.speed_legend
                yield self.speed_chart
        yield self.lr_line
        with Horizontal(classes="progress-row"):
            yield Label("epoch", classes="progress-label")
            yield self.epoch_bar
            yield self.epoch_pct
            yield Label("run", classes="progress-label")
            yield self.run_bar
            yield self.run_pct

    # -- events (cheap: a replayed history sends thousands; drawing waits for the frame) -----------

    def apply(self, event: Event, when: float | None = None) -> None:
        if isinstance(event, StepStats):
            if self._steps and event.step <= self._steps[-1]:
                # A tick seen twice (a replayed history meeting the live stream): the newest counts.
                self._forget_ticks_after(event.step - 1)
            self.last = event
            self.lr = event.lr
            self.steps_per_epoch = event.steps_per_epoch
            self.total_steps = event.total_steps
            self._steps.append(event.step)
            self.raw.append(event.last_loss)
            self.smoothed.append(event.loss)
            self.img_per_s.append(event.img_per_s)
            self.data_wait.append(event.data_wait)
            if len(self._steps) >= MAX_POINTS:
                for series in self._series():
                    del series[1::2]
        elif isinstance(event, EvalResult):
            self.last_eval = event
            self.val_steps.append(event.step)
            self.val_loss.append(event.loss)
        elif isinstance(event, LearningRateSet):
            self.lr = event.new
        elif isinstance(event, RunStarted):
            self.steps_per_epoch = event.steps_per_epoch
            self.total_steps = event.total_steps
            self.start_step = event.start_step
            self._forget_after(event.start_step)
        else:
            return
        self.dirty = self.chart_dirty = True

    def _series(self) -> tuple[array, ...]:
        return self._steps, self.raw, self.smoothed, self.img_per_s, self.data_wait

    def _forget_ticks_after(self, step: int) -> None:
        keep = len(self._steps)
        while keep and self._steps[keep - 1] > step:
            keep -= 1
        for series in self._series():
            del series[keep:]

    def _forget_after(self, step: int) -> None:
        """A resumed run goes back to its checkpoint's step: what came after it never happened."""
        self._forget_ticks_after(step)
        kept = [(s, v) for s, v in zip(self.val_steps, self.val_loss) if s <= step]
        self.val_steps, self.val_loss = [s for s, _ in kept], [v for _, v in kept]

    def toggle_log_scale(self) -> None:
        """The loss chart between a linear and a log scale; redrawn at once (a key asked for it)."""
        self.log_scale = not self.log_scale
        self.chart_dirty = True
        if self.is_attached and hasattr(self, "loss_chart"):
            self.redraw_chart()

    # -- drawing (on the app's frame timer only) ---------------------------------------------------

    def redraw_chart(self) -> None:
        self.chart_dirty = False
        self._draw_loss()
        self._draw_speed()

    def _draw_loss(self) -> None:
        chart = self.loss_chart
        plt = chart.blank("step")
        columns = chart.columns()
        # Non-finite losses are left out (the log reports them); a log axis has no 0 either.
        positive = (lambda v: v > 0) if self.log_scale else (lambda v: True)
        steps, smoothed = thin(self._steps, self.smoothed, points=POINTS_PER_COLUMN * columns)
        steps, smoothed = _where(positive, steps, smoothed)
        # The last step's loss is noisy: thinned, it keeps its spread (low and high of each run).
        raw_steps, raw = _where(positive, *envelope(self._steps, self.raw, buckets=columns))
        val_steps, val = _where(lambda v: math.isfinite(v) and positive(v), self.val_steps, self.val_loss)
        scale = ("log scale" if self.log_scale else "linear scale") + " (l)"  # the key that switches it
        self.loss_legend.update(legend([(RAW, "loss"), (SMOOTHED, "smoothed"), (VAL, "val loss")], scale),
                                layout=False)
        xs = raw_steps + steps + val_steps
        if not xs:
            plt.title("waiting for the first training step")
            chart.replot()
            return
        if raw_steps:
            plt.plot(raw_steps, raw, **RAW)
        if steps:
            plt.plot(steps, smoothed, **SMOOTHED)
        if val:
            plt.plot(val_steps, val, marker="braille", color=VAL["color"])
            plt.scatter(val_steps, val, **VAL)  # the evaluations, marked
        if self.log_scale:
            plt.yscale("log")
        set_int_xticks(plt, min(xs), max(xs), columns)
        chart.replot()

    def _draw_speed(self) -> None:
        chart = self.speed_chart
        plt = chart.blank("step")
        columns = chart.columns(60)
        steps, speed, wait = thin(self._steps, self.img_per_s, self.data_wait, points=POINTS_PER_COLUMN * columns)
        self.speed_legend.update(legend([(SPEED, "img/s"), (WAIT, "wait % (right)")]), layout=False)
        if not steps:
            chart.replot()
            return
        wait = [100.0 * w for w in wait]
        plt.plot(steps, speed, **SPEED)
        plt.plot(steps, wait, yside="right", **WAIT)
        rows = max(chart.size.height - 3, 2)
        for side, values, floor in (("left", speed, 1.0), ("right", wait, 10.0)):
            ticks = int_ticks(0, max(max(values), floor) * 1.05, max(rows // 2, 2))
            top = max(ticks[-1], max(values)) * 1.05
            plt.ylim(0, top, yside=side)
            plt.yticks(ticks, [f"{t:,}" for t in ticks], yside=side)
        set_int_xticks(plt, min(steps), max(steps), columns)
        chart.replot()

    def redraw(self) -> None:
        self.dirty = False
        s, ev = self.last, self.last_eval
        if s is None and ev is None:
            self.lr_line.update(Text("lr --   loss --", style="dim"), layout=False)
        else:
            fields = []
            if s is not None:
                fields += [
                    Field([_text(("lr ", "dim"), (f"{self.lr if self.lr is not None else s.lr:.5g}", "bold"))]),
                    Field([_text(("loss ", "dim"), (fmt_loss(s.last_loss), "bold"))]),
                    Field([_text(("smoothed ", "dim"), (fmt_loss(s.loss), "bold cyan")), DROP], (50,)),
                ]
            if ev is not None:
                fields.append(Field([_text(("val loss ", "dim"), (fmt_loss(ev.loss), "bold magenta")), DROP], (60,)))
            if s is not None:
                fields.append(Field([_text(("bad images ", "dim"),
                                           (f"{s.bad_images:,}", "bold red" if s.bad_images else "bold")), DROP],
                                    (70 if s.bad_images else 30,)))
            self.lr_line.update(fit(fields, self.lr_line.size.width or 78, sep="   "), layout=False)

        epoch_done = s.epoch_step if s is not None else 0
        run_done = s.step if s is not None else self.start_step
        epoch_total, run_total = max(self.steps_per_epoch, 1), max(self.total_steps, 1)
        self.epoch_bar.update(total=epoch_total, progress=epoch_done)
        self.run_bar.update(total=run_total, progress=run_done)
        self.epoch_pct.update(f"{100 * epoch_done / epoch_total:3.0f}%", layout=False)
        self.run_pct.update(f"{100 * run_done / run_total:3.0f}%", layout=False)

    def on_resize(self) -> None:
        self.dirty = self.chart_dirty = True
