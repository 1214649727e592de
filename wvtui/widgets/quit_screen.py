"""The quit dialog (save a checkpoint and quit, quit without saving, or cancel) and the reasons
the console can end for."""

from __future__ import annotations

import enum

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label

SAVE = "save"
NO_SAVE = "no_save"
CANCEL = "cancel"


class QuitReason(str, enum.Enum):
    """How the console ended: `TrainingApp.quit_reason`, and the value `app.run()` returns."""

    SAVED = "saved"  # the quit dialog's "save": the trainer stopped after a checkpoint
    NOT_SAVED = "not_saved"  # the quit dialog's "don't save": stopped without a checkpoint
    INTERRUPTED = "interrupted"  # Ctrl-C, then save (a second Ctrl-C or "s"): as SAVED, by Ctrl-C
    ENDED = "ended"  # quit after the run had already ended: nothing was stopped
    DETACHED = "detached"  # `detach()` (terminal hung up): the run goes on without the UI


class QuitScreen(ModalScreen[str]):
    """Dismisses with SAVE, NO_SAVE or CANCEL; every choice has a key so no mouse is needed."""

    BINDINGS = [
        Binding("s,y", "choose('save')", "Save and quit"),
        Binding("n", "choose('no_save')", "Quit without saving"),
        Binding("escape,c", "choose('cancel')", "Cancel"),
    ]

    def __init__(self, running: bool = True) -> None:
        super().__init__()
        self.running = running

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-dialog"):
            question = ("Quit? The trainer stops at the next step." if self.running
                        else "Quit? The run has already ended.")
            yield Label(question, id="quit-question")
            yield Button("Save a checkpoint and quit (s, ctrl+c)", variant="primary", id=SAVE)
            yield Button("Quit without saving (n)", variant="error", id=NO_SAVE)
            yield Button("Cancel (esc)", variant="default", id=CANCEL)

    def on_mount(self) -> None:
        self.query_one(f"#{SAVE}", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)
