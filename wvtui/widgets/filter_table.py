"""A DataTable over a fixed list of records that can be sorted by any column and filtered by text."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable


class Column:
    """A column: its label, the key of the value in each record, and how to show that value."""

    def __init__(self, label: str, key: str, fmt: Callable[[Any], str] = str, *, numeric: bool = False) -> None:
        self.label = label
        self.key = key
        self.fmt = fmt
        self.numeric = numeric


class FilterTable(DataTable):
    """Records are plain dicts kept in Python; the widget only ever holds the rows on show.

    Filtering or sorting rebuilds the rows in one pass (`clear` + `add_rows`). Measuring the
    cells of 1000 rows still costs about a tenth of a second, so a table that is not on screen
    only marks itself stale and rebuilds when it is next shown, and the pane debounces typing.
    """

    BINDINGS = [
        Binding("s", "sort_by_cursor", "Sort", tooltip="Sort by the column under the cursor; again to reverse"),
    ]

    def __init__(self, columns: Sequence[Column], **kwargs) -> None:
        super().__init__(zebra_stripes=True, **kwargs)
        self.columns_spec = list(columns)
        self.records: list[dict[str, Any]] = []
        self._haystacks: list[str] = []
        self.filter_text = ""
        self.sort_key: str | None = None
        self.sort_reverse = False
        self.shown: list[int] = []  # record indices in display order
        self.stale = True

    def on_mount(self) -> None:
        for col in self.columns_spec:
            self.add_column(col.label, key=col.key)
        self.rebuild()

    def on_show(self) -> None:
        if self.stale:
            self.rebuild(force=True)

    def set_records(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self._haystacks = [
            " ".join(col.fmt(r.get(col.key)) for col in self.columns_spec if not col.numeric).lower()
            for r in records
        ]
        self.rebuild()

    def update_values(self, key: str, values: Sequence[Any]) -> None:
        """Replace one column's value in every record (e.g. per-class Acc@1 after an evaluation)."""
        for record, value in zip(self.records, values):
            record[key] = value
        self.rebuild()

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip().lower()
        self.rebuild()

    def match_count(self) -> int:
        """How many records the filter lets through (counted whether or not the rows are built)."""
        needle = self.filter_text
        return sum(needle in hay for hay in self._haystacks) if needle else len(self.records)

    def sort_by(self, key: str, reverse: bool | None = None) -> None:
        if reverse is None:
            reverse = (not self.sort_reverse) if key == self.sort_key else False
        self.sort_key, self.sort_reverse = key, reverse
        self.rebuild()

    def action_sort_by_cursor(self) -> None:
        if self.columns_spec:
            self.sort_by(self.columns_spec[self.cursor_column].key)

    def on_data_table_header_selected(self, message: DataTable.HeaderSelected) -> None:
        message.stop()
        self.sort_by(str(message.column_key.value))

    def rebuild(self, force: bool = False) -> None:
        self.stale = True
        if not self.is_mounted or not (force or self.is_on_screen):
            return
        self.stale = False
        needle = self.filter_text
        shown = [i for i, hay in enumerate(self._haystacks) if needle in hay] if needle else list(
            range(len(self.records)))
        if self.sort_key is not None:
            key = self.sort_key
            # Missing values (no evaluation yet) go last in either direction.
            present = [i for i in shown if self.records[i].get(key) is not None]
            missing = [i for i in shown if self.records[i].get(key) is None]
            present.sort(key=lambda i: self.records[i][key], reverse=self.sort_reverse)
            shown = present + missing
        self.shown = shown
        cursor = self.cursor_coordinate
        self.clear()
        cols = self.columns_spec
        self.add_rows(
            [Text(col.fmt(self.records[i].get(col.key)), justify="right" if col.numeric else "left")
             for col in cols]
            for i in shown
        )
        for col in cols:
            arrow = ""
            if col.key == self.sort_key:
                arrow = " ▼" if self.sort_reverse else " ▲"
            self.columns[col.key].label = Text(col.label + arrow)
        if shown:
            # The table's validator clamps the old position into the new, possibly shorter, rows.
            self.cursor_coordinate = cursor
        self.refresh()
