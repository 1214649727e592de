"""The `?` help screen: every key of the console in one place."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("p", "pause / resume training (takes effect at the next step)"),
    ("c", "save a checkpoint now"),
    ("e", "evaluate on the validation set now"),
    ("q", "quit: asks whether to save a checkpoint first"),
    ("1-5", "Training, Accuracy, GPU & host, Dataset, Event log"),
    ("tab / shift+tab", "move the focus (tabs, tables, filter)"),
    ("← →", "switch tabs when the tab bar has the focus"),
    ("/", "filter the dataset tables by text (enter or esc to leave)"),
    ("s", "sort a dataset table by the column under the cursor (again: reverse)"),
    ("v", "dataset pane: classes / queries / images per class"),
    ("?", "this help"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, what in KEYS:
            table.add_row(key, what)
        with Vertical(id="help-dialog"):
            yield Static("wvtui keys", id="help-title")
            yield Static(table)
            yield Static("esc or ? closes this help", id="help-hint")

    def action_dismiss(self) -> None:
        self.dismiss(None)
