"""Commands the console has asked for and not yet seen done: the header's feedback for each,
and which event is the trainer's report of having done it (its CommandApplied)."""

from __future__ import annotations

from core.events import Command, CommandApplied, Event

# What the header says after a key, until the trainer reports having done it.
FEEDBACK = {
    Command.PAUSE: "pause requested",
    Command.RESUME: "resume requested",
    Command.CHECKPOINT: "checkpoint requested",
    Command.EVALUATE: "evaluation requested",
    Command.STOP: "stopping… (saving a checkpoint)",
    Command.STOP_NO_SAVE: "stopping… (not saving)",
    Command.SET_LR: "learning rate change requested",
}


def confirms(command: Command, event: Event, token: str | None = None) -> bool:
    """Whether `event` is the trainer's report of having applied `command` (the one submitted
    with `token`, when one is given)."""
    if not isinstance(event, CommandApplied) or event.command != Command(command).value:
        return False
    return token is None or event.token == token
