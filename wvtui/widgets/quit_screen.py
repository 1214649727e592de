"""The quit dialog and the reasons the console can end for.

In the training process: save a checkpoint and quit, quit without saving, or cancel. In an
attached console (`wvtui attach`) quitting need not end the run: stop it after a checkpoint,
detach (the run goes on), or cancel."""

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
DETACH = "detach"
CANCEL = "cancel"


class QuitReason(str, enum.Enum):
    """How the console ended: `TrainingApp.quit_reason`, and the value `app.run()` returns."""

    SAVED = "saved"  # the quit dialog's "save": the trainer stopped after a checkpoint
    NOT_SAVED = "not_saved"  # the quit dialog's "don't save": stopped without a checkpoint
    INTERRUPTED = "interrupted"  # Ctrl-C, then save (a second Ctrl-C or "s"): as SAVED, by Ctrl-C
    ENDED = "ended"  # quit after the run had already ended: nothing was stopped
    DETACHED = "detached"  # `d`, the dialog's detach, or a hang-up: the run goes on without this UI


class QuitScreen(ModalScreen[str]):
    """Dismisses with SAVE, NO_SAVE (or DETACH, attached) or CANCEL; every choice has a key so
    no mouse is needed."""

    BINDINGS = [
        Binding("s,y", "choose('save')", "Save and quit"),
        Binding("n", "choose('no_save')", "Quit without saving"),
        Binding("d", "choose('detach')", "Detach"),
        Binding("escape,c", "choose('cancel')", "Cancel"),
    ]

    def __init__(self, running: bool = True, attached: bool = False) -> None:
        super().__init__()
        self.running = running
        self.attached = attached

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-dialog"):
            if self.attached:
                yield Label("Quit? Detaching leaves the run going.", id="quit-question")
                yield Button("Stop the run after a checkpoint (s)", variant="warning", id=SAVE)
                yield Button("Detach: the run goes on (d, ctrl+c)", variant="primary", id=DETACH)
            else:
                question = ("Quit? The trainer stops at the next step." if self.running
                            else "Quit? The run has already ended.")
                yield Label(question, id="quit-question")
                yield Button("Save a checkpoint and quit (s, ctrl+c)", variant="primary", id=SAVE)
                yield Button("Quit without saving (n)", variant="error", id=NO_SAVE)
            yield Button("Cancel (esc)", variant="default", id=CANCEL)

    def on_mount(self) -> None:
        # The safe choice has the focus: enter in an attached console must not stop a run.
        self.query_one(f"#{DETACH if self.attached else SAVE}", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)

    def action_choose(self, choice: str) -> None:
        # A key for a choice this dialog does not offer does nothing.
        if choice in (SAVE, CANCEL) or choice == (DETACH if self.attached else NO_SAVE):
            self.dismiss(choice)
