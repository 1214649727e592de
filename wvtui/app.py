"""The console: a Textual app showing a `Trainer`'s events and sending it commands by key.

The app never owns the trainer thread. The CLI builds the trainer, a `Relay` and a
`TrainerRunner`; the app points the relay at itself on mount (events arrive by `post_message`,
which never blocks the trainer) and starts the runner. When the terminal goes away the CLI
re-points the relay at a headless printer and calls `detach()`; the trainer keeps running.

    app = TrainingApp(trainer, runner, relay, index=index)
    app.run()

Without a trainer (tests, snapshots) events are fed with `app.post_message(TrainerEvent(ev))`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, TabbedContent, TabPane
from textual.worker import Worker, WorkerState, get_current_worker

from core.events import (CheckpointSaved, Command, EvalResult, Event, Paused, Resumed, RunError,
                         RunFinished, RunStarted, RunState, RunWarning, StateChanged)

from core.telemetry import TelemetrySampler

from .messages import RunnerJoined, TelemetrySampled, TrainerEvent
from .widgets.accuracy_pane import AccuracyPane
from .widgets.dataset_pane import DatasetPane
from .widgets.event_log import EventLog
from .widgets.help_screen import HelpScreen
from .widgets.quit_screen import NO_SAVE, SAVE, QuitScreen
from .widgets.status_line import StatusLine
from .widgets.system_pane import SystemPane
from .widgets.training_pane import TrainingPane

PANES = ["training", "accuracy", "system", "dataset", "log"]

# Once the trainer has reached one of these it takes no more commands.
ENDED = {"finished", "error"}
WARNING_TOAST_INTERVAL_S = 30.0


class TrainingApp(App):
    """Live view of one training run; keys p/c/e/q control it (see `HelpScreen` for all keys)."""

    CSS_PATH = "app.tcss"
    TITLE = "wvtui"
    BINDINGS = [
        Binding("p", "toggle_pause", "Pause/resume"),
        Binding("c", "checkpoint", "Checkpoint"),
        Binding("e", "evaluate", "Evaluate"),
        Binding("q", "request_quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("1", "show_pane('training')", "Training", show=False),
        Binding("2", "show_pane('accuracy')", "Accuracy", show=False),
        Binding("3", "show_pane('system')", "GPU", show=False),
        Binding("4", "show_pane('dataset')", "Dataset", show=False),
        Binding("5", "show_pane('log')", "Log", show=False),
        Binding("slash", "filter_dataset", "Filter", show=False),
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
        self._telemetry_arg = telemetry
        self._sampler: Any = None
        self._owns_sampler = False
        self._sampling = False
        self._telemetry_interval = telemetry_interval
        self._frame_interval = frame_interval
        self._chart_interval = chart_interval
        self._chart_budget = chart_budget
        self._loop: asyncio.AbstractEventLoop | None = None
        self.run_state = "starting"
        self.stopping = False
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
        self.tabs = self.query_one("#panes", TabbedContent)
        # (pane, the tab it lives in, whether it holds charts); the status line is always shown.
        self._panes = [(self.status, None, False), (self.training_pane, "training", True),
                       (self.accuracy_pane, "accuracy", True), (self.system_pane, "system", False),
                       (self.dataset_pane, "dataset", False)]
        self._drawn_at: dict[int, float] = {}
        self._loop = asyncio.get_running_loop()
        if self.index is not None:
            self.dataset_pane.load_index(self.index)
        self._start_telemetry()
        # All drawing happens here, at most 1/frame_interval times a second, however fast events come.
        self.set_interval(self._frame_interval, self._redraw)
        self._redraw()
        if self.relay is not None:
            self.relay.attach(self._forward)
        if self.runner is not None:
            self.runner.start()
        if self._detach_requested:
            self.exit()

    def on_unmount(self) -> None:
        if self._owns_sampler and self._sampler is not None:
            self._sampler.close()

    def _forward(self, event: Event) -> None:
        """The relay target; runs in the trainer's thread and must never block or raise."""
        try:
            self.post_message(TrainerEvent(event))
        except RuntimeError:
            # The app's loop has closed (it exited); the event still reached the run log.
            pass

    def _redraw(self) -> None:
        # Panes in hidden tabs stay dirty and catch up on the first frame after they are shown,
        # so a long run spends nothing on charts nobody is looking at.
        active = self.tabs.active
        now = time.monotonic()
        for pane, tab, charts in self._panes:
            if not (pane.is_attached and (tab is None or tab == active)):
                continue
            if pane.dirty:
                pane.redraw()
            if (charts and pane.chart_dirty
                    and now - self._drawn_at.get(id(pane), float("-inf")) >= self._chart_wait(pane)):
                self._drawn_at[id(pane)] = now
                pane.redraw_chart()

    def _chart_wait(self, pane: Any) -> float:
        wait = self._chart_interval
        if self._chart_budget:
            wait = max(wait, pane.chart.build_seconds / self._chart_budget)
        return wait

    # -- trainer events --------------------------------------------------------------------------

    @on(TrainerEvent)
    def _on_trainer_event(self, message: TrainerEvent) -> None:
        event = message.event
        status = self.status
        for tick in message.superseded:
            self.training_pane.apply(tick)
        for pane in (status, self.training_pane, self.accuracy_pane):
            pane.apply(event)
        self.event_log.apply(event)
        self._confirm(event)

        if isinstance(event, RunStarted):
            if self.index is None and event.summary:
                self.dataset_pane.load_summary(event.summary)
            self._set_state(RunState.RUNNING.value if self.run_state == "starting" else self.run_state)
        elif isinstance(event, StateChanged):
            self._set_state(event.state.value)
        elif isinstance(event, Paused):
            self._set_state(RunState.PAUSED.value)
        elif isinstance(event, Resumed):
            self._set_state(RunState.RUNNING.value)
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
            self._set_state(RunState.ERROR.value)
            self.notify(event.message, title=f"Trainer error ({event.kind})", severity="error", timeout=30)
        elif isinstance(event, RunFinished):
            state = RunState.ERROR.value if event.reason == "error" or self.errors else RunState.FINISHED.value
            self._set_state(state, event.reason)
            if state == RunState.FINISHED.value and not self.stopping:
                self.notify(f"Run {event.reason}; press q to quit", title="Finished")

    def _set_state(self, state: str, detail: str = "") -> None:
        # An error stays visible until the user quits, whatever the trainer reports after it.
        if self.run_state == RunState.ERROR.value and state != RunState.ERROR.value:
            return
        self.run_state = state
        self.status.set_state(state, detail)
        if state in ENDED and not self.stopping:
            self.status.set_pending("")

    def _confirm(self, event: Event) -> None:
        """Clear the header's "… requested" once the trainer reports having done it."""
        pending = self.status.pending
        done = (
            (isinstance(event, Paused) and pending.startswith("pause"))
            or (isinstance(event, Resumed) and pending.startswith("resume"))
            or (isinstance(event, EvalResult) and event.manual and pending.startswith("evaluation"))
            or (isinstance(event, CheckpointSaved) and event.reason == "manual" and pending.startswith("checkpoint"))
        )
        if done:
            self.status.set_pending("")

    # -- telemetry -------------------------------------------------------------------------------

    def _start_telemetry(self) -> None:
        arg = self._telemetry_arg
        pane = self.system_pane
        if arg is None:
            self._sampler, self._owns_sampler = TelemetrySampler(), True
        elif hasattr(arg, "sample"):
            self._sampler = arg
        else:  # a fixed Telemetry snapshot
            pane.apply(arg)
            return
        self._sample_telemetry()
        self.set_interval(self._telemetry_interval, self._sample_telemetry)

    def _sample_telemetry(self) -> None:
        if not self._sampling:  # a slow NVML call must not pile up threads
            self._sampling = True
            self._telemetry_worker()

    @work(thread=True, group="telemetry", exit_on_error=False)
    def _telemetry_worker(self) -> None:
        try:
            telemetry = self._sampler.sample()
        finally:
            self._sampling = False
        self.post_message(TelemetrySampled(telemetry))

    @on(TelemetrySampled)
    def _on_telemetry(self, message: TelemetrySampled) -> None:
        self.system_pane.apply(message.telemetry)

    @on(Worker.StateChanged)
    def _on_worker_state(self, event: Worker.StateChanged) -> None:
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        if event.worker.group == "telemetry":
            # Sampling failed once; the next tick tries again. Say so in the log, not in a toast
            # every second.
            self.event_log.note(f"telemetry sample failed: {type(error).__name__}: {error}", "yellow")
        else:
            self.notify(f"{type(error).__name__}: {error}", title="Console error", severity="error")
            if event.worker.group == "quit":
                self.exit(return_code=1)

    # -- keys ------------------------------------------------------------------------------------

    def _submit(self, command: Command, feedback: str) -> bool:
        if self.trainer is None:
            self.notify("No trainer attached to this console", severity="warning")
            return False
        if self.stopping:
            self.notify("Stopping: waiting for the trainer to end", severity="warning")
            return False
        if self.run_state in ENDED:
            self.notify(f"The run has ended ({self.run_state}); press q to quit", severity="warning")
            return False
        self.trainer.submit(command)
        self.status.set_pending(feedback)
        self.status.redraw()
        self.notify(feedback.capitalize())
        return True

    def action_toggle_pause(self) -> None:
        if self.run_state == RunState.PAUSED.value or self.status.pending == "pause requested":
            self._submit(Command.RESUME, "resume requested")
        else:
            self._submit(Command.PAUSE, "pause requested")

    def action_checkpoint(self) -> None:
        self._submit(Command.CHECKPOINT, "checkpoint requested")

    def action_evaluate(self) -> None:
        if self._submit(Command.EVALUATE, "evaluation requested"):
            self.tabs.active = "accuracy"

    def action_show_pane(self, pane: str) -> None:
        self.tabs.active = pane

    def action_filter_dataset(self) -> None:
        self.action_show_pane("dataset")
        self.dataset_pane.action_focus_filter()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

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
            self.exit()

    def _trainer_alive(self) -> bool:
        if self.trainer is None:
            return False
        if self.runner is not None:
            return self.runner.is_alive()
        return self.run_state not in ENDED

    def _quit_chosen(self, choice: str | None) -> None:
        if choice not in (SAVE, NO_SAVE):
            self.notify("Quit cancelled")
            return
        if not self._trainer_alive():
            self.exit()
            return
        self.trainer.submit(Command.STOP if choice == SAVE else Command.STOP_NO_SAVE)
        self.stopping = True
        text = "stopping… (saving a checkpoint)" if choice == SAVE else "stopping… (not saving)"
        self.status.set_pending(text)
        self.status.redraw()
        self.notify(text.capitalize(), timeout=30)
        if self.runner is None:
            self.exit()
        else:
            self._wait_for_runner()

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
        self.exit()

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
            loop.call_soon_threadsafe(self.exit)
        except RuntimeError:
            pass  # the loop has already closed: the app is gone
