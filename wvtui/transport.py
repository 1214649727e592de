"""How the console reaches its run: in this process (`LocalTransport`) or over the run's control
socket (`SocketTransport`, `wvtui attach`). The app sees the same things either way:

    snapshot()        the run so far: {"records": [...], "noise_details", "state", "config", "telemetry"}
    start(app)        from now on, post each event (TrainerEvent), telemetry (TelemetryReceived),
                      command reply (CommandReply) and the end of the connection (RunGone) to the app
    submit(command)   ask the run for a command (when `accepts_commands`); it answers with a
                      CommandApplied event
    running()         whether the run still goes on (None: this transport cannot tell)
    join(timeout)     wait for the run (or the connection) to end; True once it has
    close()           stop delivering; an attached console's run goes on

Nothing here blocks the trainer: the local relay posts to the app's queue, and the socket's
reader thread only ever posts.
"""

from __future__ import annotations

import threading
from typing import Any

from core.events import Command, Event, event_from_record

from .messages import CommandReply, RunGone, TelemetryReceived, TrainerEvent

class TransportError(Exception):
    """A command could not reach the run (its connection is gone); str() says why in one line."""


EMPTY = {"records": [], "noise_details": None, "state": None, "config": None, "telemetry": None}


def _post(app: Any, message: Any) -> None:
    try:
        app.post_message(message)
    except RuntimeError:
        pass  # the app's loop has closed (it exited); nothing is waiting for this any more


class LocalTransport:
    """The run in this process: the relay feeds the app, commands go straight to the trainer."""

    attached = False

    def __init__(self, session: Any = None, *, trainer: Any = None, runner: Any = None, relay: Any = None,
                 history: Any = None) -> None:
        """session: a `wvtui.session.Session` (its trainer, runner, relay and history); or the
        parts given one by one (tests, benchmarks). history: a `core.history.RunHistory`."""
        if session is not None:
            trainer, runner, relay = session.trainer, session.runner, session.relay
            history = getattr(session, "history", None)
        self.trainer = trainer
        self.runner = runner
        self.relay = relay
        self.history = history
        # The process's telemetry loop (shared with the control endpoint), when the session has one.
        self.telemetry_feed = getattr(session, "telemetry_feed", None)
        self._unsubscribe: Any = None

    @property
    def out_dir(self) -> str | None:
        return getattr(self.trainer, "out_dir", None)

    @property
    def accepts_commands(self) -> bool:
        return self.trainer is not None

    def snapshot(self) -> dict:
        # Taken before the relay points at the app and the runner starts, so nothing is both
        # replayed and delivered live (a resumed run's history is its earlier segments).
        if self.history is None:
            return dict(EMPTY)
        return {**EMPTY, **self.history.snapshot()}

    def start(self, app: Any) -> None:
        if self.relay is not None:
            self.relay.attach(lambda event: _post(app, TrainerEvent(event)))
        if self.telemetry_feed is not None:
            self._unsubscribe = self.telemetry_feed.subscribe(lambda t: _post(app, TelemetryReceived(t)))
        if self.runner is not None:
            self.runner.start()

    def submit(self, command: Command, value: float | None = None) -> None:
        if value is None:
            self.trainer.submit(command)
        else:
            self.trainer.submit(command, value=value)

    def running(self) -> bool | None:
        if self.trainer is None:
            return False
        return self.runner.is_alive() if self.runner is not None else None

    def join(self, timeout: float | None = None) -> bool:
        return self.runner.join(timeout) if self.runner is not None else True

    def close(self) -> None:
        # The run is this process: the front end decides what happens to it. Only the samples stop.
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()


class SocketTransport:
    """A run in another process, through a connected `core.client.ControlClient`."""

    attached = True
    accepts_commands = True

    def __init__(self, client: Any) -> None:
        self.client = client
        self.hello: dict = client.hello
        self.out_dir: str | None = self.hello.get("out_dir")
        self.pid: int | None = self.hello.get("pid")
        self.bye: str | None = None  # the run's last word ("run ended")
        self.unreadable = 0  # event messages that were no event this console knows
        self._ended = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    def snapshot(self) -> dict:
        h = self.hello
        return {"records": list(h.get("history") or ()), "noise_details": h.get("noise_details"),
                "state": h.get("state"), "config": h.get("config"), "telemetry": h.get("telemetry")}

    def start(self, app: Any) -> None:
        # A daemon: a connection that never closes must not keep `wvtui attach` alive.
        self._thread = threading.Thread(target=self._read, args=(app,), name="wvtui-attach-reader", daemon=True)
        self._thread.start()

    def _read(self, app: Any) -> None:
        reason = "the connection closed"
        try:
            while True:
                message = self.client.recv(None)
                if message is None:
                    break
                self._deliver(app, message)
        except Exception as exc:  # noqa: BLE001 - garbage, a reset: the console must still hear of it
            reason = f"the connection failed: {exc}"
        finally:
            self._ended.set()
        if not self._closing:
            if self.bye:
                reason = self.bye
            _post(app, RunGone(reason, alive=self._process_alive()))

    def _deliver(self, app: Any, message: dict) -> None:
        kind = message.get("type")
        if kind == "event":
            try:
                event = event_from_record(message.get("record"))
            except ValueError:
                self.unreadable += 1  # a newer run's event: the log file still has it
                return
            _post(app, TrainerEvent(event, message.get("time")))
        elif kind == "telemetry":
            from core.protocol import telemetry_from_dict

            try:
                telemetry = telemetry_from_dict(message.get("telemetry"))
            except (TypeError, ValueError, KeyError, AttributeError):
                return
            _post(app, TelemetryReceived(telemetry))
        elif kind in ("done", "error"):
            _post(app, CommandReply(message))
        elif kind == "bye":
            self.bye = str(message.get("reason") or "the run ended")

    def _process_alive(self) -> bool:
        """Whether the run still serves its socket: then only this console was dropped. (Its pid
        alone would not say: a killed run is a zombie until its parent reaps it.)"""
        from core.runinfo import live_pid

        return bool(self.out_dir) and live_pid(self.out_dir) is not None

    def submit(self, command: Command, value: float | None = None) -> int:
        """The request id; the run answers "done" with it once applied."""
        from core.client import NotLive

        try:
            return self.client.send(Command(command).value, value)
        except (NotLive, OSError) as exc:
            raise TransportError(str(exc)) from None

    def running(self) -> bool:
        return not self._ended.is_set()

    def join(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)

    def close(self) -> None:
        """Detach: the reader ends (the client's close wakes its blocked recv) and the run goes on."""
        self._closing = True
        self.client.close()


def replay(snapshot: dict) -> tuple[list[tuple[Event, float | None]], int]:
    """The events of a snapshot's history with their times, and how many records were unreadable."""
    events: list[tuple[Event, float | None]] = []
    bad = 0
    for record in snapshot.get("records") or ():
        try:
            events.append((event_from_record(record), record.get("time")))
        except (ValueError, AttributeError):
            bad += 1
    details = snapshot.get("noise_details")
    if details:
        try:
            events.append((event_from_record(details), None))
        except (ValueError, AttributeError):
            bad += 1
    return events, bad
