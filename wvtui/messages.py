"""Messages that carry the trainer's events, the attached run's replies and background results
into the Textual app. Every one is posted from another thread with `post_message`, which never
blocks the poster (the trainer's thread, or a transport's reader)."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from core.events import Event, StepStats


class TrainerEvent(Message):
    """One trainer event, posted from the trainer's thread with `post_message` (never blocks it)."""

    def __init__(self, event: Event, when: float | None = None) -> None:
        self.event = event
        self.when = when  # unix seconds the run emitted it (attached); None: now
        # Older ticks this one replaced in a busy queue: the loss chart still plots their points.
        self.superseded: tuple[StepStats, ...] = ()
        super().__init__()

    def can_replace(self, message: Message) -> bool:
        # A busy queue keeps only the newest tick: the status line and progress bars only need
        # the latest snapshot. The newer message carries the older ticks for the loss history.
        replaceable = (
            isinstance(self.event, StepStats)
            and isinstance(message, TrainerEvent)
            and isinstance(message.event, StepStats)
        )
        if replaceable:
            message.superseded = (*self.superseded, self.event, *message.superseded)
        return replaceable


class TelemetrySampled(Message):
    """A telemetry snapshot taken by the sampling worker."""

    def __init__(self, telemetry: Any) -> None:
        self.telemetry = telemetry
        super().__init__()


class TelemetrySampleFailed(Message):
    """The system pane's sampler raised; it tries again at its next tick."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        super().__init__()


class RunnerJoined(Message):
    """The trainer thread has ended after a quit request; the app may exit."""


class TelemetryReceived(Message):
    """A telemetry snapshot the attached run sampled (the GPU is on its machine, not here)."""

    def __init__(self, telemetry: Any) -> None:
        self.telemetry = telemetry
        super().__init__()


class CommandReply(Message):
    """The run's "done" or "error" reply to a command this console sent (a protocol message)."""

    def __init__(self, reply: dict) -> None:
        self.reply = reply
        super().__init__()


class RunGone(Message):
    """The attached run's connection has closed: the run ended, or its process is gone."""

    def __init__(self, reason: str, alive: bool) -> None:
        self.reason = reason
        self.alive = alive  # the run's process still exists (this console was dropped)
        super().__init__()
