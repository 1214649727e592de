"""Messages that carry the trainer's events and background results into the Textual app."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from core.events import Event, StepStats


class TrainerEvent(Message):
    """One trainer event, posted from the trainer's thread with `post_message` (never blocks it)."""

    def __init__(self, event: Event) -> None:
        self.event = event
        super().__init__()

    def can_replace(self, message: Message) -> bool:
        # A busy queue keeps only the newest tick: step stats are cumulative snapshots, so an
        # older one adds nothing once a newer one is waiting. Every other event is kept.
        return (
            isinstance(self.event, StepStats)
            and isinstance(message, TrainerEvent)
            and isinstance(message.event, StepStats)
        )


class TelemetrySampled(Message):
    """A telemetry snapshot taken by the sampling worker."""

    def __init__(self, telemetry: Any) -> None:
        self.telemetry = telemetry
        super().__init__()


class RunnerJoined(Message):
    """The trainer thread has ended after a quit request; the app may exit."""
