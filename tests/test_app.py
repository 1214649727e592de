"""The console driven by keys, under `App.run_test`.

The slow tests run a real Trainer wired by `wvtui.session.Session`, as the CLI does (run log,
relay, runner thread): resnet18 on 32 px crops of the 4-class synthetic set. The fast ones
drive the app with fixed events, or with a real trainer that is never started (its commands
wait in its inbox), which is enough to see what a key asks for.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import pytest
from textual.binding import Binding
from textual.widgets import DataTable

from core.checkpoint import load_checkpoint
from core.events import (CheckpointSaved, Command, CommandApplied, ConfigChanged, EvalResult, RunFinished,
                         RunStarted, RunState, RunWarning, StateChanged, StepStats)
from core.telemetry import HostSnapshot, Telemetry, TelemetrySampler
from core.webvision import ClassStats, DatasetSummary, QueryStats
from helpers import Recorder, config, faulty
from helpers import asyncio_test
from helpers import one_torch_thread  # noqa: F401 - fixture
import wvtui.app
from wvtui.app import QuitReason, TrainingApp
from wvtui.eventtext import describe, plain
from wvtui.headless import HeadlessPrinter
from wvtui.messages import TrainerEvent
from wvtui.session import Session
from wvtui.widgets.filter_table import FilterTable
from wvtui.widgets.help_screen import HelpScreen
from wvtui.widgets.quit_screen import QuitScreen

TIMEOUT = 60.0

FIXED_TELEMETRY = Telemetry(time=0.0, gpus=(), gpu_unavailable_reason="no NVIDIA GPU found",
                            host=HostSnapshot(None, None, None, None, None, None, None))


async def until(predicate, what: str, pilot=None, timeout: float = TIMEOUT):
    """`helpers.wait_until` for a test running on the app's event loop: it must not block the
    loop, so it yields to it between polls (through the pilot, which also lets the screen
    settle; without one, after the app has exited)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        if pilot is not None:
            await pilot.pause(0.05)
        else:
            await asyncio.sleep(0.05)
    return value


def status_text(app: TrainingApp) -> str:
    return str(app.status.render())


def notes(app: TrainingApp) -> list[str]:
    return [n.message for n in app._notifications]


class Run:
    """A real run wired as the CLI wires it, with the app in front and a recorder beside it."""

    def __init__(self, root: str, out: str, **kw) -> None:
        cfg = config(root, out, num_classes=4, epochs=200, batch_size=4, max_val_batches=1, **kw.pop("cfg", {}))
        self.recorder = Recorder()
        self.session = Session(cfg, sinks=(self.recorder,), **kw)
        self.session.prepare()
        self.trainer, self.runner, self.relay = self.session.trainer, self.session.runner, self.session.relay
        # (command, trainer.step when the app submitted it): "within one step" counts from here.
        self.submitted: list[tuple[Command, int]] = []
        submit = self.trainer.submit

        def recording_submit(command, **kwargs):
            self.submitted.append((command, self.trainer.step))
            submit(command, **kwargs)

        self.trainer.submit = recording_submit
        self.app = TrainingApp(trainer=self.trainer, runner=self.runner, relay=self.relay, index=self.session.index)

    def of(self, cls, **fields) -> list:
        return [e for e in self.recorder.of(cls) if all(getattr(e, k) == v for k, v in fields.items())]


@pytest.fixture
def run(synthetic_root, tmp_path):
    runs: list[Run] = []

    def make(**kwargs) -> Run:
        r = Run(synthetic_root, str(tmp_path / f"run{len(runs)}"), **kwargs)
        runs.append(r)
        return r

    yield make
    for r in runs:
        r.session.close(TIMEOUT)  # never leave a trainer thread behind a failed test: it is no daemon


# -- a real trainer --------------------------------------------------------------------------------


@pytest.mark.slow
@asyncio_test
async def test_p_pauses_within_one_step_c_saves_while_paused_and_p_resumes(run):
    r = run()
    async with r.app.run_test(size=(80, 24)) as pilot:
        await until(lambda: r.trainer.step >= 2, "training steps", pilot)
        await pilot.press("p")
        assert "Pause requested" in notes(r.app)
        await until(lambda: r.app.run_state is RunState.PAUSED, "the paused state", pilot)
        paused = r.of(StateChanged, state=RunState.PAUSED)[-1]
        assert paused.previous is RunState.RUNNING
        assert r.submitted[0][0] is Command.PAUSE
        assert paused.step - r.submitted[0][1] <= 1
        assert r.app.pending is None
        # The header follows at its next frame.
        await until(lambda: "PAUSED" in status_text(r.app) and "requested" not in status_text(r.app),
                    "PAUSED in the header", pilot)

        # The paused trainer still serves commands, and takes no step while doing so.
        await pilot.press("c")
        assert "Checkpoint requested" in notes(r.app)
        saved = await until(lambda: r.of(CheckpointSaved, reason="manual"), "a manual checkpoint", pilot)
        assert r.trainer.step == paused.step, "steps were taken while paused"
        assert load_checkpoint(saved[0].path)["step"] == paused.step
        await until(lambda: any(saved[0].path in line for line in r.app.event_log.plain),
                    "the checkpoint path in the log", pilot)

        await pilot.press("p")
        assert "Resume requested" in notes(r.app)
        await until(lambda: r.of(StateChanged, state=RunState.RUNNING, previous=RunState.PAUSED), "the resume", pilot)
        await until(lambda: r.trainer.step > paused.step + 1, "steps after resuming", pilot)
        await until(lambda: r.app.pending is None and "PAUSED" not in status_text(r.app), "the header to follow", pilot)
        log = r.app.event_log.plain
        assert sum(f"Paused at epoch 1, step {paused.step}" in line for line in log) == 1
        assert sum(f"Resumed at epoch 1, step {paused.step}" in line for line in log) == 1


@pytest.mark.slow
@asyncio_test
async def test_e_adds_a_manual_evaluation_row(run):
    r = run()
    async with r.app.run_test(size=(80, 24)) as pilot:
        await until(lambda: r.trainer.step >= 1, "a training step", pilot)
        await pilot.press("e")
        assert r.app.query_one("#panes").active == "accuracy"
        ev = (await until(lambda: r.of(EvalResult, manual=True), "a manual evaluation", pilot))[0]
        table = r.app.query_one("#eval-table", DataTable)
        await until(lambda: table.row_count >= 1, "an evaluation row", pilot)
        kind, acc1 = table.get_column_index("kind"), table.get_column_index("acc1")
        manual = [row for row in (table.get_row_at(i) for i in range(table.row_count)) if row[kind] == "manual"]
        assert len(manual) == 1 and manual[0][acc1] == f"{ev.acc1:.2f}"


@pytest.mark.slow
@asyncio_test
async def test_q_and_save_exits_leaving_a_loadable_checkpoint(run):
    r = run()
    async with r.app.run_test(size=(80, 24)) as pilot:
        await until(lambda: r.trainer.step >= 2, "training steps", pilot)
        await pilot.press("q")
        await until(lambda: isinstance(r.app.screen, QuitScreen), "the quit dialog", pilot)
        assert r.runner.is_alive(), "asking must not stop the run"
        await pilot.press("s")
        await until(lambda: r.app.return_code is not None, "the app to exit")
    assert not r.runner.is_alive(), "the trainer thread outlived the app"
    assert r.app.quit_reason is QuitReason.SAVED and r.app.return_value is QuitReason.SAVED
    finished = r.recorder.of(RunFinished)[-1]
    assert finished.reason == "stopped"
    state = load_checkpoint(r.of(CheckpointSaved, reason="stop")[-1].path)
    assert state["step"] == finished.step
    assert set(state) >= {"model", "optimizer", "scheduler", "epoch", "step"}


@pytest.mark.slow
@asyncio_test
async def test_ctrl_c_opens_the_quit_dialog_and_a_second_ctrl_c_saves_and_quits(run):
    r = run()
    async with r.app.run_test(size=(80, 24)) as pilot:
        await until(lambda: r.trainer.step >= 1, "a training step", pilot)
        await pilot.press("ctrl+c")
        await until(lambda: isinstance(r.app.screen, QuitScreen), "the quit dialog", pilot)
        assert not any("to quit" in n for n in notes(r.app)), "Textual's own ctrl+c toast was shown"
        assert r.runner.is_alive() and not r.submitted, "ctrl+c alone stopped the run"
        await pilot.press("ctrl+c")
        await until(lambda: r.app.return_code is not None, "the app to exit")
    assert not r.runner.is_alive()
    assert [c for c, _ in r.submitted] == [Command.STOP]
    # What the CLI reads to exit 130 (128 + SIGINT) once the checkpoint is on disk.
    assert r.app.quit_reason is QuitReason.INTERRUPTED and r.app.return_value is QuitReason.INTERRUPTED
    assert r.session.outcome.checkpoint_on_disk
    finished = r.recorder.of(RunFinished)[-1]
    assert finished.reason == "stopped"
    assert load_checkpoint(r.of(CheckpointSaved, reason="stop")[-1].path)["step"] == finished.step


@pytest.mark.slow
@asyncio_test
async def test_q_cancel_keeps_running_and_no_save_quits_without_checkpoint(run):
    r = run()
    async with r.app.run_test(size=(80, 24)) as pilot:
        await until(lambda: r.trainer.step >= 1, "a training step", pilot)
        await pilot.press("q")
        await until(lambda: isinstance(r.app.screen, QuitScreen), "the quit dialog", pilot)
        await pilot.press("escape")
        await until(lambda: not isinstance(r.app.screen, QuitScreen), "the dialog to close", pilot)
        step = r.trainer.step
        await until(lambda: r.trainer.step > step, "training to go on", pilot)
        await pilot.press("q", "n")
        await until(lambda: r.app.return_code is not None, "the app to exit")
    assert not r.runner.is_alive()
    assert r.app.quit_reason is QuitReason.NOT_SAVED
    assert r.recorder.of(RunFinished)[-1].reason == "stopped"
    assert not r.of(CheckpointSaved, reason="stop")


@pytest.mark.slow
@asyncio_test
async def test_a_trainer_error_shows_and_the_app_stays_open(run):
    r = run(model_factory=faulty(at=3, fault="bug"))
    async with r.app.run_test(size=(80, 24)) as pilot:
        await until(lambda: r.app.run_state is RunState.ERROR, "the error state", pilot)
        await until(lambda: not r.runner.is_alive(), "the trainer to end", pilot)
        await until(lambda: "ERROR" in status_text(r.app), "ERROR in the header", pilot)
        assert any("simulated bug" in line for line in r.app.event_log.plain)
        assert any(n.severity == "error" and "simulated bug" in n.message for n in r.app._notifications)
        assert r.app.return_code is None, "the app closed by itself after an error"
        # Commands after the end say so instead of doing nothing silently.
        await pilot.press("p")
        assert any("has ended" in n for n in notes(r.app))
        await pilot.press("q")
        await until(lambda: r.app.return_code is not None, "the app to exit")
    assert r.app.quit_reason is QuitReason.ENDED


@pytest.mark.slow
@asyncio_test
async def test_detach_ends_the_ui_but_not_the_run(run):
    r = run()
    headless = Recorder()
    async with r.app.run_test(size=(80, 24)) as pilot:
        await until(lambda: r.trainer.step >= 1, "a training step", pilot)
        # What the CLI does on SIGHUP, from another thread: re-point the relay, end the UI.
        threading.Thread(target=lambda: (r.relay.attach(headless), r.app.detach())).start()
        await until(lambda: r.app.return_code is not None, "the app to exit")
    assert r.app.quit_reason is QuitReason.DETACHED
    assert r.runner.is_alive(), "the run must survive the UI"
    headless.wait_for(lambda e: isinstance(e, StepStats), TIMEOUT)
    r.trainer.submit(Command.STOP)
    assert r.runner.join(TIMEOUT)
    assert headless.of(RunFinished)[-1].reason == "stopped"


# -- keys against a trainer that never starts --------------------------------------------------------


@pytest.fixture
def idle(synthetic_root, tmp_path):
    """A real, prepared trainer whose thread never runs: what a key submits stays in its inbox."""
    session = Session(config(synthetic_root, str(tmp_path / "idle"), num_classes=4, batch_size=4))
    session.prepare()
    submitted: list[Command] = []
    submit = session.trainer.submit
    session.trainer.submit = lambda command, **kw: (submitted.append(command), submit(command, **kw))
    app = TrainingApp(trainer=session.trainer, telemetry=FIXED_TELEMETRY)
    return app, submitted


@asyncio_test
async def test_the_header_says_what_was_asked_until_the_trainer_reports_it(idle):
    app, submitted = idle

    def applied(command: str, step: int = 3) -> TrainerEvent:
        return TrainerEvent(CommandApplied(command=command, epoch=1, step=step))

    async with app.run_test(size=(80, 24)) as pilot:
        app.post_message(TrainerEvent(StateChanged(state=RunState.RUNNING, epoch=1, step=0,
                                                   previous=RunState.STARTING)))
        await pilot.pause()
        await pilot.press("p")
        assert submitted == [Command.PAUSE] and app.pending is Command.PAUSE
        assert "pause requested" in status_text(app)
        # p again before the trainer has answered: the user changed their mind.
        await pilot.press("p")
        assert submitted == [Command.PAUSE, Command.RESUME] and app.pending is Command.RESUME
        # The pause being applied is not the resume asked for; the state follows the events.
        app.post_message(TrainerEvent(StateChanged(state=RunState.PAUSED, epoch=1, step=3,
                                                   previous=RunState.RUNNING)))
        app.post_message(applied("pause"))
        await pilot.pause()
        assert app.run_state is RunState.PAUSED and app.pending is Command.RESUME
        app.post_message(TrainerEvent(StateChanged(state=RunState.RUNNING, epoch=1, step=3,
                                                   previous=RunState.PAUSED)))
        await pilot.pause()
        assert app.run_state is RunState.RUNNING and app.pending is Command.RESUME
        app.post_message(applied("resume"))
        await pilot.pause()
        assert app.pending is None
        await until(lambda: "requested" not in status_text(app), "the header to clear", pilot)

        await pilot.press("c")
        app.post_message(TrainerEvent(CheckpointSaved(path="x.pt", reason="epoch", epoch=1, step=4, seconds=0.1)))
        await pilot.pause()
        assert app.pending is Command.CHECKPOINT, "an epoch-end save is not the one asked for"
        app.post_message(applied("checkpoint", step=4))
        await pilot.pause()
        assert app.pending is None

        # A run that ends without its latest checkpoint on disk says so where the state is shown.
        app.post_message(TrainerEvent(RunFinished(reason="completed", epoch=1, step=16, best_acc1=0.0,
                                                  best_acc5=0.0, seconds=9.0, checkpoint_failed=True)))
        await until(lambda: "FINISHED (completed, checkpoint failed)" in status_text(app), "the end in the header",
                    pilot)
        assert app.run_state is RunState.FINISHED


@asyncio_test
async def test_ctrl_c_then_escape_cancels_and_ctrl_c_twice_stops_with_a_checkpoint(idle):
    app, submitted = idle
    async with app.run_test(size=(80, 24)) as pilot:
        # The dataset filter has the focus: an Input's own ctrl+c (copy) must not win.
        await pilot.press("slash")
        assert app.focused is app.query_one("#dataset-filter")
        await pilot.press("ctrl+c")
        assert isinstance(app.screen, QuitScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, QuitScreen) and submitted == []
        assert "Quit cancelled" in notes(app)
        await pilot.press("ctrl+c", "ctrl+c")
        await until(lambda: app.return_code is not None, "the app to exit")
    assert submitted == [Command.STOP]
    assert app.quit_reason is QuitReason.INTERRUPTED and app.return_value is QuitReason.INTERRUPTED


@asyncio_test
async def test_d_explains_that_the_run_is_this_process_and_a_cancelled_ctrl_c_leaves_no_trace(idle):
    app, submitted = idle
    async with app.run_test(size=(80, 24)) as pilot:
        # d in the training process: closing it would end the run, so it explains the way out.
        await pilot.press("d")
        assert app.return_code is None and submitted == []
        assert any("Close the terminal instead" in n and "wvtui attach" in n for n in notes(app))
        # A cancelled ctrl+c leaves no trace: a later q, then save, is no interrupt.
        await pilot.press("ctrl+c", "escape", "q", "s")
        await until(lambda: app.return_code is not None, "the app to exit")
    assert submitted == [Command.STOP] and app.quit_reason is QuitReason.SAVED


# -- no trainer: fixed events ------------------------------------------------------------------------


@asyncio_test
async def test_keys_without_a_trainer_give_feedback_and_q_exits():
    app = TrainingApp(telemetry=FIXED_TELEMETRY)
    async with app.run_test(size=(80, 24)) as pilot:
        for key in "pce":
            await pilot.press(key)
        assert sum("No trainer" in n for n in notes(app)) == 3
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")
        await until(lambda: app.return_code is not None, "the app to exit")
    assert app.quit_reason is QuitReason.ENDED


class AppWithOneMoreKey(TrainingApp):
    CSS_PATH = str(Path(wvtui.app.__file__).with_name("app.tcss"))  # else looked up beside this file
    BINDINGS = [*TrainingApp.BINDINGS, Binding("x", "bell", "Ring", tooltip="A key added after the help was written")]


@asyncio_test
async def test_the_help_lists_every_binding_and_follows_a_new_one():
    app = AppWithOneMoreKey(telemetry=FIXED_TELEMETRY)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("question_mark")
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        rows = {keys: what for _, keys, what in help_screen.rows}
        assert rows["x"] == "A key added after the help was written"
        for binding in Binding.make_bindings(TrainingApp.BINDINGS):
            if binding.group is None:
                assert rows[app.get_key_display(binding)] == binding.tooltip, binding
        # The pane keys share one row; the app's ctrl+c hides the screen's (copy text).
        assert rows["1 2 3 4 5 6"].startswith("Panes: training")
        assert rows["^c"].startswith("The quit dialog")
        assert {"v", "s", "tab", "shift+tab", "←", "→"} <= set(rows)
        assert len(help_screen.rows) == len(rows), "a key is listed twice"


@asyncio_test
async def test_the_log_pane_and_the_headless_printer_write_the_same_words():
    started = RunStarted(config={"epochs": 3}, summary={}, device="cpu", model="resnet18", num_params=1_000_000,
                         steps_per_epoch=10, total_steps=30, start_epoch=0, start_step=0, out_dir="runs/x")
    events = [
        started,
        ConfigChanged(epoch=0, step=0, changes={"lr": [0.1, 0.05]}),
        StateChanged(state=RunState.RUNNING, epoch=0, step=0, previous=RunState.STARTING),
        StateChanged(state=RunState.PAUSED, epoch=0, step=4, previous=RunState.RUNNING),
        StateChanged(state=RunState.RUNNING, epoch=0, step=4, previous=RunState.PAUSED),
        EvalResult(epoch=0, step=10, loss=1.0, acc1=50.0, acc5=90.0, best_acc1=50.0, best_acc5=90.0, manual=False,
                   is_best=True, seconds=1.0, images=14, images_total=16),
        RunWarning(kind="bad_images", message="7 unreadable images", paths=tuple(f"p{i}.jpg" for i in range(7))),
        RunFinished(reason="stopped", epoch=0, step=12, best_acc1=50.0, best_acc5=90.0, seconds=3.0),
    ]
    out = io.StringIO()
    printer = HeadlessPrinter(out)
    app = TrainingApp(telemetry=FIXED_TELEMETRY)
    async with app.run_test(size=(120, 40)) as pilot:
        for ev in events:
            printer(ev)
            app.post_message(TrainerEvent(ev))
        await pilot.pause()
        log = "\n".join(app.event_log.plain)
    printed = out.getvalue()
    expected = [plain(line) for ev in events for line in describe(ev)]
    assert len(expected) == 14
    for line in expected:
        assert line in printed and line in log, line
    assert "on 14 of 16 images" in log and "lr 0.1 -> 0.05" in log and "... and 2 more" in log
    assert sum("Paused at" in line for line in app.event_log.plain) == 1


@asyncio_test
async def test_telemetry_pane_without_gpu_shows_reason_and_host_figures():
    app = TrainingApp(telemetry=TelemetrySampler())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        pane = app.query_one("#system-pane")

        def shown() -> str:
            return str(app.query_one("#gpu-info").render()) + str(app.query_one("#host-info").render())

        await until(lambda: pane.telemetry is not None and "RAM" in shown(), "a telemetry sample drawn", pilot)
        t = pane.telemetry
        if t.gpus:
            for g in t.gpus:
                assert (g.name or "N/A") in shown()
        else:
            # One line: no GPU, and why.
            line = next(line for line in shown().splitlines() if "No GPU" in line)
            assert t.gpu_unavailable_reason in line
        assert "CPU" in shown() and "workers" in shown()


def _tick(step: int, steps: int = 100) -> StepStats:
    return StepStats(epoch=0, step=step, epoch_step=step, steps_per_epoch=steps, total_steps=steps,
                     loss=2.0 / step, last_loss=1.0 / step, lr=0.1, img_per_s=1.0, data_wait=0.0,
                     eta_epoch_s=0.0, eta_run_s=0.0, elapsed_s=0.0, bad_images=0)


def test_step_ticks_coalesce_and_other_events_do_not():
    ev = TrainerEvent(EvalResult(epoch=0, step=1, loss=1.0, acc1=1.0, acc5=1.0, best_acc1=1.0, best_acc5=1.0,
                                 manual=True, is_best=True, seconds=0.1, images=1))
    assert TrainerEvent(_tick(1)).can_replace(TrainerEvent(_tick(2)))
    assert not TrainerEvent(_tick(1)).can_replace(ev)
    assert not ev.can_replace(TrainerEvent(_tick(2)))


@asyncio_test
async def test_a_burst_of_ticks_coalesces_but_the_loss_chart_keeps_every_point():
    app = TrainingApp(telemetry=FIXED_TELEMETRY)
    handled = []
    async with app.run_test(size=(80, 24), message_hook=lambda m: isinstance(m, TrainerEvent) and handled.append(m)) as pilot:
        for step in range(1, 51):  # queued faster than the app takes them
            app.post_message(TrainerEvent(_tick(step)))
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
        # What the noise pane reads of an index (names, query folders, the image root).
        self.root = "/data"
        self.class_names = [c.name for c in self.classes]
        self.query_ids = [q.query_id for q in self.queries]

    def class_stats(self):
        return self.classes

    def query_stats(self):
        return self.queries

    def summary(self):
        return DatasetSummary(root="/data", num_classes=1000, sources=("google",), train_images=1_500_500,
                              val_images=50_000, queries=1632, min_per_class=1001, mean_per_class=1500.5,
                              max_per_class=2000, min_class=999, max_class=0, imbalance=2000 / 1001)


@pytest.mark.slow  # 5 s of table building: too long for the fast loop
@asyncio_test
async def test_dataset_pane_sorts_and_filters_1000_classes_and_1632_queries():
    app = TrainingApp(index=BigIndex(), telemetry=FIXED_TELEMETRY)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await pilot.pause()
        classes = app.query_one("#class-table", FilterTable)
        queries = app.query_one("#query-table", FilterTable)
        assert classes.row_count == 1000

        # Typed text filters both tables (the hidden one when it is shown), once typing pauses.
        await pilot.press("slash", *"number 99")
        await until(lambda: classes.filter_text == "number 99", "the debounced filter", pilot)
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
        await until(lambda: classes.row_count == 1000, "every row back", pilot)
        assert str(classes.get_row_at(0)[0]) == "0"  # the largest class
        # Per-class accuracy from an evaluation lands in the table.
        app.post_message(TrainerEvent(EvalResult(
            epoch=0, step=1, loss=1.0, acc1=1.0, acc5=2.0, best_acc1=1.0, best_acc5=2.0, manual=False,
            is_best=True, seconds=0.1, images=1000, per_class_acc1=tuple(float(i % 100) for i in range(1000)))))
        await pilot.pause()
        assert str(classes.get_row_at(0)[6]) == "0.0" and str(classes.get_row_at(1)[6]) == "1.0"

