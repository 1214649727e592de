"""Accuracy pane: Acc@1/Acc@5 of every evaluation over epochs (WebVision val and, with
--imagenet-val, the ILSVRC2012 val images of the same classes), the table of evaluations, and
the published mini-WebVision references to read them against."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from core.events import EvalResult, Event, RunStarted
from core.references import REFERENCES

from .chart import Chart
from ..eventtext import loss as fmt_loss

BEST = "★ best"
# One line: the field reads a run against these (top-1, WebVision val / ILSVRC12 val). Their
# protocol differs (two networks, 227-px crops); the README says how.
REFERENCE_LINE = "published top-1 WebVision/ILSVRC12 (IRv2, own protocols): " + " · ".join(
    f"{r.method} {r.webvision_top1:.1f}/{r.imagenet_top1:.1f}" for r in REFERENCES)


def _pct(value: float | None) -> str:
    return "--" if value is None else f"{value:.2f}"


class AccuracyPane(Vertical):
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
        self.table = DataTable(id="eval-table", cursor_type="row", zebra_stripes=True)
        yield self.chart
        yield self.table
        yield Static(REFERENCE_LINE, id="references")

    def on_mount(self) -> None:
        table = self.table
        for label, key in (("epoch", "epoch"), ("step", "step"), ("loss", "loss"), ("Acc@1", "acc1"),
                           ("Acc@5", "acc5"), ("IN Acc@1", "in1"), ("IN Acc@5", "in5"), ("kind", "kind"),
                           ("best", "best")):
            table.add_column(label, key=key)

    def apply(self, event: Event) -> None:
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
        # x axis is the fractional number of epochs trained when the evaluation ran.
        if self.steps_per_epoch:
            return ev.step / self.steps_per_epoch
        return float(ev.epoch + 1)

    def redraw(self) -> None:
        self.dirty = False
        table = self.table
        for ev in self._pending:
            key = f"eval-{len(table.rows)}"
            table.add_row(str(ev.epoch + 1), f"{ev.step:,}", fmt_loss(ev.loss), f"{ev.acc1:.2f}",
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
        if self.evals:
            xs = [self._x(ev) for ev in self.evals]
            plt.plot(xs, [ev.acc1 for ev in self.evals], label="Acc@1", marker="braille", color="green")
            plt.plot(xs, [ev.acc5 for ev in self.evals], label="Acc@5", marker="braille", color="cyan")
            imagenet = [(x, ev.imagenet_acc1) for x, ev in zip(xs, self.evals) if ev.imagenet_acc1 is not None]
            if imagenet:
                plt.plot(*zip(*imagenet), label="ImageNet Acc@1", marker="dot", color="magenta")
            plt.ylim(0, 100)
        else:
            plt.title("no evaluation yet (press e to evaluate now)")
        plot.replot()
