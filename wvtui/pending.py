"""Commands the console has asked for and not yet seen done: the header's feedback for each,
and which event is the trainer's report of having done it (matched by value, not by text)."""

from __future__ import annotations

from core.events import CheckpointSaved, Command, EvalResult, Event

from .eventtext import is_pause, is_resume

# What the header says after a key, until the trainer reports having done it.
FEEDBACK = {
    Command.PAUSE: "pause requested",
    Command.RESUME: "resume requested",
    Command.CHECKPOINT: "checkpoint requested",
    Command.EVALUATE: "evaluation requested",
    Command.STOP: "stopping… (saving a checkpoint)",
    Command.STOP_NO_SAVE: "stopping… (not saving)",
}


def confirms(command: Command, event: Event) -> bool:
    """Whether `event` is the trainer's report of having done `command`."""
    if command is Command.PAUSE:
        return is_pause(event)
    if command is Command.RESUME:
        return is_resume(event)
    if command is Command.EVALUATE:
        return isinstance(event, EvalResult) and event.manual
    if command is Command.CHECKPOINT:
        return isinstance(event, CheckpointSaved) and event.reason == "manual"
    return False
