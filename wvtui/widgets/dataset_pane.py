"""Dataset pane: index summary, per-class and per-query tables (sortable, filterable), images per class.

It is filled from the `WebVisionIndex` before the first training step; without an index (a
console attached to someone else's trainer) it falls back to the summary in `RunStarted`.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.timer import Timer
from textual.widgets import Input, Static, TabbedContent, TabPane

from .chart import Chart
from .filter_table import Column, FilterTable

# Below this many classes every class gets its own bar; above it a bar chart is a solid block,
# so the chart shows the sorted counts instead (the shape of the imbalance).
MAX_BARS = 60
FILTER_DELAY_S = 0.15


def _count(v: Any) -> str:
    return "" if v is None else f"{v:,}"


def _acc(v: Any) -> str:
    return "--" if v is None else f"{v:.1f}"


CLASS_COLUMNS = [
    Column("label", "label", str, numeric=True),
    Column("wnid", "wnid"),
    Column("name", "name"),
    Column("train", "train_images", _count, numeric=True),
    Column("val", "val_images", _count, numeric=True),
    Column("queries", "queries", _count, numeric=True),
    Column("Acc@1", "acc1", _acc, numeric=True),
]

QUERY_COLUMNS = [
    Column("id", "query_id"),
    Column("text", "text"),
    Column("class", "class_name"),
    Column("images", "images", _count, numeric=True),
]


def summary_text(summary: dict[str, Any] | None) -> Text:
    if not summary:
        return Text("dataset summary not known yet", style="dim")
    text = Text(no_wrap=False)
    text.append(f"{summary.get('train_images', 0):,}", style="bold")
    text.append(" train / ", style="dim")
    text.append(f"{summary.get('val_images', 0):,}", style="bold")
    text.append(" val images  ", style="dim")
    text.append(f"{summary.get('num_classes', 0):,}", style="bold")
    text.append(" classes  ", style="dim")
    text.append(f"{summary.get('queries', 0):,}", style="bold")
    text.append(" queries", style="dim")
    sources = summary.get("sources")
    if sources:
        text.append(f" ({'+'.join(sources)})", style="dim")
    if "min_per_class" in summary:
        text.append("\nper class min/mean/max ", style="dim")
        text.append(f"{summary['min_per_class']:,}/{summary['mean_per_class']:,.0f}/{summary['max_per_class']:,}",
                    style="bold")
        text.append("  imbalance ", style="dim")
        imbalance = summary.get("imbalance")
        text.append("N/A" if imbalance is None else f"{imbalance:.1f}x",
                    style="bold red" if imbalance and imbalance > 10 else "bold")
    return text


class FilterInput(Input):
    """Takes the focus only while a filter is being edited (after `/` or a click on it).

    An Input that holds the focus takes every printable key, so the console's single-key
    commands (p, c, e, q, the pane digits) would be typed into the filter: Tab never lands here,
    and enter, esc, Tab away or leaving the pane give the keys back to the app.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.can_focus = False

    def edit(self) -> None:
        self.can_focus = True
        self.focus()

    # Textual calls each class's `_on_*` handler along the MRO (Input's and Widget's run after
    # these): no super() calls here.
    def _on_blur(self, event: events.Blur) -> None:
        # The terminal losing focus blurs it too; editing resumes when the terminal gets it back.
        if self.app.app_focus:
            self.can_focus = False

    def _on_mouse_down(self, event: events.MouseDown) -> None:
        self.edit()

    def _on_hide(self, event: events.Hide) -> None:
        # Widget's own handler would hand the focus to a neighbour in the chain; none is clearer.
        if self.has_focus:
            self.screen.set_focus(None)


class DatasetPane(Vertical):
    DEFAULT_CSS = """
    DatasetPane #filter-row { height: 1; }
    DatasetPane #dataset-filter { width: 1fr; }
    DatasetPane #filter-count { width: auto; padding: 0 1; color: $text-muted; }
    DatasetPane #filter-count.empty { color: $warning; text-style: bold; }
    """

    BINDINGS = [
        Binding("slash", "focus_filter", "Filter", tooltip="Type to filter the tables"),
        Binding("v", "next_view", "View", tooltip="Classes / queries / images per class"),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.summary: dict[str, Any] | None = None
        self.class_records: list[dict[str, Any]] = []
        self.query_records: list[dict[str, Any]] = []
        self._filter_timer: Timer | None = None
        self.dirty = True

    def compose(self) -> ComposeResult:
        yield Static(summary_text(None), id="dataset-summary")
        with Horizontal(id="filter-row"):
            yield FilterInput(placeholder="/ filter classes and queries by text", id="dataset-filter", compact=True)
            yield Static("", id="filter-count")
        with TabbedContent(id="dataset-views"):
            with TabPane("Classes", id="classes-view"):
                yield FilterTable(CLASS_COLUMNS, id="class-table")
            with TabPane("Queries", id="queries-view"):
                yield FilterTable(QUERY_COLUMNS, id="query-table")
            with TabPane("Images per class", id="chart-view"):
                self.chart = Chart(id="class-chart")
                yield self.chart

    def load_index(self, index: Any) -> None:
        """Take the statistics of a `WebVisionIndex` (class_stats, query_stats, summary)."""
        self.load(index.summary().to_dict(),
                  [{**c.to_dict(), "acc1": None} for c in index.class_stats()],
                  [q.to_dict() for q in index.query_stats()])

    def load(self, summary: dict[str, Any] | None, classes: list[dict[str, Any]],
             queries: list[dict[str, Any]]) -> None:
        self.summary = summary
        self.class_records = classes
        self.query_records = queries
        self.query_one("#class-table", FilterTable).set_records(classes)
        self.query_one("#query-table", FilterTable).set_records(queries)
        self.query_one("#dataset-summary", Static).update(summary_text(summary))
        self._show_count()
        self.dirty = True

    def load_summary(self, summary: dict[str, Any]) -> None:
        """Only the summary is known (no index given): keep any tables already filled."""
        if self.summary is None:
            self.summary = summary
            self.query_one("#dataset-summary", Static).update(summary_text(summary))
            self.dirty = True

    def set_class_accuracy(self, per_class_acc1: tuple[float, ...]) -> None:
        if per_class_acc1 and self.class_records:
            self.query_one("#class-table", FilterTable).update_values("acc1", list(per_class_acc1))

    @on(Input.Changed, "#dataset-filter")
    def _filter(self, event: Input.Changed) -> None:
        # Rebuild once typing pauses, not on every key of a word.
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(FILTER_DELAY_S, lambda: self._apply_filter(event.value))

    def _apply_filter(self, text: str) -> None:
        self._filter_timer = None
        for table in self.query(FilterTable):
            table.set_filter(text)
        self._show_count()

    def _active_table(self) -> FilterTable:
        queries = self.query_one("#dataset-views", TabbedContent).active == "queries-view"
        return self.query_one("#query-table" if queries else "#class-table", FilterTable)

    @on(TabbedContent.TabActivated, "#dataset-views")
    def _show_count(self) -> None:
        """"n of N match" for the table on show while a filter is set: an empty table then
        says why it is empty."""
        table = self._active_table()
        label = self.query_one("#filter-count", Static)
        matching = table.match_count()
        label.update(f"{matching:,} of {len(table.records):,} match" if table.filter_text else "")
        label.set_class(bool(table.filter_text) and matching == 0, "empty")

    @on(Input.Submitted, "#dataset-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
            self._apply_filter(event.value)
        self._focus_table()

    def _focus_table(self) -> None:
        active = self.query_one("#dataset-views", TabbedContent).active
        if active in ("classes-view", "queries-view"):
            self._active_table().focus()
        else:  # the chart: nothing here takes keys
            self.screen.set_focus(None)

    def key_escape(self) -> None:
        if isinstance(self.app.focused, Input):
            self._focus_table()

    def action_focus_filter(self) -> None:
        self.query_one("#dataset-filter", FilterInput).edit()

    def action_next_view(self) -> None:
        views = self.query_one("#dataset-views", TabbedContent)
        order = ["classes-view", "queries-view", "chart-view"]
        views.active = order[(order.index(views.active) + 1) % len(order)] if views.active in order else order[0]

    def redraw(self) -> None:
        self.dirty = False
        plot = self.chart
        plt = plot.blank()
        counts = [int(c.get("train_images") or 0) for c in self.class_records]
        if not counts:
            plt.title("per-class counts need the dataset index")
        elif len(counts) <= MAX_BARS:
            plt.bar([int(c["label"]) for c in self.class_records], counts, marker="sd", width=0.8)
            plt.xlabel("class label")
            plt.ylabel("train images")
        else:
            plt.plot(list(range(len(counts))), sorted(counts, reverse=True), marker="braille")
            plt.xlabel("classes, largest first")
            plt.ylabel("train images")
        plot.replot()
