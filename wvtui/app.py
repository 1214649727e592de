"""The console: a Textual app showing a run's events and sending it commands by key.

The app reaches its run through a transport (`wvtui.transport`): in this process
(`LocalTransport`: the CLI's trainer, relay and runner thread) or over the run's control socket
(`SocketTransport`, `wvtui attach`). On mount it replays the run's history into every pane in
one go (charts and tables start complete), then shows live events as they come.

    app = TrainingApp(transport=LocalTransport(session), index=session.index)
    app = TrainingApp(transport=SocketTransport(ControlClient(out)))
    app.run()

`TrainingApp(trainer, runner, relay)` still builds the local transport from the parts. The app
never owns the trainer thread: when the terminal goes away the CLI re-points the relay at a
headless printer and calls `detach()`; the trainer keeps running. Without a transport (tests,
snapshots) events are fed with `app.post_message(TrainerEvent(ev))`.

How the console ended is `app.quit_reason` (a `QuitReason`, also what `app.run()` returns):
the CLI turns `QuitReason.INTERRUPTED` (Ctrl-C, then a checkpoint) into exit 130.
"""

from __future__ import annotations

import asyncio
import os
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
from .messages import (CommandReply, RunGone, RunnerJoined, TelemetryReceived, TelemetrySampleFailed,
                       TrainerEvent)
from .pending import FEEDBACK, confirms
from .transport import LocalTransport, TransportError, replay
from .widgets.accuracy_pane import AccuracyPane
from .widgets.dataset_pane import DatasetPane
from .widgets.event_log import EventLog
from .widgets.filter_table import FilterTable
from .widgets.help_screen import HelpScreen
from .widgets.noise_pane import NoisePane
from .widgets.quit_screen import DETACH, NO_SAVE, SAVE, QuitReason, QuitScreen
from .widgets.status_line import StatusLine
from .widgets.system_pane import SystemPane
from .widgets.training_pane import TrainingPane

# Once the trainer has reached one of these it takes no more commands.
ENDED = {RunState.FINISHED, RunState.ERROR}
WARNING_TOAST_INTERVAL_S = 30.0

PANE_KEYS = Binding.Group("Panes: training, accuracy, GPU & host, dataset, log, noise")


def short_path(path: str, out_dir: str | None) -> str:
    """A path as a toast shows it: relative to the run directory when inside it (a toast wraps
    a long path mid-word), else as given when short, else its last two parts."""
    if out_dir:
        try:
            rel = os.path.relpath(path, out_dir)
        except ValueError:
            rel = path
        if not rel.startswith(".."):
            return rel
    if len(path) <= 40:
        return path
    parent = os.path.basename(os.path.dirname(path))
    return os.path.join("…", parent, os.path.basename(path)) if parent else os.path.basename(path)


class TrainingApp(App):
    """Live view of one training run; keys p/c/e/d/q control it (see `HelpScreen` for all keys)."""

    CSS_PATH = "app.tcss"
    TITLE = "wvtui"
    BINDINGS = [
        Binding("p", "toggle_pause", "Pause/resume", tooltip="Pause or resume training (at the next step)"),
        Binding("c", "checkpoint", "Checkpoint", tooltip="Save a checkpoint now"),
        Binding("e", "evaluate", "Evaluate", tooltip="Evaluate on the validation set now"),
        Binding("d", "detach", "Detach", show=False,
                tooltip="Detach: close this console, the run goes on (wvtui attach OUT)"),
        Binding("q", "request_quit", "Quit", tooltip="Quit: asks whether to stop the run (with a checkpoint)"),
        # A priority binding: in raw mode Ctrl-C is a key, and Textual's own binding would only
        # show a "press ctrl+q" toast (and an Input's would copy text).
        Binding("ctrl+c", "interrupt", "Quit", show=False, priority=True,
                tooltip="The quit dialog; again: save and quit (attached: detach)"),
        Binding("l", "toggle_log_scale", "Log scale", show=False, tooltip="Loss chart: linear or log scale"),
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
        transport: Any = None,
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
        transport: how the app reaches its run (`wvtui.transport`); without one, trainer,
            runner and relay (any may be None) make a `LocalTransport`; with neither, the app
            only shows what is posted to it.
        telemetry: None samples with a `core.telemetry.TelemetrySampler`; an object with
            `.sample()` is used as the sampler; a fixed `Telemetry` is shown as is (no sampling).
            An attached console never samples: the run sends what its machine measures.
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
        if transport is None and trainer is not None:
            transport = LocalTransport(trainer=trainer, runner=runner, relay=relay)
        self.transport = transport
        self.attached = bool(getattr(transport, "attached", False))
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
        self.pending: Command | None = None  # the last key's command until the run reports it done
        self._pending_id: int | None = None  # its request id, attached
        self.stopping = False
        self.gone = False  # attached: the connection has closed
        self.quit_reason: QuitReason | None = None
        self._interrupted = False  # Ctrl-C opened (or answered) the quit dialog
        self.errors: list[RunError] = []
        self._detach_requested = False
        self._last_toast: dict[str, float] = {}
        # What the closing summary needs, kept as events arrive.
        # The run directory: the transport's (attached: absolute, from the run's hello), else as
        # RunStarted names it. Event paths are relative to the run's working directory, and
        # RunStarted.out_dir is in the same terms: toasts shorten paths against that.
        self.out_dir: str | None = getattr(transport, "out_dir", None)
        self._events_out: str | None = None
        self.config: dict = {}
        self.finished: RunFinished | None = None
        self.best: tuple[float, float] | None = None  # (Acc@1, Acc@5)
        self.epoch: int | None = None
        self.step: int | None = None

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
                yield EventLog(id="event-log", clock=self._clock)
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
        # Sampled by the run (attached) or by the process's one telemetry loop (in-process).
        if self.attached or (self._telemetry is None and getattr(self.transport, "telemetry_feed", None) is not None):
            self.system_pane.start("remote", self._telemetry_interval)
        else:
            self.system_pane.start(self._telemetry, self._telemetry_interval)
        if self.transport is not None:
            self._replay(self.transport.snapshot())
        # All drawing happens here, at most 1/frame_interval times a second, however fast events come.
        self.set_interval(self._frame_interval, self._redraw)
        self._redraw()
        if self.transport is not None:
            self.transport.start(self)
        if self._detach_requested:
            self._quit_with(QuitReason.DETACHED)

    def _run_dir(self) -> str:
        """The run directory as a toast or the summary shows it: short, so it wraps whole."""
        out = self.out_dir or "OUT"
        try:
            rel = os.path.relpath(out)
        except ValueError:
            return out
        return rel if len(rel) < len(out) else out

    def _redraw(self) -> None:
        self._frames.draw(self.tabs.active)

    def _replay(self, snapshot: dict) -> None:
        """The run so far, into every pane at once: no toasts, no drawing until the next frame."""
        events, bad = replay(snapshot)
        for event, when in events:
            self._apply(event, when, live=False)
        if bad:
            self.event_log.note(f"{bad} records of the run's history could not be read (newer wvtui?)", "yellow")
        if self.attached:
            try:
                state = RunState(snapshot.get("state"))
            except ValueError:
                state = None
            if state is not None:
                self._set_state(state)
            telemetry = snapshot.get("telemetry")
            if telemetry:
                from core.protocol import telemetry_from_dict

                try:
                    self.system_pane.apply(telemetry_from_dict(telemetry))
                except (TypeError, ValueError, KeyError, AttributeError):
                    pass
        elif events:
            # Earlier segments of a resumed run: their end is not this run's state.
            self.errors.clear()
            self.run_state = RunState.STARTING
            self.status.set_state(RunState.STARTING)
        if not self.config and isinstance(snapshot.get("config"), dict):
            self.config = snapshot["config"]

    # -- the run's events ------------------------------------------------------------------------

    @on(TrainerEvent)
    def _on_trainer_event(self, message: TrainerEvent) -> None:
        for tick in message.superseded:
            self.training_pane.apply(tick)
        self._apply(message.event, message.when, live=True)

    def _apply(self, event: Event, when: float | None, live: bool) -> None:
        if isinstance(event, RunStarted) and not live:
            # A resumed run's history holds every segment: each one starts afresh.
            self.errors.clear()
            self.run_state = RunState.STARTING
        # Each pane gets the time the run emitted the event: a replayed one is old.
        for pane in (self.status, self.training_pane, self.accuracy_pane, self.event_log, self.noise_pane):
            pane.apply(event, when)
        self._keep(event)
        if self.pending is not None and not self.stopping and confirms(self.pending, event):
            # The run's CommandApplied for it, whichever console sent it: the effect is the same.
            # A stop's "stopping…" stays until the run has ended.
            self._set_pending(None)

        if isinstance(event, RunStarted):
            if self.index is None and event.summary:
                self.dataset_pane.load_summary(event.summary)
            self._set_state(RunState.RUNNING if self.run_state is RunState.STARTING else self.run_state)
        elif isinstance(event, StateChanged):
            self._set_state(event.state)
        elif isinstance(event, EvalResult):
            self.dataset_pane.set_class_accuracy(event.per_class_acc1)
            if event.manual and live:
                self.notify(f"Acc@1 {event.acc1:.2f}  Acc@5 {event.acc5:.2f}", title="Evaluated")
        elif isinstance(event, CheckpointSaved):
            if event.reason in ("manual", "stop") and live:
                self.notify(short_path(event.path, self._events_out), title="Checkpoint saved")
        elif isinstance(event, RunWarning):
            # Bad images can be reported every window for days: the log keeps every one, the
            # toast says it once in a while.
            now = time.monotonic()
            if live and now - self._last_toast.get(event.kind, float("-inf")) >= WARNING_TOAST_INTERVAL_S:
                self._last_toast[event.kind] = now
                self.notify(event.message, title=f"Warning ({event.kind})", severity="warning", timeout=8)
        elif isinstance(event, RunError):
            self.errors.append(event)
            self._set_state(RunState.ERROR)
            if live:
                self.notify(event.message, title=f"Trainer error ({event.kind})", severity="error", timeout=30)
        elif isinstance(event, RunFinished):
            state = RunState.ERROR if event.reason == "error" or self.errors else RunState.FINISHED
            detail = event.reason + (", checkpoint failed" if event.checkpoint_failed else "")
            self._set_state(state, detail)
            if state is RunState.FINISHED and not self.stopping and live:
                self.notify(f"Run {event.reason}; press q to quit", title="Finished")

    def _keep(self, event: Event) -> None:
        """What the summary printed after the console closes says."""
        if isinstance(event, RunStarted):
            self._events_out = event.out_dir
            if not self.attached:
                self.out_dir = event.out_dir or self.out_dir
            self.config = dict(event.config or {})
            self.finished = None
        elif isinstance(event, (EvalResult, RunFinished)):
            if event.best_acc1 == event.best_acc1:  # not NaN
                self.best = (event.best_acc1, event.best_acc5)
            if isinstance(event, RunFinished):
                self.finished = event
        step = getattr(event, "step", None)
        if isinstance(step, int) and hasattr(event, "epoch"):
            self.epoch, self.step = event.epoch, step

    def _set_state(self, state: RunState, detail: str = "") -> None:
        # An error stays visible until the user quits, whatever the trainer reports after it.
        if self.run_state is RunState.ERROR and state is not RunState.ERROR:
            return
        self.run_state = state
        self.status.set_state(state, detail)
        if state in ENDED and not self.stopping:
            self._set_pending(None)

    def _set_pending(self, command: Command | None, request: int | None = None) -> None:
        self.pending = command
        self._pending_id = request
        self.status.set_pending(FEEDBACK[command] if command is not None else "")

    @on(TelemetryReceived)
    def _on_telemetry(self, message: TelemetryReceived) -> None:
        self.system_pane.apply(message.telemetry)

    @on(TelemetrySampleFailed)
    def _on_telemetry_failed(self, message: TelemetrySampleFailed) -> None:
        error = message.error
        self.event_log.note(f"telemetry sample failed: {type(error).__name__}: {error}", "yellow")

    @on(CommandReply)
    def _on_command_reply(self, message: CommandReply) -> None:
        reply = message.reply
        mine = reply.get("id") is not None and reply.get("id") == self._pending_id
        if reply.get("type") == "error":
            self.notify(str(reply.get("error") or "refused"), title="The run refused", severity="error")
            if mine or reply.get("id") is None and not self.stopping:
                self._set_pending(None)
            if self.stopping and mine:
                self.stopping = False
        elif mine and not self.stopping:
            self._set_pending(None)

    @on(RunGone)
    def _on_run_gone(self, message: RunGone) -> None:
        self.gone = True
        if self.stopping:
            self._quit_with(self.quit_reason or QuitReason.SAVED)
            return
        if message.alive:
            # This console was dropped (too slow, or the server closed it); the run did not end.
            self._set_pending(None)
            self.status.set_pending("disconnected: the run goes on")
            self.notify(f"The run goes on: wvtui attach {self._run_dir()}; q quits",
                        title="Disconnected", severity="warning", timeout=30)
        elif self.run_state in ENDED:
            self.notify("Press q to quit", title="The run has ended")
        else:
            self._set_state(RunState.ERROR, "the run's process is gone")
            self.notify(f"Its process ended without finishing ({message.reason}); q quits",
                        title="The run is gone", severity="error", timeout=30)

    @on(Worker.StateChanged)
    def _on_worker_state(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            self.notify(f"{type(error).__name__}: {error}", title="Console error", severity="error")
            if event.worker.group == "quit":
                self.exit(return_code=1)

    # -- keys ------------------------------------------------------------------------------------

    def _submit(self, command: Command) -> bool:
        if self.transport is None or not self.transport.accepts_commands:
            self.notify("No trainer attached to this console", severity="warning")
            return False
        if self.stopping:
            self.notify("Stopping: waiting for the trainer to end", severity="warning")
            return False
        if self.run_state in ENDED:
            self.notify(f"The run has ended ({self.run_state.value}); press q to quit", severity="warning")
            return False
        if self.gone:
            self.notify("Not connected to the run any more; press q to quit", severity="warning")
            return False
        try:
            request = self.transport.submit(command)
        except TransportError as exc:
            self.notify(f"Could not send {command.value}: {exc}", severity="error")
            return False
        self._set_pending(command, request)
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

    def action_toggle_log_scale(self) -> None:
        self.training_pane.toggle_log_scale()
        self.tabs.active = "training"

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

    def action_detach(self) -> None:
        if self.attached:
            self._detach_now()
        elif self.transport is not None and self.transport.running() is not False:
            # This process is the run: closing it would end training. A hang-up does not.
            self.notify(f"Close the terminal instead: the run goes on headless, and "
                        f"wvtui attach {self._run_dir()} brings the console back.",
                        title="The run is this process", timeout=15)
        else:
            self.notify("Nothing to detach from; q quits", severity="warning")

    def _detach_now(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._quit_with(QuitReason.DETACHED)

    async def action_quit(self) -> None:
        # ctrl+q too must stop the trainer: its thread is not a daemon and would keep the
        # process alive after the UI had gone.
        self.action_request_quit()

    def action_request_quit(self) -> None:
        if self.stopping:
            self.notify("Already stopping: waiting for the trainer to end"
                        + ("; d detaches" if self.attached else ""), severity="warning")
            return
        if isinstance(self.screen, QuitScreen):
            return
        if self._run_alive():
            self.push_screen(QuitScreen(running=True, attached=self.attached), self._quit_chosen)
        else:
            self._quit_with(QuitReason.ENDED)

    def action_interrupt(self) -> None:
        """Ctrl-C: the quit dialog; Ctrl-C while it is open: save a checkpoint and quit (an
        attached console detaches: killing a console must never stop the run)."""
        self._interrupted = True
        if isinstance(self.screen, QuitScreen):
            self.screen.dismiss(DETACH if self.attached else SAVE)
        else:
            self.action_request_quit()

    def _run_alive(self) -> bool:
        if self.transport is None or self.gone:
            return False
        running = self.transport.running()
        if running is None:
            return self.run_state not in ENDED
        return running and not (self.attached and self.run_state in ENDED)

    def _quit_chosen(self, choice: str | None) -> None:
        interrupted, self._interrupted = self._interrupted, False
        if choice == DETACH and self.attached:
            self._detach_now()
            return
        if choice not in (SAVE, NO_SAVE):
            self.notify("Quit cancelled")
            return
        if not self._run_alive():
            self._quit_with(QuitReason.ENDED)
            return
        command = Command.STOP if choice == SAVE else Command.STOP_NO_SAVE
        try:
            request = self.transport.submit(command)
        except TransportError as exc:
            self.notify(f"Could not send {command.value}: {exc}", severity="error")
            return
        self.stopping = True
        self.quit_reason = (QuitReason.NOT_SAVED if choice == NO_SAVE
                            else QuitReason.INTERRUPTED if interrupted and not self.attached else QuitReason.SAVED)
        self._set_pending(command, request)
        self.status.redraw()
        self.notify(FEEDBACK[command].capitalize(), timeout=30)
        if self.attached:
            return  # the connection closes once the run has ended: RunGone quits
        if getattr(self.transport, "runner", None) is None:
            self._quit_with(self.quit_reason)
        else:
            self._wait_for_runner()

    def _quit_with(self, reason: QuitReason) -> None:
        self.quit_reason = reason
        if self.transport is not None and not self.attached:
            self.transport.close()  # in-process: the samples stop; the run is the front end's to end
        self.exit(reason)

    @work(thread=True, exclusive=True, group="quit", exit_on_error=False)
    def _wait_for_runner(self) -> None:
        worker = get_current_worker()
        # Short joins so that the worker ends if the app is torn down some other way: a thread
        # worker cannot be cancelled, only asked to stop.
        while not worker.is_cancelled:
            if self.transport.join(timeout=0.2):
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

    # -- after the console has closed ------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        """What `wvtui attach` prints once the console has closed (the in-process console prints
        `closing_summary` from its session, which saw the run to its end)."""
        running = self.quit_reason is QuitReason.DETACHED and not self.gone
        if self.finished is not None:
            state = ENDED_AS.get(self.finished.reason, self.finished.reason)
        elif running:
            state = "running"
        elif self.run_state is RunState.ERROR:
            state = self.status.detail or "failed"
        else:
            state = self.run_state.value
        return closing_summary(state=state, out_dir=self._run_dir(), root=self.config.get("root"),
                               best=self.best, epoch=self.epoch, step=self.step, running=running,
                               completed=self.finished is not None and self.finished.reason == "completed")


# RunFinished.reason as the closing summary says it.
ENDED_AS = {"completed": "finished", "error": "failed", "nonfinite": "stopped on a non-finite loss"}


def closing_summary(*, state: str, out_dir: str | None, root: str | None, best: tuple[float, float] | None,
                    epoch: int | None, step: int | None, running: bool, completed: bool = False) -> list[str]:
    """The lines printed after a console closes, as headless ends its log: how the run stands,
    its best accuracy, where it lives and the one command that comes next."""
    where = f" at epoch {epoch}, step {step:,}" if epoch is not None and step is not None else ""
    lines = [f"wvtui: {'the run goes on' if running else 'run ' + state}{where}"]
    lines.append("  best    " + (f"Acc@1 {best[0]:.3f}  Acc@5 {best[1]:.3f}" if best else "no evaluation yet"))
    out = out_dir or "OUT"
    lines.append(f"  run dir {out}")
    if running:
        lines.append(f"  attach  wvtui attach {out}")
    elif completed:
        lines.append(f"  report  wvtui report {out}")
    else:
        lines.append(f"  resume  wvtui --root {root or '...'} --out {out} --resume auto")
    return lines
