"""The training and accuracy panes' charts, the event log and the noise pane's epochs, under
`App.run_test`, fed events as the trainer (or a replayed history) sends them.

Epochs are 1-based in every event ("the epoch the event belongs to"); the panes show them as
they come. The panes are hosted alone (`Host`): the whole console takes over a second to start.
"""

from __future__ import annotations

import math
import time

import plotext
from rich.text import Text
from textual.app import App, ComposeResult

from core.events import CheckpointSaved, EvalResult, NoiseEstimate, RunStarted, RunState, StateChanged, StepStats
from wvtui.frames import Frames
from wvtui.widgets.accuracy_pane import AccuracyPane
from wvtui.widgets.chart import envelope, int_ticks, thin
from wvtui.widgets.event_log import EventLog
from wvtui.widgets.noise_charts import draw_clean_fraction
from wvtui.widgets.noise_pane import summary_text
from wvtui.widgets.status_line import StatusLine
from wvtui.widgets.training_pane import TrainingPane
from helpers import asyncio_test, pilot_until as until

T0 = 1_780_000_000.0
STEPS_PER_EPOCH = 625


class Host(App):
    """Panes stacked in one screen, drawn by the console's own frame logic (`Frames`)."""

    def __init__(self, *panes) -> None:
        super().__init__()
        self.panes = panes

    def compose(self) -> ComposeResult:
        yield from self.panes

    def on_mount(self) -> None:
        drawable = [(p, None, hasattr(p, "redraw_chart")) for p in self.panes if hasattr(p, "redraw")]
        self.frames = Frames(drawable, chart_interval=0.0, chart_budget=None)
        self.set_interval(0.02, lambda: self.frames.draw(None))


def drawn(*panes) -> bool:
    return not any(p.dirty or getattr(p, "chart_dirty", False) for p in panes)


def started(start_epoch: int = 0, start_step: int = 0) -> RunStarted:
    return RunStarted(config={"epochs": 80}, summary={}, device="cpu", model="resnet18", num_params=1,
                      steps_per_epoch=STEPS_PER_EPOCH, total_steps=80 * STEPS_PER_EPOCH, start_epoch=start_epoch,
                      start_step=start_step, out_dir="runs/x",
                      resumed_from="runs/x/checkpoints/last.pt" if start_step else None)


def tick(step: int, loss: float | None = None, img_per_s: float = 500.0, data_wait: float = 0.05) -> StepStats:
    loss = 2.0 / math.sqrt(step) if loss is None else loss
    return StepStats(epoch=(step - 1) // STEPS_PER_EPOCH + 1, step=step, epoch_step=(step - 1) % STEPS_PER_EPOCH + 1,
                     steps_per_epoch=STEPS_PER_EPOCH, total_steps=80 * STEPS_PER_EPOCH, loss=loss,
                     last_loss=loss + 0.05, lr=0.1, img_per_s=img_per_s, data_wait=data_wait, eta_epoch_s=1.0,
                     eta_run_s=1.0, elapsed_s=step * 0.5, bad_images=0)


def evaluated(epoch: int, loss: float = 1.0, acc1: float = 50.0, manual: bool = False,
              step: int | None = None) -> EvalResult:
    return EvalResult(epoch=epoch, step=epoch * STEPS_PER_EPOCH if step is None else step, loss=loss, acc1=acc1,
                      acc5=80.0, best_acc1=acc1, best_acc5=80.0, manual=manual, is_best=True, seconds=1.0,
                      images=10)


def tick_labels(chart) -> list[str]:
    """The x tick labels: the line under the axis of the chart as last built."""
    lines = chart.render().plain.split("\n")
    axis = next(i for i, line in enumerate(lines) if "└" in line)
    return lines[axis + 1].split()


# -- a replayed history ------------------------------------------------------------------------------


@asyncio_test
async def test_replaying_5000_ticks_and_80_evaluations_draws_once_and_the_charts_hold_every_point():
    # What an attached console replays on mount: a long run's history, every record through
    # each pane's apply(), then one frame draws it all.
    history = [started()]
    for step in range(10, 50_001, 10):
        history.append(tick(step))
        if step // STEPS_PER_EPOCH > (step - 10) // STEPS_PER_EPOCH:  # the tick that ended an epoch
            history.append(evaluated(step // STEPS_PER_EPOCH, loss=1.0 + 1.0 / step))
    assert sum(isinstance(e, EvalResult) for e in history) == 80
    status, training, accuracy, log = StatusLine(), TrainingPane(), AccuracyPane(), EventLog()
    # The accuracy pane takes the records too but is not shown: drawing a table of 80 rows is
    # Textual's DataTable at work (0.2-0.4 s), not the replay's.
    app = Host(status, training, log)
    async with app.run_test(size=(100, 40)) as pilot:
        await until(pilot, lambda: drawn(training), "the empty panes drawn")
        versions = training.loss_chart._version, training.speed_chart._version
        t0 = time.perf_counter()
        for i, record in enumerate(history):
            when = T0 + i
            for pane in (status, training, accuracy, log):
                pane.apply(record, when)
        seconds = time.perf_counter() - t0
        print(f"\nreplay of {len(history)} records through 4 panes: {seconds * 1000:.0f} ms")
        assert (training.loss_chart._version, training.speed_chart._version) == versions, \
            "a chart was built per event"

        assert len(training.steps) == 5000 and training.steps[-1] == 50_000
        assert len(training.val_loss) == 80 and len(accuracy.evals) == 80
        await until(pilot, lambda: drawn(training, status) and not log._pending, "one frame to draw the replay")
        assert sum("Acc@1" in line for line in log.plain) == 80 and len(log.lines) >= 80
        loss_plot = training.loss_chart.render().plain
        assert loss_plot.count("◆") >= 10, "the evaluations are not marked on the loss chart"
        labels = tick_labels(training.loss_chart)
        assert all(label.isdigit() or label.endswith("k") for label in labels) and labels[-1] == "50k", labels
        assert "50,000" in str(status.render())


def test_a_long_history_is_thinned_to_the_charts_columns_not_cut():
    steps = list(range(1, 100_001))
    xs, ys = thin(steps, [float(s) for s in steps], points=200)
    assert len(xs) == 200 and xs[0] < 300 and xs[-1] > 99_700  # the whole run, start to end
    xs, ys = thin([1, 2, 3], [1.0, float("nan"), float("inf")], points=200)
    assert xs == [1.0] and ys == [1.0]  # non-finite losses are the log's business, not the axis's
    # The noisy per-step loss keeps its spread: each run of points as its low and its high.
    noisy = [1.0 + (0.5 if s % 2 else -0.5) for s in steps]
    xs, ys = envelope(steps, noisy, buckets=100)
    assert len(xs) == 200 and min(ys) == 0.5 and max(ys) == 1.5 and xs[-1] == 100_000


# -- the training pane -------------------------------------------------------------------------------


@asyncio_test
async def test_the_loss_chart_marks_evaluations_beside_the_training_loss_with_a_log_scale_and_throughput():
    training = TrainingPane()
    app = Host(training)
    async with app.run_test(size=(120, 30)) as pilot:
        training.apply(started())
        for step in range(1, 8):  # a short range, where plotext would tick 1.0, 2.5, 4.0, ...
            training.apply(tick(step, loss=0.0 if step == 7 else None))
        training.apply(evaluated(1, loss=0.9, step=4))
        await until(pilot, lambda: drawn(training), "the charts drawn")
        legend = str(training.loss_legend.render())
        assert "loss" in legend and "smoothed" in legend and "val loss" in legend and "linear scale" in legend
        assert len({legend[legend.index(name) - 2] for name in ("loss", "smoothed", "val loss")}) == 3, \
            "legend entries share a symbol"
        labels = tick_labels(training.loss_chart)
        assert labels and all(label.isdigit() for label in labels), labels
        assert "◆" in training.loss_chart.render().plain
        assert "val loss 0.9000" in str(training.lr_line.render())

        # A key press redraws at once, whatever the frame budget; a zero loss has no place on a
        # log axis and is left out rather than breaking it.
        version = training.loss_chart._version
        training.toggle_log_scale()
        assert training.loss_chart._version == version + 1 and "log scale" in str(training.loss_legend.render())
        assert "◆" in training.loss_chart.render().plain
        training.toggle_log_scale()
        assert "linear scale" in str(training.loss_legend.render())

        # Beside it, the history of the throughput: img/s on the left axis, data wait on the right.
        for step in range(8, 200):
            training.apply(tick(step, img_per_s=400.0 + 5 * step, data_wait=0.3 if step > 100 else 0.02))
        await until(pilot, lambda: drawn(training), "the charts drawn again")
        legend = str(training.speed_legend.render())
        assert "img/s" in legend and "wait %" in legend
        plot = training.speed_chart.render().plain
        left = [line.split("┤")[0].strip() for line in plot.split("\n") if "┤" in line]
        right = [line.rsplit("├", 1)[1].strip() for line in plot.split("\n") if "├" in line]
        assert max(int(v.replace(",", "")) for v in left if v) >= 1000, left
        assert right and all(v.isdigit() for v in right) and max(int(v) for v in right) >= 30, right

def test_a_resumed_run_drops_the_points_after_its_checkpoint():
    # A run that died at step 80 and resumed from its step-50 checkpoint trains steps 51..80
    # again: the chart shows them once.
    training = TrainingPane()
    for step in range(10, 81, 10):
        training.apply(tick(step))
    training.apply(evaluated(1, step=40))
    training.apply(evaluated(1, step=70, manual=True))
    training.apply(started(start_epoch=0, start_step=50))
    assert training.steps == [10, 20, 30, 40, 50] and training.val_steps == [40]
    assert len(training.raw) == len(training.img_per_s) == len(training.data_wait) == 5
    training.apply(tick(60))
    assert training.steps[-1] == 60
    # A replayed history that overlaps the live stream: a tick seen twice is held once.
    training.apply(tick(50))
    training.apply(tick(60))
    assert training.steps == [10, 20, 30, 40, 50, 60]


# -- the accuracy pane -------------------------------------------------------------------------------


@asyncio_test
async def test_the_accuracy_pane_says_val_loss_and_shows_epochs_as_the_events_carry_them():
    accuracy = AccuracyPane()
    app = Host(accuracy)
    async with app.run_test(size=(100, 30)) as pilot:
        accuracy.apply(started())
        for epoch in (1, 2, 3):
            accuracy.apply(evaluated(epoch, acc1=20.0 * epoch))
        accuracy.apply(evaluated(3, acc1=55.0, manual=True, step=3 * STEPS_PER_EPOCH + 100))
        await until(pilot, lambda: drawn(accuracy), "the pane drawn")
        table = accuracy.table
        assert [str(c.label) for c in table.columns.values()][:3] == ["epoch", "step", "val loss"]
        assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == ["1", "2", "3", "3"]
        labels = tick_labels(accuracy.chart)
        assert labels == [str(i) for i in range(int(labels[0]), int(labels[-1]) + 1)] and labels[-1] == "4"
        legend = str(accuracy.legend.render())
        assert "Acc@1" in legend and "Acc@5" in legend


# -- the event log -----------------------------------------------------------------------------------


@asyncio_test
async def test_every_log_line_has_its_time_and_the_epoch_as_the_event_carries_it():
    log = EventLog(clock=lambda: T0 + 60)
    app = Host(log)
    async with app.run_test(size=(100, 20)) as pilot:
        log.apply(CheckpointSaved(path="runs/x/checkpoints/last.pt", reason="epoch", epoch=1, step=625, seconds=0.2),
                  when=T0)
        log.apply(StateChanged(state=RunState.PAUSED, epoch=2, step=700, previous=RunState.RUNNING))
        log.apply(StepStats(**{**tick(10).__dict__}))  # a tick is no log line
        log.note("telemetry sample failed")
        then, now = (time.strftime("%H:%M:%S", time.localtime(t)) for t in (T0, T0 + 60))
        # (The words after the position are eventtext's, shared with the headless printer.)
        assert log.plain[0].startswith(f"{then} e1 s625 ") and "runs/x/checkpoints/last.pt" in log.plain[0]
        assert log.plain[1].startswith(f"{now} e2 s700 ") and "aused" in log.plain[1]
        assert log.plain[2] == f"{now} telemetry sample failed"
        assert len(log.plain) == 3

        # A line too long for the pane wraps clear of the time's column.
        log.apply(CheckpointSaved(path="runs/" + "very-long-directory-name/" * 6 + "last.pt", reason="manual",
                                  epoch=2, step=700, seconds=0.2), when=T0)
        await until(pilot, lambda: not log._pending and len(log.lines) >= 5, "the long line written")
        shown = [strip.text.rstrip() for strip in log.lines]
        assert shown[3].startswith(f"{then} e2 s700 ") and shown[4].startswith(" " * 9) and shown[4].strip()


# -- the noise pane ----------------------------------------------------------------------------------


def test_the_noise_pane_shows_epochs_as_the_events_carry_them():
    estimates = [NoiseEstimate(epoch=e, step=e * 20, samples=64, clean_fraction=0.5 + e / 10, means=(0.2, 0.7),
                               variances=(0.01, 0.02), weights=(0.6, 0.4), path="x.npz") for e in (1, 2, 3)]
    assert summary_text(estimates[-1]).plain.startswith("epoch 3: clean 80.0%")
    plotext.clear_figure()
    plotext.plotsize(40, 12)
    draw_clean_fraction(plotext, estimates)
    ticks = Text.from_ansi(plotext.build()).plain.split("└")[-1].split("\n")[1].split()
    assert ticks == ["1", "2", "3"]


def test_int_ticks_are_whole_numbers_one_two_or_five_apart():
    assert int_ticks(1, 7, 8) == [1, 2, 3, 4, 5, 6, 7]
    assert int_ticks(0, 123_456, 8) == [0, 20_000, 40_000, 60_000, 80_000, 100_000, 120_000]
    assert int_ticks(2, 50, 6) == [10, 20, 30, 40, 50]
    assert int_ticks(0.2, 0.8, 5) == [0]
