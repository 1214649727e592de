"""Noise pane: the clean/noisy split of each epoch's per-sample training losses.

The trainer sends a `NoiseEstimate` (the mixture, logged) and a `NoiseDetails` (histogram, per
class and per query rows, the highest-loss samples) after each epoch; the pane shows the
histogram with the fitted components and their 0.5 cut, the clean fraction over epochs, tables
of classes and Google queries by estimated noise (noisiest first), the worst samples of the row
under the cursor, and the image of the sample under the cursor.

The trainer names each sample's file by its full path; a path relative to the dataset root is
read under the root, which only a console in the run's own process knows (`load_index`); without
it the preview says why it has no image.
"""

from __future__ import annotations

import os
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static, TabbedContent, TabPane

from core.events import Event, NoiseDetails, NoiseEstimate

from .chart import Chart, ChartGroup
from .filter_table import Column, FilterTable
from .image_preview import ImagePreview
from .noise_charts import clean_cut, draw_clean_fraction, draw_histogram

WAITING = "the noise split appears after the first epoch"
NO_INDEX = "no image: the dataset root is only known to a console in the run's own process"
CLASS_SAMPLES, QUERY_SAMPLES = 20, 10  # as many as NoiseDetails.worst holds of each


def _pct(v: Any) -> str:
    return "--" if v is None else f"{100.0 * v:.1f}"


def _loss(v: Any) -> str:
    return "--" if v is None else f"{v:.3f}"


def _count(v: Any) -> str:
    return "" if v is None else f"{v:,}"


CLASS_COLUMNS = [
    Column("label", "label", str, numeric=True),
    Column("clean %", "clean", _pct, numeric=True),
    Column("images", "images", _count, numeric=True),
    Column("loss", "loss", _loss, numeric=True),
    Column("instead", "instead"),
    Column("name", "name"),
]

QUERY_COLUMNS = [
    Column("query", "query"),
    Column("clean %", "clean", _pct, numeric=True),
    Column("images", "images", _count, numeric=True),
    Column("loss", "loss", _loss, numeric=True),
    Column("instead", "instead"),
    Column("text", "text"),
    Column("class", "class_name"),
]


def summary_text(estimate: NoiseEstimate | None) -> Text:
    if estimate is None:
        return Text(WAITING, style="dim")
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"epoch {estimate.epoch}: ", style="dim")
    text.append(f"clean {100.0 * estimate.clean_fraction:.1f}%", style="bold green")
    text.append(f" of {estimate.samples:,} samples", style="dim")
    text.append("  means ", style="dim")
    text.append(f"{estimate.means[0]:.2f} / {estimate.means[1]:.2f}", style="bold")
    cut = clean_cut(estimate.means, estimate.variances, estimate.weights)
    text.append("  0.5 cut ", style="dim")
    text.append("none" if cut is None else f"{cut:.2f}", style="bold yellow")
    return text


class NoisePane(Vertical):
    BINDINGS = [
        Binding("v", "next_view", "View", tooltip="Classes / queries"),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.estimates: list[NoiseEstimate] = []
        self.details: NoiseDetails | None = None
        self.root: str | None = None
        self.class_names: list[str] = []
        self.query_ids: list[str] = []
        self.samples: list[tuple[Any, ...]] = []  # the worst rows listed, in table order
        self._details_shown: NoiseDetails | None = None
        # The worst rows of the details shown, by ("class", label) and ("query", query id),
        # highest loss first: full WebVision sends ~100k of them, too many to scan per key press.
        self._worst: dict[tuple[str, Any], list[tuple[Any, ...]]] = {}
        # ("class", label, id(details)) or ("query", query id, id(details)): what the samples table lists.
        self._selected: tuple[str, Any, int] | None = None
        self.dirty = True
        self.chart_dirty = True

    def compose(self) -> ComposeResult:
        yield Static(summary_text(None), id="noise-summary")
        with Horizontal(id="noise-charts"):
            self.histogram = Chart(id="noise-histogram")
            self.clean_chart = Chart(id="noise-clean")
            yield self.histogram
            yield self.clean_chart
        with Horizontal(id="noise-bottom"):
            with TabbedContent(id="noise-views"):
                with TabPane("Classes", id="noise-classes-view"):
                    yield FilterTable(CLASS_COLUMNS, id="noise-classes")
                with TabPane("Queries", id="noise-queries-view"):
                    yield FilterTable(QUERY_COLUMNS, id="noise-queries")
            self.sample_table = DataTable(id="noise-samples", cursor_type="row", zebra_stripes=True)
            yield self.sample_table
            self.preview = ImagePreview(id="noise-preview")
            yield self.preview

    @property
    def chart(self) -> ChartGroup:
        """What paces this pane's chart redraws: the build cost of both its charts."""
        return ChartGroup(self.histogram, self.clean_chart)

    def on_mount(self) -> None:
        for label, key in (("path", "path"), ("label", "label"), ("pred", "predicted"), ("loss", "loss"),
                           ("clean p", "clean_prob")):
            self.sample_table.add_column(label, key=key)
        for table in self.query(FilterTable):
            table.sort_by("clean", reverse=False)  # lowest clean fraction (noisiest) first

    def load_index(self, index: Any) -> None:
        """Class names, query folders and the root the images are read from (in-process only)."""
        self.root = index.root
        self.class_names = [name.split(",")[0] for name in index.class_names]
        self.query_ids = list(index.query_ids)

    # -- events ------------------------------------------------------------------------------------

    def apply(self, event: Event, when: float | None = None) -> None:
        if isinstance(event, NoiseEstimate):
            self.estimates.append(event)
            self.chart_dirty = True
        elif isinstance(event, NoiseDetails):
            self.details = event
            self.chart_dirty = True
        else:
            return
        self.dirty = True

    def estimate_for(self, epoch: int) -> NoiseEstimate | None:
        return next((ev for ev in reversed(self.estimates) if ev.epoch == epoch), None)

    # -- names -------------------------------------------------------------------------------------

    def class_name(self, label: Any) -> str:
        label = int(label)
        if label < 0:
            return "--"
        if label < len(self.class_names):
            return f"{label} {self.class_names[label]}"
        return str(label)

    def query_name(self, query: Any) -> str:
        if isinstance(query, (int, float)) and 0 <= int(query) < len(self.query_ids):
            return self.query_ids[int(query)]
        return str(query)

    # -- drawing (on the app's frame timer only) ---------------------------------------------------

    def redraw(self) -> None:
        self.dirty = False
        latest = self.estimates[-1] if self.estimates else None
        self.query_one("#noise-summary", Static).update(summary_text(latest))
        details = self.details
        if details is None or details is self._details_shown:
            return
        self._details_shown = details
        self._worst = {}
        for w in sorted(details.worst, key=lambda w: -float(w[5])):
            self._worst.setdefault(("class", int(w[2])), []).append(w)
            self._worst.setdefault(("query", w[3]), []).append(w)
        self.query_one("#noise-classes", FilterTable).set_records([
            {"label": int(label), "images": images, "clean": clean, "loss": loss, "instead": self.class_name(other),
             "name": self.class_names[label] if 0 <= label < len(self.class_names) else ""}
            for label, images, clean, loss, other in details.classes])
        self.query_one("#noise-queries", FilterTable).set_records([
            {"query_id": qid, "query": self.query_name(qid), "text": text, "class_name": self.class_name(label),
             "images": images, "clean": clean, "loss": loss, "instead": self.class_name(other)}
            for qid, text, label, images, clean, loss, other in details.queries])
        self._select_from_cursor()

    def redraw_chart(self) -> None:
        self.chart_dirty = False
        details = self.details
        latest = self.estimates[-1] if self.estimates else None
        shown = self.estimate_for(details.epoch) if details is not None else None
        histogram = details.histogram if details is not None and shown is not None else None
        plt = self.histogram.blank()
        draw_histogram(plt, histogram, shown or latest)
        self.histogram.replot()
        draw_clean_fraction(self.clean_chart.blank(), self.estimates)
        self.clean_chart.replot()

    # -- selection ---------------------------------------------------------------------------------

    def _active_table(self) -> FilterTable:
        views = self.query_one("#noise-views", TabbedContent)
        return self.query_one("#noise-queries" if views.active == "noise-queries-view" else "#noise-classes",
                              FilterTable)

    def _select_from_cursor(self) -> None:
        table = self._active_table()
        if table.stale:
            table.rebuild(force=True)
        if not table.shown:
            return
        record = table.records[table.shown[min(table.cursor_row, len(table.shown) - 1)]]
        if table.id == "noise-queries":
            self.select("query", record["query_id"])
        else:
            self.select("class", record["label"])

    def select(self, kind: str, key: Any) -> None:
        """List the highest-loss samples of a class (its label) or query (its id)."""
        selected = (kind, key, id(self._details_shown))
        if self._selected == selected:
            return  # the cursor moved along the same row
        self._selected = selected
        rows = self._worst.get((kind, int(key) if kind == "class" else key), [])
        self.samples = rows[:CLASS_SAMPLES if kind == "class" else QUERY_SAMPLES]
        table = self.sample_table
        table.clear()
        table.add_rows(
            # Label numbers keep the rows narrow; the preview's caption names the classes.
            (self.display_path(w[1]), Text(str(w[2]), justify="right"), Text(str(w[4]), justify="right"),
             Text(_loss(w[5]), justify="right"),
             Text(f"{float(w[6]):.2f}", justify="right"))
            for w in self.samples)
        if self.samples:
            table.move_cursor(row=0)
            self.show_sample(0)
        else:
            self.preview.show(None, unavailable="no samples recorded for this row")

    def display_path(self, path: str) -> str:
        """A path under the dataset root as the file lists write it (google/q0001/000000.jpg)."""
        if self.root is not None and path.startswith(os.path.join(self.root, "")):
            return os.path.relpath(path, self.root)
        return path

    def show_sample(self, row: int) -> None:
        if not 0 <= row < len(self.samples):
            return
        path, label, predicted = self.samples[row][1], self.samples[row][2], self.samples[row][4]
        caption = f"{self.display_path(path)}: {self.class_name(label)} -> {self.class_name(predicted)}"
        if os.path.isabs(path):
            self.preview.show(path, caption)
        elif self.root is not None:
            self.preview.show(os.path.join(self.root, path), caption)
        else:
            self.preview.show(None, caption, unavailable=NO_INDEX)

    @on(DataTable.RowHighlighted, "#noise-samples")
    def _sample_highlighted(self, message: DataTable.RowHighlighted) -> None:
        self.show_sample(message.cursor_row)

    @on(DataTable.CellHighlighted)
    def _cell_highlighted(self, message: DataTable.CellHighlighted) -> None:
        # The class and query tables keep a cell cursor, so that `s` sorts by the column under it.
        if message.data_table is self._active_table():
            self._select_from_cursor()

    @on(TabbedContent.TabActivated, "#noise-views")
    def _view_changed(self) -> None:
        if self.details is not None:
            self._select_from_cursor()

    def action_next_view(self) -> None:
        views = self.query_one("#noise-views", TabbedContent)
        views.active = "noise-classes-view" if views.active == "noise-queries-view" else "noise-queries-view"
