"""The console's two-line header (StatusLine) under `App.run_test`, fed events the way the
trainer sends them, with a clock the test moves: live elapsed and pause times, "done" at the
end, best Acc@1 and lr, a resumed run's origin and last checkpoint, and an 80-column terminal
that shortens the header without ever cutting a number.

The fast tests host the header alone (`Console`: wired as TrainingApp wires it, at a fraction
of its start-up time); the slow one runs the whole TrainingApp."""

from __future__ import annotations

import time

import pytest
from rich.text import Text
from textual.app import App, ComposeResult

from core.events import (CheckpointSaved, EvalResult, LearningRateSet, RunFinished, RunStarted, RunState, StateChanged,
                         StepStats)
from core.telemetry import HostSnapshot, Telemetry
from wvtui.app import TrainingApp
from wvtui.frames import Frames
from wvtui.messages import TrainerEvent
from wvtui.widgets.status_line import Field, StatusLine, fit
from helpers import asyncio_test, pilot_until as until

FIXED_TELEMETRY = Telemetry(time=0.0, gpus=(), gpu_unavailable_reason="no NVIDIA GPU found",
                            host=HostSnapshot(None, None, None, None, None, None, None))
T0 = 1_780_000_000.0  # a fixed unix time


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Console(App):
    """The header as TrainingApp wires it: every event to `apply`, the run state from the
    trainer's state events, drawing on a frame timer only (`Frames`). `post_message(TrainerEvent)`
    feeds it as the trainer's relay does."""

    CSS = "#status { height: 2; padding: 0 1; }"  # as app.tcss lays it out

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def compose(self) -> ComposeResult:
        self.status = StatusLine(clock=self.clock, id="status")
        yield self.status

    def on_mount(self) -> None:
        frames = Frames([(self.status, None, False)], chart_interval=0.0, chart_budget=None)
        self.set_interval(0.02, lambda: frames.draw(None))

    def on_trainer_event(self, message: TrainerEvent) -> None:
        event = message.event
        self.status.apply(event)
        if isinstance(event, StateChanged):
            self.status.set_state(event.state)
        elif isinstance(event, RunFinished):
            self.status.set_state(RunState.FINISHED, event.reason)


def header(app: App) -> list[str]:
    return (str(app.status.render()).split("\n") + ["", ""])[:2]  # two lines once drawn


def started(**kw) -> RunStarted:
    fields = dict(config={"epochs": 90}, summary={}, device="cuda:0 (NVIDIA H200)", model="resnet50",
                  num_params=25_000_000, steps_per_epoch=1000, total_steps=90_000, start_epoch=0, start_step=0,
                  out_dir="runs/x")
    return RunStarted(**{**fields, **kw})


def tick(step: int, elapsed: float, epoch: int = 1, **kw) -> StepStats:
    fields = dict(epoch=epoch, step=step, epoch_step=step % 1000, steps_per_epoch=1000, total_steps=90_000,
                  loss=1.5, last_loss=1.4, lr=0.05, img_per_s=2345.0, data_wait=0.03, eta_epoch_s=60.0,
                  eta_run_s=7200.0, elapsed_s=elapsed, bad_images=0)
    return StepStats(**{**fields, **kw})


def evaluated(epoch: int, step: int, acc1: float, best: float) -> EvalResult:
    return EvalResult(epoch=epoch, step=step, loss=1.2, acc1=acc1, acc5=90.0, best_acc1=best, best_acc5=90.0,
                      manual=False, is_best=acc1 >= best, seconds=3.0, images=100)


def make_app(clock: Clock) -> App:
    return Console(clock)


@asyncio_test
async def test_elapsed_ticks_a_pause_shows_its_step_and_length_and_the_end_says_done():
    clock = Clock()
    app = make_app(clock)
    async with app.run_test(size=(120, 24)) as pilot:
        # A resumed run: 2 epochs done in earlier segments that took 1000 s.
        for ev in (started(resumed_from="runs/x/checkpoints/last.pt", start_epoch=2, start_step=2000,
                           elapsed_s=1000.0),
                   StateChanged(state=RunState.RUNNING, epoch=3, step=2000, previous=RunState.STARTING),
                   tick(2010, 1010.0, epoch=3),
                   evaluated(2, 2000, acc1=41.5, best=43.25)):
            app.post_message(TrainerEvent(ev))
        await until(pilot, lambda: "img/s" in header(app)[1], "the first tick in the header")
        line1, line2 = header(app)
        assert "resumed from epoch 2 step 2,000" in line1
        assert "best Acc@1 43.25" in line1 and "lr 0.05" in line1
        assert "epoch 3/90" in line2 and "step 2,010/90,000" in line2 and "elapsed 16:50" in line2

        # No event for 7 s: the elapsed time still moves on, frame by frame.
        clock.now += 7
        await until(pilot, lambda: "elapsed 16:57" in header(app)[1], "elapsed to tick")

        app.post_message(TrainerEvent(StateChanged(state=RunState.PAUSED, epoch=3, step=2013,
                                                   previous=RunState.RUNNING)))
        await until(pilot, lambda: "paused 0:00" in header(app)[1], "the pause in the header")
        clock.now += 12
        await until(pilot, lambda: "paused 0:12" in header(app)[1], "the pause time to tick")
        line1, line2 = header(app)
        assert "PAUSED" in line1 and "step 2,013/90,000" in line2, "not the step the run paused at"
        assert "img/s" not in line2 and "ETA" not in line2, "stale speed shown while paused"
        assert "elapsed 17:09" in line2

        # A checkpoint taken while paused is no new pause: the time keeps counting from the first.
        for state, previous in [(RunState.CHECKPOINTING, RunState.PAUSED), (RunState.PAUSED, RunState.CHECKPOINTING)]:
            app.post_message(TrainerEvent(StateChanged(state=state, epoch=3, step=2013, previous=previous)))
        app.post_message(TrainerEvent(CheckpointSaved(path="runs/x/checkpoints/last.pt", reason="manual",
                                                      epoch=3, step=2013, seconds=0.5)))
        await pilot.pause()
        clock.now += 3
        await until(pilot, lambda: "paused 0:15" in header(app)[1], "the pause to go on across a checkpoint")
        stamp = time.strftime("%H:%M:%S", time.localtime(clock.now - 3))
        assert f"last ckpt {stamp} e3 s2,013" in header(app)[0]

        # An lr set by a command shows at once, before the next report carries it.
        app.post_message(TrainerEvent(LearningRateSet(epoch=3, step=2013, old=0.05, new=0.01)))
        await until(pilot, lambda: "lr 0.01" in header(app)[0], "the new lr in the header")
        app.post_message(TrainerEvent(StateChanged(state=RunState.RUNNING, epoch=3, step=2013,
                                                   previous=RunState.PAUSED)))
        app.post_message(TrainerEvent(tick(2020, 1030.0, epoch=3, lr=0.01)))
        await until(pilot, lambda: "img/s" in header(app)[1], "speed back after the resume")
        assert "paused" not in header(app)[1] and "lr 0.01" in header(app)[0]

        app.post_message(TrainerEvent(RunFinished(reason="completed", epoch=90, step=90_000, best_acc1=61.0,
                                                  best_acc5=85.0, seconds=5000.0)))
        await until(pilot, lambda: "done" in header(app)[1], "done in the header")
        line1, line2 = header(app)
        assert "img/s" not in line2 and "ETA" not in line2, "a stale ETA after the end"
        assert "best Acc@1 61.00" in line1 and "epoch 90/90" in line2
        frozen = line2
        clock.now += 60
        await pilot.pause(0.1)
        assert header(app)[1] == frozen, "the elapsed time went on after the run ended"


@asyncio_test
async def test_a_stopped_run_names_its_end_instead_of_done():
    clock = Clock()
    app = make_app(clock)
    async with app.run_test(size=(80, 24)) as pilot:
        for ev in (started(), tick(10, 5.0), RunFinished(reason="stopped", epoch=1, step=12, best_acc1=0.0,
                                                         best_acc5=0.0, seconds=6.0)):
            app.post_message(TrainerEvent(ev))
        await until(pilot, lambda: "stopped" in header(app)[1], "the end reason in the header")
        assert "done" not in header(app)[1] and "ETA" not in header(app)[1]


@asyncio_test
async def test_at_80_columns_the_header_shortens_but_never_cuts_a_number():
    clock = Clock()
    app = make_app(clock)
    async with app.run_test(size=(80, 24)) as pilot:
        for ev in (started(resumed_from="runs/x/checkpoints/last.pt", start_epoch=41, start_step=1_234_000,
                           total_steps=9_000_000, elapsed_s=200_000.0),
                   StateChanged(state=RunState.RUNNING, epoch=42, step=1_234_000, previous=RunState.STARTING),
                   tick(1_234_567, 201_234.0, epoch=42, total_steps=9_000_000, img_per_s=12_345.0,
                        data_wait=0.05, eta_epoch_s=3_599.0, eta_run_s=3 * 86400 + 7),
                   evaluated(41, 1_234_000, acc1=71.125, best=72.5),
                   CheckpointSaved(path="runs/x/checkpoints/last.pt", reason="epoch", epoch=41, step=1_234_000,
                                   seconds=2.0)):
            app.post_message(TrainerEvent(ev))
        app.status.set_pending("checkpoint requested")
        await until(pilot, lambda: "img/s" in header(app)[1] or "elapsed" in header(app)[1], "the tick drawn")
        width = app.status.size.width
        line1, line2 = header(app)
        assert max(Text(line1).cell_len, Text(line2).cell_len) <= width, (line1, line2)
        # What matters most is all there, every number whole.
        assert "RUNNING" in line1 and "checkpoint requested" in line1 and "72.50" in line1
        assert "1,234,567/9,000,000" in line2 and "elapsed 2d 7:53:54" in line2 and "3d 0:00:07" in line2
        assert "42/90" in line2
        assert "…" not in line1 + line2

        # Wider: nothing left out.
        await pilot.resize_terminal(200, 24)
        await until(pilot, lambda: "NVIDIA H200" in header(app)[0], "the wide header")
        line1, line2 = header(app)
        assert "resumed from epoch 41 step 1,234,000" in line1 and "last ckpt" in line1
        assert "12,345 img/s" in line2 and "wait 5%" in line2 and "ETA ep 59:59 run 3d 0:00:07" in line2


def test_fit_drops_the_lowest_priority_steps_first_and_keeps_what_cannot_go():
    a = Field([Text("keep-me")])
    b = Field([Text("bbbbbbbb"), Text("bb"), Text("")], (20, 50))
    c = Field([Text("cccccccc"), Text("")], (30,))
    assert fit([a, b, c], 100).plain == "keep-me  bbbbbbbb  cccccccc"
    assert fit([a, b, c], 22).plain == "keep-me  bb  cccccccc"  # b shortened (20) before c is dropped (30)
    assert fit([a, b, c], 12).plain == "keep-me  bb"
    assert fit([a, b, c], 3).plain == "keep-me"  # never cut: a line of essentials may overflow


@asyncio_test
async def test_replayed_history_times_the_header_from_the_records():
    # The app replays an attached run's history with each record's time: a checkpoint saved
    # an hour ago says so, and a pause that began 90 s before the console opened shows 1:30.
    clock = Clock()
    app = make_app(clock)
    async with app.run_test(size=(120, 24)) as pilot:
        status = app.status
        status.apply(started(), when=T0 - 4000)
        status.apply(tick(500, 3500.0), when=T0 - 100)
        status.apply(CheckpointSaved(path="p.pt", reason="manual", epoch=1, step=500, seconds=1.0), when=T0 - 3600)
        status.apply(StateChanged(state=RunState.PAUSED, epoch=1, step=505, previous=RunState.RUNNING),
                     when=T0 - 90)
        status.set_state(RunState.PAUSED)
        await until(pilot, lambda: "paused 1:30" in header(app)[1], "the replayed pause")
        assert f"last ckpt {time.strftime('%H:%M:%S', time.localtime(T0 - 3600))}" in header(app)[0]
        assert "elapsed 1:00:00" in header(app)[1]  # 3500 s at the tick, 100 s since


@pytest.mark.slow  # the whole console takes over a second to start
@asyncio_test
async def test_the_consoles_header_at_80x24_keeps_elapsed_and_ticks():
    clock = Clock()
    app = TrainingApp(telemetry=FIXED_TELEMETRY, clock=clock, frame_interval=0.02, chart_budget=None)
    async with app.run_test(size=(80, 24)) as pilot:
        for ev in (started(), StateChanged(state=RunState.RUNNING, epoch=1, step=0, previous=RunState.STARTING),
                   tick(123_456, 86_399.0, epoch=42, img_per_s=12_345.0, eta_run_s=2 * 86400.0),
                   evaluated(41, 123_000, acc1=70.0, best=70.0)):
            app.post_message(TrainerEvent(ev))
        await until(pilot, lambda: "elapsed 23:59:59" in header(app)[1], "the header drawn")
        clock.now += 1
        await until(pilot, lambda: "elapsed 1d 0:00:00" in header(app)[1], "elapsed to tick")
        line1, line2 = header(app)
        assert "best Acc@1 70.00" in line1 and "lr 0.05" in line1
        assert max(Text(line1).cell_len, Text(line2).cell_len) <= app.status.size.width == 78
