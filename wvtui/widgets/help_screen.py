"""The `?` help screen: every key of the console, read from the bindings themselves.

Nothing here names a key: a binding added to the app or to a pane shows up on its own, with
its tooltip (or, without one, its description). Bindings of one `Binding.Group` (the pane keys
1-5) share a row.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

Section = tuple[str, Iterable[BindingType]]  # (heading, BINDINGS)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, sections: Sequence[Section]) -> None:
        """sections: headings and their bindings, in the order shown. A key listed under an
        earlier heading is not listed again: the app's own (priority) bindings come first."""
        super().__init__()
        self.sections = sections
        self.rows: list[tuple[str, str, str]] = []  # (heading, keys, what), as shown

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        seen: set[str] = set()
        for heading, bindings in self.sections:
            rows = self._rows(bindings, seen)
            if not rows:
                continue
            table.add_row("", Text(heading, style="bold underline"))
            for keys, what in rows:
                self.rows.append((heading, keys, what))
                table.add_row(Text(keys), Text(what))
        with VerticalScroll(id="help-dialog"):
            yield Static(Text.assemble(("wvtui keys", "bold"), ("   esc or ? closes this help", "dim")),
                         id="help-title")
            yield Static(table)

    def _rows(self, bindings: Iterable[BindingType], seen: set[str]) -> list[tuple[str, str]]:
        rows: dict[object, tuple[list[str], str]] = {}  # group (or the binding) -> (keys, what)
        for binding in Binding.make_bindings(bindings):
            if binding.system or binding.key in seen or not (binding.tooltip or binding.description):
                continue
            seen.add(binding.key)
            group = binding.group or binding
            what = binding.group.description if binding.group else (binding.tooltip or binding.description)
            keys, _ = rows.setdefault(group, ([], what))
            keys.append(self.app.get_key_display(binding))
        return [(" ".join(keys), what) for keys, what in rows.values()]

    def action_dismiss(self) -> None:
        self.dismiss(None)
