"""Accuracy pane: Acc@1/Acc@5 of every evaluation over epochs (WebVision val and, with
--imagenet-val, the ILSVRC2012 val images of the same classes), the table of evaluations, and
the published mini-WebVision references to read them against."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from core.events import EvalResult, Event, RunStarted
from core.references import REFERENCES

from .chart import Chart, int_ticks, legend, set_int_xticks
from ..eventtext import loss as fmt_loss

# Distinct symbols, not colour only; the lines between evaluations are plain braille.
ACC1 = dict(marker="●", color="green")
ACC5 = dict(marker="▲", color="cyan")
IMAGENET = dict(marker="◆", color="magenta")

BEST = "★ best"
# One line: the field reads a run against these (top-1, WebVision val / ILSVRC12 val). Their
# protocol differs (two networks, 227-px crops); the README says how.
REFERENCE_LINE = "published top-1 WebVision/ILSVRC12 (IRv2, own protocols): " + " · ".join(
    f"{r.method} {r.webvision_top1:.1f}/{r.imagenet_top1:.1f}" for r in REFERENCES)


def _pct(value: float | None) -> str:
    return "--" if value is None else f"{value:.2f}"


class AccuracyPane(Vertical):
    DEFAULT_CSS = """
    AccuracyPane #acc-legend { height: 1; padding: 0 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.evals: list[EvalResult] = []
        self.steps_per_epoch = 0
        self._best_key: str | None = None
        self._best_acc1 = float("-inf")
        self._pending: list[EvalResult] = []
        self.dirty = True  # the table
        self.chart_dirty = True

    def compose(self) -> ComposeResult:
        self.chart = Chart(id="acc-chart")
        self.legend = Static(id="acc-legend")
        self.table = DataTable(id="eval-table", cursor_type="row", zebra_stripes=True)
        yield self.legend
        yield self.chart
        yield self.table
        yield Static(REFERENCE_LINE, id="references")

    def on_mount(self) -> None:
        table = self.table
        for label, key in (("epoch", "epoch"), ("step", "step"), ("val loss", "loss"), ("Acc@1", "acc1"),
                           ("Acc@5", "acc5"), ("IN Acc@1", "in1"), ("IN Acc@5", "in5"), ("kind", "kind"),
                           ("best", "best")):
            table.add_column(label, key=key)

    def apply(self, event: Event, when: float | None = None) -> None:
        if isinstance(event, RunStarted):
            self.steps_per_epoch = event.steps_per_epoch
        elif isinstance(event, EvalResult):
            self.evals.append(event)
            self._pending.append(event)
        else:
            return
        self.dirty = self.chart_dirty = True

    def _x(self, ev: EvalResult) -> float:
        # Scheduled evaluations run at the end of an epoch; manual ones land mid-epoch, so the
        # x axis is the fractional number of epochs trained when the evaluation ran (the eval
        # of epoch 1 at 1.0).
        if self.steps_per_epoch:
            return ev.step / self.steps_per_epoch
        return float(ev.epoch)

    def redraw(self) -> None:
        self.dirty = False
        table = self.table
        for ev in self._pending:
            key = f"eval-{len(table.rows)}"
            table.add_row(str(ev.epoch), f"{ev.step:,}", fmt_loss(ev.loss), f"{ev.acc1:.2f}",
                          f"{ev.acc5:.2f}", _pct(ev.imagenet_acc1), _pct(ev.imagenet_acc5),
                          "manual" if ev.manual else "scheduled", "", key=key)
            if ev.acc1 > self._best_acc1:
                if self._best_key is not None:
                    table.update_cell(self._best_key, "best", "")
                table.update_cell(key, "best", BEST)
                self._best_key, self._best_acc1 = key, ev.acc1
        if self._pending:
            table.move_cursor(row=len(table.rows) - 1)
        self._pending.clear()

    def redraw_chart(self) -> None:
        self.chart_dirty = False
        plot = self.chart
        plt = plot.blank("epoch", "accuracy %")
        entries = [(ACC1, "Acc@1"), (ACC5, "Acc@5")]
        if self.evals:
            xs = [self._x(ev) for ev in self.evals]
            imagenet = [(x, ev.imagenet_acc1) for x, ev in zip(xs, self.evals) if ev.imagenet_acc1 is not None]
            # Drawn last, on top where points share a cell: the markers, Acc@1's above all.
            series = [(ACC5, xs, [ev.acc5 for ev in self.evals]), (ACC1, xs, [ev.acc1 for ev in self.evals])]
            if imagenet:
                entries.append((IMAGENET, "ImageNet Acc@1"))
                series.insert(0, (IMAGENET, [x for x, _ in imagenet], [y for _, y in imagenet]))
            for style, sx, sy in series:
                plt.plot(sx, sy, marker="braille", color=style["color"])
            for style, sx, sy in series:
                plt.scatter(sx, sy, **style)
            plt.ylim(0, 100)
            ticks = int_ticks(0, 100, max((plot.size.height - 3) // 2, 2))
            plt.yticks(ticks, [str(t) for t in ticks])
            set_int_xticks(plt, 0, max(xs), plot.columns())  # whole epochs, from the start of the run
        else:
            plt.title("no evaluation yet (press e to evaluate now)")
        self.legend.update(legend(entries), layout=False)
        plot.replot()
