"""The console driven by keys, with a real Trainer on a tiny synthetic WebVision tree.

Each test runs `TrainingApp` under `App.run_test` with the same wiring as the CLI: a `Relay`,
a `TrainerRunner` thread, the run log; resnet18 on 32 px crops of the 4-class synthetic set.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time

import pytest
import torch
from torch import nn

from core.checkpoint import load_checkpoint
from core.config import TrainConfig
from core.engine import Trainer
from core.events import (CheckpointSaved, Command, EvalResult, Paused, Resumed, RunFinished, StepStats,
                         fanout)
from core.model import build_model
from core.runlog import RunLog
from core.telemetry import TelemetrySampler
from core.webvision import ClassStats, DatasetSummary, QueryStats, WebVisionIndex
from textual.widgets import DataTable
from wvtui.app import TrainingApp
from wvtui.messages import TrainerEvent
from wvtui.runner import Relay, TrainerRunner
from wvtui.widgets.filter_table import FilterTable
from wvtui.widgets.quit_screen import QuitScreen

TIMEOUT = 60.0



def asyncio_test(fn):
    """Run an async test body with asyncio.run (no async pytest plugin is a dependency)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


class Recorder:
    """A sink that keeps every event, thread-safely, for assertions."""

    def __init__(self) -> None:
        self.events: list = []
        self._lock = threading.Lock()

    def __call__(self, event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind) -> list:
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]


class Run:
    def __init__(self, root: str, out: str, *, epochs: int = 200, model_factory=None) -> None:
        cfg = TrainConfig(root=root, num_classes=4, epochs=epochs, batch_size=4, model="resnet18",
                          image_size=32, workers=0, device="cpu", report_every=1, report_interval_s=0.0,
                          max_val_batches=1, out=out, seed=0)
        self.index = WebVisionIndex.load(root, num_classes=4)
        self.recorder = Recorder()
        self.relay = Relay()
        self.trainer = Trainer(cfg, fanout(RunLog(out), self.recorder, self.relay), index=self.index,
                               model_factory=model_factory)
        self.trainer.prepare()
        self.runner = TrainerRunner(self.trainer, on_crash=self.relay)
        # (command, trainer.step when the app submitted it): "within one step" counts from here.
        self.submitted: list[tuple[Command, int]] = []
        submit = self.trainer.submit

        def recording_submit(command, **kwargs):
            self.submitted.append((command, self.trainer.step))
            submit(command, **kwargs)

        self.trainer.submit = recording_submit
        self.app = TrainingApp(trainer=self.trainer, runner=self.runner, relay=self.relay, index=self.index)

    def close(self) -> None:
        # Never leave a trainer thread behind a failed test: it is not a daemon.
        if self.runner.is_alive():
            self.trainer.submit(Command.STOP_NO_SAVE)
            self.runner.join(TIMEOUT)


@pytest.fixture
def run(synthetic_root, tmp_path):
    runs: list[Run] = []

    def make(**kwargs) -> Run:
        r = Run(synthetic_root, str(tmp_path / f"run{len(runs)}"), **kwargs)
        runs.append(r)
        return r

    yield make
    for r in runs:
        r.close()


async def wait_until(pilot, predicate, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def wait_for_exit(app: TrainingApp, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while app.return_code is None:
        assert time.monotonic() < deadline, "the app did not exit"
        await asyncio.sleep(0.05)


def status_text(app: TrainingApp) -> str:
    return str(app.status.render())


@asyncio_test
async def test_p_pauses_within_one_step_and_p_resumes(run):
    r = run()
    async with r.app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: r.trainer.step >= 2, "training steps")
        await pilot.press("p")
        # Feedback before the trainer has answered: the header says what was asked for.
        assert any(n.message == "Pause requested" for n in r.app._notifications)
        assert "pause requested" in status_text(r.app) or r.recorder.of(Paused)
        await wait_until(pilot, lambda: r.app.run_state == "paused", "the paused state")
        paused = r.recorder.of(Paused)[-1]
        assert r.submitted[0][0] is Command.PAUSE
        assert paused.step - r.submitted[0][1] <= 1
        await pilot.pause(0.6)
        assert r.trainer.step == paused.step, "steps were taken while paused"
        assert "PAUSED" in status_text(r.app)

        await pilot.press("p")
        # The trainer may already have answered by the time the key is handled; either way the
        # user has seen something within the key press.
        assert any(n.message == "Resume requested" for n in r.app._notifications)
        assert "resume requested" in status_text(r.app) or r.recorder.of(Resumed)
        await wait_until(pilot, lambda: r.trainer.step > paused.step + 1, "steps after resuming")
        assert r.recorder.of(Resumed)
        # Running, or already into an epoch-end evaluation or checkpoint.
        assert r.app.run_state in ("running", "evaluating", "checkpointing")
        assert "PAUSED" not in status_text(r.app)


@asyncio_test
async def test_e_adds_a_manual_evaluation_row(run):
    r = run()
    async with r.app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: r.trainer.step >= 1, "a training step")
        await pilot.press("e")
        await wait_until(pilot, lambda: any(e.manual for e in r.recorder.of(EvalResult)), "a manual evaluation")
        table = r.app.query_one("#eval-table", DataTable)
        await wait_until(pilot, lambda: table.row_count >= 1, "an evaluation row")
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        manual = [row for row in rows if row[5] == "manual"]
        assert len(manual) == 1
        ev = [e for e in r.recorder.of(EvalResult) if e.manual][0]
        assert manual[0][3] == f"{ev.acc1:.2f}"
        assert r.app.query_one("#panes").active == "accuracy"


@asyncio_test
async def test_c_writes_a_checkpoint_file(run):
    r = run()
    async with r.app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: r.trainer.step >= 1, "a training step")
        # Paused first, so that no epoch-end save replaces last.pt before it is read back.
        await pilot.press("p")
        await wait_until(pilot, lambda: r.app.run_state == "paused", "the paused state")
        await pilot.press("c")
        assert any(n.message == "Checkpoint requested" for n in r.app._notifications)
        await wait_until(pilot, lambda: any(e.reason == "manual" for e in r.recorder.of(CheckpointSaved)),
                         "a manual checkpoint")
        saved = [e for e in r.recorder.of(CheckpointSaved) if e.reason == "manual"][0]
        assert os.path.isfile(saved.path)
        state = load_checkpoint(saved.path)
        assert state["step"] == saved.step
        await wait_until(pilot, lambda: any(saved.path in line for line in r.app.event_log.plain),
                         "the checkpoint path in the log")


@asyncio_test
async def test_q_and_save_exits_leaving_a_loadable_checkpoint(run):
    r = run()
    async with r.app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: r.trainer.step >= 2, "training steps")
        await pilot.press("q")
        await wait_until(pilot, lambda: isinstance(r.app.screen, QuitScreen), "the quit dialog")
        assert r.runner.is_alive(), "asking must not stop the run"
        await pilot.press("s")
        await wait_for_exit(r.app)
    assert not r.runner.is_alive(), "the trainer thread outlived the app"
    finished = r.recorder.of(RunFinished)[-1]
    assert finished.reason == "stopped"
    stop_saves = [e for e in r.recorder.of(CheckpointSaved) if e.reason == "stop"]
    assert stop_saves
    state = load_checkpoint(stop_saves[-1].path)
    assert state["step"] == finished.step
    assert set(state) >= {"model", "optimizer", "scheduler", "epoch", "step"}


@asyncio_test
async def test_q_cancel_keeps_running_and_no_save_quits_without_checkpoint(run):
    r = run()
    async with r.app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: r.trainer.step >= 1, "a training step")
        await pilot.press("q")
        await wait_until(pilot, lambda: isinstance(r.app.screen, QuitScreen), "the quit dialog")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(r.app.screen, QuitScreen), "the dialog to close")
        step = r.trainer.step
        await wait_until(pilot, lambda: r.trainer.step > step, "training to go on")
        await pilot.press("q", "n")
        await wait_for_exit(r.app)
    assert not r.runner.is_alive()
    assert r.recorder.of(RunFinished)[-1].reason == "stopped"
    assert not [e for e in r.recorder.of(CheckpointSaved) if e.reason == "stop"]


class ExplodingModel(nn.Module):
    """A real resnet18 whose forward fails on the third call, like a fault mid-run."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.inner = build_model("resnet18", num_classes)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= 3:
            raise RuntimeError("injected failure in the model")
        return self.inner(x)


@asyncio_test
async def test_a_trainer_error_shows_and_the_app_stays_open(run):
    r = run(model_factory=lambda name, n: ExplodingModel(n))
    async with r.app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: r.app.run_state == "error", "the error state")
        await wait_until(pilot, lambda: not r.runner.is_alive(), "the trainer to end")
        await pilot.pause(0.3)
        assert "ERROR" in status_text(r.app)
        assert any("injected failure in the model" in line for line in r.app.event_log.plain)
        assert any(n.severity == "error" and "injected failure" in n.message for n in r.app._notifications)
        assert r.app.return_code is None, "the app closed by itself after an error"
        # Commands after the end say so instead of doing nothing silently.
        await pilot.press("p")
        assert any("has ended" in n.message for n in r.app._notifications)
        await pilot.press("q")
        await wait_for_exit(r.app)


@asyncio_test
async def test_telemetry_pane_without_gpu_shows_reason_and_host_figures(run):
    r = run()
    async with r.app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        pane = r.app.query_one("#system-pane")
        await wait_until(pilot, lambda: pane.telemetry is not None, "a telemetry sample")
        await pilot.pause(0.3)
        shown = str(r.app.query_one("#gpu-info").render()) + str(r.app.query_one("#host-info").render())
        t = pane.telemetry
        if t.gpus:
            for g in t.gpus:
                assert (g.name or "N/A") in shown
        else:
            assert "No NVIDIA GPU / NVML unavailable" in shown
            assert t.gpu_unavailable_reason in shown.replace("\n", " ")
        assert "CPU" in shown and "RAM" in shown and "workers" in shown


@asyncio_test
async def test_keys_without_a_trainer_give_feedback_and_q_exits():
    app = TrainingApp(telemetry=TelemetrySampler())
    async with app.run_test(size=(80, 24)) as pilot:
        for key in "pce":
            await pilot.press(key)
        assert sum("No trainer" in n.message for n in app._notifications) == 3
        await pilot.press("question_mark")
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("escape")
        await pilot.press("q")
        await wait_for_exit(app)


@asyncio_test
async def test_detach_ends_the_ui_but_not_the_run(run):
    r = run()
    headless = Recorder()
    async with r.app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: r.trainer.step >= 1, "a training step")
        # What the CLI does on SIGHUP, from another thread: re-point the relay, end the UI.
        threading.Thread(target=lambda: (r.relay.attach(headless), r.app.detach())).start()
        await wait_for_exit(r.app)
    assert r.runner.is_alive(), "the run must survive the UI"
    deadline = time.monotonic() + TIMEOUT
    while not headless.of(StepStats):
        assert time.monotonic() < deadline, "no events reached the headless sink"
        time.sleep(0.05)
    r.trainer.submit(Command.STOP)
    assert r.runner.join(TIMEOUT)
    assert headless.of(RunFinished)[-1].reason == "stopped"


def test_step_ticks_coalesce_and_other_events_do_not():
    def tick(step: int) -> TrainerEvent:
        return TrainerEvent(StepStats(epoch=0, step=step, epoch_step=step, steps_per_epoch=10, total_steps=10,
                                      loss=1.0, last_loss=1.0, lr=0.1, img_per_s=1.0, data_wait=0.0,
                                      eta_epoch_s=0.0, eta_run_s=0.0, elapsed_s=0.0, bad_images=0))

    ev = TrainerEvent(EvalResult(epoch=0, step=1, loss=1.0, acc1=1.0, acc5=1.0, best_acc1=1.0, best_acc5=1.0,
                                 manual=True, is_best=True, seconds=0.1, images=1))
    assert tick(1).can_replace(tick(2))
    assert not tick(1).can_replace(ev)
    assert not ev.can_replace(tick(2))


@asyncio_test
async def test_a_burst_of_ticks_coalesces_but_the_loss_chart_keeps_every_point():
    from core.telemetry import HostSnapshot, Telemetry

    def stats(step: int) -> StepStats:
        return StepStats(epoch=0, step=step, epoch_step=step, steps_per_epoch=100, total_steps=100,
                         loss=2.0 / step, last_loss=1.0 / step, lr=0.1, img_per_s=1.0, data_wait=0.0,
                         eta_epoch_s=0.0, eta_run_s=0.0, elapsed_s=0.0, bad_images=0)

    fixed = Telemetry(time=0.0, gpus=(), gpu_unavailable_reason="no NVIDIA GPU found",
                      host=HostSnapshot(None, None, None, None, None, None, None))
    app = TrainingApp(telemetry=fixed)
    handled = []
    async with app.run_test(size=(80, 24), message_hook=lambda m: isinstance(m, TrainerEvent) and handled.append(m)) as pilot:
        for step in range(1, 51):  # queued faster than the app takes them
            app.post_message(TrainerEvent(stats(step)))
        await pilot.pause()
        assert len(handled) < 50, "the burst was not coalesced"
        assert app.training_pane.steps == list(range(1, 51))
        assert app.training_pane.raw[-1] == 1.0 / 50 and app.training_pane.last.step == 50


class BigIndex:
    """Statistics shaped like full WebVision: 1000 classes, 1632 Google queries."""

    def __init__(self) -> None:
        self.classes = [ClassStats(label=i, wnid=f"n{i:08d}", name=f"class number {i}",
                                   train_images=2000 - i, val_images=50, queries=1 + (i < 632))
                        for i in range(1000)]
        self.queries = [QueryStats(query_id=f"q{q + 1:04d}", source="google", text=f"query text {q}",
                                   label=q % 1000, class_name=f"class number {q % 1000}", images=1000 + q)
                        for q in range(1632)]

    def class_stats(self):
        return self.classes

    def query_stats(self):
        return self.queries

    def summary(self):
        return DatasetSummary(root="/data", num_classes=1000, sources=("google",), train_images=1_500_500,
                              val_images=50_000, queries=1632, min_per_class=1001, mean_per_class=1500.5,
                              max_per_class=2000, min_class=999, max_class=0, imbalance=2000 / 1001)


@asyncio_test
async def test_dataset_pane_sorts_and_filters_1000_classes_and_1632_queries():
    app = TrainingApp(index=BigIndex(), telemetry=TelemetrySampler())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await pilot.pause()
        classes = app.query_one("#class-table", FilterTable)
        queries = app.query_one("#query-table", FilterTable)
        assert classes.row_count == 1000

        # Typed text filters both tables (the hidden one when it is shown).
        await pilot.press("slash", *"number 99")
        await pilot.pause(0.3)
        labels = [str(classes.get_row_at(i)[0]) for i in range(classes.row_count)]
        assert set(labels) == {"99"} | {str(i) for i in range(990, 1000)}
        await pilot.press("enter")
        assert app.focused is classes
        await pilot.press("v")
        await pilot.pause()
        assert queries.row_count == len([q for q in range(1632) if "number 99" in f"class number {q % 1000}"])
        await pilot.press("v", "v")
        await pilot.pause()
        classes.focus()

        # s sorts by the column under the cursor, s again reverses.
        await pilot.press("right", "right", "right", "s")  # the "train" column
        trains = [int(str(classes.get_row_at(i)[3]).replace(",", "")) for i in range(classes.row_count)]
        assert trains == sorted(trains)
        await pilot.press("s")
        trains = [int(str(classes.get_row_at(i)[3]).replace(",", "")) for i in range(classes.row_count)]
        assert trains == sorted(trains, reverse=True)

        # Clearing the filter brings every row back, still sorted.
        app.query_one("#dataset-filter").value = ""
        await pilot.pause(0.3)
        assert classes.row_count == 1000
        assert str(classes.get_row_at(0)[0]) == "0"  # the largest class
        # Per-class accuracy from an evaluation lands in the table.
        app.post_message(TrainerEvent(EvalResult(
            epoch=0, step=1, loss=1.0, acc1=1.0, acc5=2.0, best_acc1=1.0, best_acc5=2.0, manual=False,
            is_best=True, seconds=0.1, images=1000, per_class_acc1=tuple(float(i % 100) for i in range(1000)))))
        await pilot.pause()
        assert str(classes.get_row_at(0)[6]) == "0.0" and str(classes.get_row_at(1)[6]) == "1.0"
