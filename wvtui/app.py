"""The console: a Textual app showing a `Trainer`'s events and sending it commands by key.

The app never owns the trainer thread. The CLI builds the trainer, a `Relay` and a
`TrainerRunner`; the app points the relay at itself on mount (events arrive by `post_message`,
which never blocks the trainer) and starts the runner. When the terminal goes away the CLI
re-points the relay at a headless printer and calls `detach()`; the trainer keeps running.

    app = TrainingApp(trainer, runner, relay, index=index)
    app.run()

Without a trainer (tests, snapshots) events are fed with `app.post_message(TrainerEvent(ev))`.

How the console ended is `app.quit_reason` (a `QuitReason`, also what `app.run()` returns):
the CLI turns `QuitReason.INTERRUPTED` (Ctrl-C, then a checkpoint) into exit 130.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, TabbedContent, TabPane, Tabs
from textual.worker import Worker, WorkerState, get_current_worker

from core.events import (CheckpointSaved, Command, EvalResult, Event, RunError, RunFinished, RunStarted,
                         RunState, RunWarning, StateChanged)

from .frames import Frames
from .messages import RunnerJoined, TelemetrySampleFailed, TrainerEvent
from .pending import FEEDBACK, confirms
from .widgets.accuracy_pane import AccuracyPane
from .widgets.dataset_pane import DatasetPane
from .widgets.event_log import EventLog
from .widgets.filter_table import FilterTable
from .widgets.help_screen import HelpScreen
from .widgets.noise_pane import NoisePane
from .widgets.quit_screen import NO_SAVE, SAVE, QuitReason, QuitScreen
from .widgets.status_line import StatusLine
from .widgets.system_pane import SystemPane
from .widgets.training_pane import TrainingPane

# Once the trainer has reached one of these it takes no more commands.
ENDED = {RunState.FINISHED, RunState.ERROR}
WARNING_TOAST_INTERVAL_S = 30.0

PANE_KEYS = Binding.Group("Panes: training, accuracy, GPU & host, dataset, log, noise")


class TrainingApp(App):
    """Live view of one training run; keys p/c/e/q control it (see `HelpScreen` for all keys)."""

    CSS_PATH = "app.tcss"
    TITLE = "wvtui"
    BINDINGS = [
        Binding("p", "toggle_pause", "Pause/resume", tooltip="Pause or resume training (at the next step)"),
        Binding("c", "checkpoint", "Checkpoint", tooltip="Save a checkpoint now"),
        Binding("e", "evaluate", "Evaluate", tooltip="Evaluate on the validation set now"),
        Binding("q", "request_quit", "Quit", tooltip="Quit: asks whether to save a checkpoint first"),
        # A priority binding: in raw mode Ctrl-C is a key, and Textual's own binding would only
        # show a "press ctrl+q" toast (and an Input's would copy text).
        Binding("ctrl+c", "interrupt", "Quit", show=False, priority=True,
                tooltip="The quit dialog; a second ctrl+c saves a checkpoint and quits"),
        Binding("question_mark", "help", "Help", tooltip="This help"),
        Binding("1", "show_pane('training')", "Training", show=False, group=PANE_KEYS),
        Binding("2", "show_pane('accuracy')", "Accuracy", show=False, group=PANE_KEYS),
        Binding("3", "show_pane('system')", "GPU", show=False, group=PANE_KEYS),
        Binding("4", "show_pane('dataset')", "Dataset", show=False, group=PANE_KEYS),
        Binding("5", "show_pane('log')", "Log", show=False, group=PANE_KEYS),
        Binding("6", "show_pane('noise')", "Noise", show=False, group=PANE_KEYS),
        Binding("slash", "filter_dataset", "Filter", show=False,
                tooltip="Filter the dataset tables (enter or esc to leave)"),
    ]

    def __init__(
        self,
        trainer: Any = None,
        runner: Any = None,
        relay: Any = None,
        *,
        demo: bool = False,
        telemetry: Any = None,
        index: Any = None,
        clock: Callable[[], float] = time.time,
        telemetry_interval: float = 1.0,
        frame_interval: float = 0.1,
        chart_interval: float = 1.0,
        chart_budget: float | None = 0.01,
    ) -> None:
        """
        telemetry: None samples with a `core.telemetry.TelemetrySampler`; an object with
            `.sample()` is used as the sampler; a fixed `Telemetry` is shown as is (no sampling).
        index: the `WebVisionIndex` for the dataset tables (else `RunStarted.summary` only).
        clock: wall clock for "last checkpoint" times (tests pass a fixed one).
        frame_interval: seconds between redraws of the status line and tables.
        chart_interval: the least seconds between two redraws of a chart.
        chart_budget: the share of one core the charts may take: a chart whose last build
            took t seconds is redrawn at most every t / chart_budget seconds (plotext builds
            in pure Python, ~10-50 ms a chart depending on the terminal size, and every
            cycle the UI spends is one the trainer may miss). None: no budget (tests).
        """
        super().__init__()
        self.trainer = trainer
        self.runner = runner
        self.relay = relay
        self.demo = demo
        self.index = index
        self._clock = clock
        self._telemetry = telemetry
        self._telemetry_interval = telemetry_interval
        self._frame_interval = frame_interval
        self._chart_interval = chart_interval
        self._chart_budget = chart_budget
        self._loop: asyncio.AbstractEventLoop | None = None
        self.run_state = RunState.STARTING
        self.pending: Command | None = None  # the last key's command until the trainer confirms it
        self.stopping = False
        self.quit_reason: QuitReason | None = None
        self._interrupted = False  # Ctrl-C opened (or answered) the quit dialog
        self.errors: list[RunError] = []
        self._detach_requested = False
        self._last_toast: dict[str, float] = {}

    # -- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusLine(demo=self.demo, clock=self._clock, id="status")
        with TabbedContent(initial="training", id="panes"):
            with TabPane("1 Training", id="training"):
                yield TrainingPane(id="training-pane")
            with TabPane("2 Accuracy", id="accuracy"):
                yield AccuracyPane(id="accuracy-pane")
            with TabPane("3 GPU & host", id="system"):
                yield SystemPane(id="system-pane")
            with TabPane("4 Dataset", id="dataset"):
                yield DatasetPane(id="dataset-pane")
            with TabPane("5 Log", id="log"):
                yield EventLog(id="event-log")
            with TabPane("6 Noise", id="noise"):
                yield NoisePane(id="noise-pane")
        yield Footer()

    def on_mount(self) -> None:
        # Held, not queried: `App.query_one` searches the active screen, which is a dialog while
        # one is open, and events keep arriving then.
        self.status = self.query_one(StatusLine)
        self.event_log = self.query_one(EventLog)
        self.training_pane = self.query_one(TrainingPane)
        self.accuracy_pane = self.query_one(AccuracyPane)
        self.system_pane = self.query_one(SystemPane)
        self.dataset_pane = self.query_one(DatasetPane)
        self.noise_pane = self.query_one(NoisePane)
        self.tabs = self.query_one("#panes", TabbedContent)
        # (pane, the tab it lives in, whether it holds charts); the status line is always shown.
        self._panes = [(self.status, None, False), (self.training_pane, "training", True),
                       (self.accuracy_pane, "accuracy", True), (self.system_pane, "system", False),
                       (self.dataset_pane, "dataset", False), (self.noise_pane, "noise", True)]
        self._frames = Frames(self._panes, self._chart_interval, self._chart_budget)
        self._loop = asyncio.get_running_loop()
        if self.index is not None:
            self.dataset_pane.load_index(self.index)
            self.noise_pane.load_index(self.index)
        self.system_pane.start(self._telemetry, self._telemetry_interval)
        # All drawing happens here, at most 1/frame_interval times a second, however fast events come.
        self.set_interval(self._frame_interval, self._redraw)
        self._redraw()
        if self.relay is not None:
            self.relay.attach(self._forward)
        if self.runner is not None:
            self.runner.start()
        if self._detach_requested:
            self._quit_with(QuitReason.DETACHED)

    def _forward(self, event: Event) -> None:
        """The relay target; runs in the trainer's thread and must never block or raise."""
        try:
            self.post_message(TrainerEvent(event))
        except RuntimeError:
            # The app's loop has closed (it exited); the event still reached the run log.
            pass

    def _redraw(self) -> None:
        self._frames.draw(self.tabs.active)

    # -- trainer events --------------------------------------------------------------------------

    @on(TrainerEvent)
    def _on_trainer_event(self, message: TrainerEvent) -> None:
        event = message.event
        for tick in message.superseded:
            self.training_pane.apply(tick)
        for pane in (self.status, self.training_pane, self.accuracy_pane, self.event_log, self.noise_pane):
            pane.apply(event)
        if self.pending is not None and confirms(self.pending, event):
            self._set_pending(None)  # the trainer reports having done what the last key asked

        if isinstance(event, RunStarted):
            if self.index is None and event.summary:
                self.dataset_pane.load_summary(event.summary)
            self._set_state(RunState.RUNNING if self.run_state is RunState.STARTING else self.run_state)
        elif isinstance(event, StateChanged):
            self._set_state(event.state)
        elif isinstance(event, EvalResult):
            self.dataset_pane.set_class_accuracy(event.per_class_acc1)
            if event.manual:
                self.notify(f"Evaluation: Acc@1 {event.acc1:.2f}  Acc@5 {event.acc5:.2f}", title="Evaluated")
        elif isinstance(event, CheckpointSaved):
            if event.reason in ("manual", "stop"):
                self.notify(event.path, title="Checkpoint saved")
        elif isinstance(event, RunWarning):
            # Bad images can be reported every window for days: the log keeps every one, the
            # toast says it once in a while.
            now = time.monotonic()
            if now - self._last_toast.get(event.kind, float("-inf")) >= WARNING_TOAST_INTERVAL_S:
                self._last_toast[event.kind] = now
                self.notify(event.message, title=f"Warning ({event.kind})", severity="warning", timeout=8)
        elif isinstance(event, RunError):
            self.errors.append(event)
            self._set_state(RunState.ERROR)
            self.notify(event.message, title=f"Trainer error ({event.kind})", severity="error", timeout=30)
        elif isinstance(event, RunFinished):
            state = RunState.ERROR if event.reason == "error" or self.errors else RunState.FINISHED
            detail = event.reason + (", checkpoint failed" if event.checkpoint_failed else "")
            self._set_state(state, detail)
            if state is RunState.FINISHED and not self.stopping:
                self.notify(f"Run {event.reason}; press q to quit", title="Finished")

    def _set_state(self, state: RunState, detail: str = "") -> None:
        # An error stays visible until the user quits, whatever the trainer reports after it.
        if self.run_state is RunState.ERROR and state is not RunState.ERROR:
            return
        self.run_state = state
        self.status.set_state(state, detail)
        if state in ENDED and not self.stopping:
            self._set_pending(None)

    def _set_pending(self, command: Command | None) -> None:
        self.pending = command
        self.status.set_pending(FEEDBACK[command] if command is not None else "")

    @on(TelemetrySampleFailed)
    def _on_telemetry_failed(self, message: TelemetrySampleFailed) -> None:
        error = message.error
        self.event_log.note(f"telemetry sample failed: {type(error).__name__}: {error}", "yellow")

    @on(Worker.StateChanged)
    def _on_worker_state(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            self.notify(f"{type(error).__name__}: {error}", title="Console error", severity="error")
            if event.worker.group == "quit":
                self.exit(return_code=1)

    # -- keys ------------------------------------------------------------------------------------

    def _submit(self, command: Command) -> bool:
        if self.trainer is None:
            self.notify("No trainer attached to this console", severity="warning")
            return False
        if self.stopping:
            self.notify("Stopping: waiting for the trainer to end", severity="warning")
            return False
        if self.run_state in ENDED:
            self.notify(f"The run has ended ({self.run_state.value}); press q to quit", severity="warning")
            return False
        self.trainer.submit(command)
        self._set_pending(command)
        self.status.redraw()
        self.notify(FEEDBACK[command].capitalize())
        return True

    def action_toggle_pause(self) -> None:
        if self.run_state is RunState.PAUSED or self.pending is Command.PAUSE:
            self._submit(Command.RESUME)
        else:
            self._submit(Command.PAUSE)

    def action_checkpoint(self) -> None:
        self._submit(Command.CHECKPOINT)

    def action_evaluate(self) -> None:
        if self._submit(Command.EVALUATE):
            self.tabs.active = "accuracy"

    def action_show_pane(self, pane: str) -> None:
        self.tabs.active = pane

    def action_filter_dataset(self) -> None:
        self.action_show_pane("dataset")
        self.dataset_pane.action_focus_filter()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            focus = [b for b in Screen.BINDINGS if isinstance(b, Binding) and "focus" in b.action]
            self.push_screen(HelpScreen([("Console", self.BINDINGS),
                                         ("Dataset pane", [*DatasetPane.BINDINGS, *FilterTable.BINDINGS]),
                                         ("Focus and tabs", [*focus, *Tabs.BINDINGS])]))

    async def action_quit(self) -> None:
        # ctrl+q too must stop the trainer: its thread is not a daemon and would keep the
        # process alive after the UI had gone.
        self.action_request_quit()

    def action_request_quit(self) -> None:
        if self.stopping:
            self.notify("Already stopping: waiting for the trainer to end", severity="warning")
            return
        if isinstance(self.screen, QuitScreen):
            return
        if self._trainer_alive():
            self.push_screen(QuitScreen(running=True), self._quit_chosen)
        else:
            self._quit_with(QuitReason.ENDED)

    def action_interrupt(self) -> None:
        """Ctrl-C: the quit dialog; Ctrl-C while it is open: save a checkpoint and quit."""
        self._interrupted = True
        if isinstance(self.screen, QuitScreen):
            self.screen.dismiss(SAVE)
        else:
            self.action_request_quit()

    def _trainer_alive(self) -> bool:
        if self.trainer is None:
            return False
        if self.runner is not None:
            return self.runner.is_alive()
        return self.run_state not in ENDED

    def _quit_chosen(self, choice: str | None) -> None:
        interrupted, self._interrupted = self._interrupted, False
        if choice not in (SAVE, NO_SAVE):
            self.notify("Quit cancelled")
            return
        if not self._trainer_alive():
            self._quit_with(QuitReason.ENDED)
            return
        command = Command.STOP if choice == SAVE else Command.STOP_NO_SAVE
        self.trainer.submit(command)
        self.stopping = True
        self.quit_reason = (QuitReason.NOT_SAVED if choice == NO_SAVE
                            else QuitReason.INTERRUPTED if interrupted else QuitReason.SAVED)
        self._set_pending(command)
        self.status.redraw()
        self.notify(FEEDBACK[command].capitalize(), timeout=30)
        if self.runner is None:
            self._quit_with(self.quit_reason)
        else:
            self._wait_for_runner()

    def _quit_with(self, reason: QuitReason) -> None:
        self.quit_reason = reason
        self.exit(reason)

    @work(thread=True, exclusive=True, group="quit", exit_on_error=False)
    def _wait_for_runner(self) -> None:
        worker = get_current_worker()
        # Short joins so that the worker ends if the app is torn down some other way: a thread
        # worker cannot be cancelled, only asked to stop.
        while not worker.is_cancelled:
            if self.runner.join(timeout=0.2):
                self.post_message(RunnerJoined())
                return

    @on(RunnerJoined)
    def _on_runner_joined(self) -> None:
        self._quit_with(self.quit_reason)

    # -- hang-up ---------------------------------------------------------------------------------

    def detach(self) -> None:
        """End the UI but not the run; safe from a signal handler or any thread.

        The caller re-points the relay (e.g. at a headless printer) before or after; the
        trainer thread keeps running because the app never stops it on this path.
        """
        self._detach_requested = True  # a hang-up before the app has started: on_mount exits
        loop = self._loop
        if loop is None:
            return
        try:
            # call_soon_threadsafe wakes the loop at once, which a plain call from a signal
            # handler interrupting the loop's select() would not.
            loop.call_soon_threadsafe(self._quit_with, QuitReason.DETACHED)
        except RuntimeError:
            pass  # the loop has already closed: the app is gone
