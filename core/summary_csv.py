"""OUT/summary.csv in timm's shape: one row per epoch, for spreadsheets and plotting scripts.

    epoch,train_loss,eval_loss,eval_top1,eval_top5,lr[,imagenet_top1,imagenet_top5]

`epoch` is 1-based, as metrics.jsonl and the console count (the first epoch is 1): this differs
from timm's summary.csv, whose epochs count from 0. (A file written before wvtui's one epoch
numbering has a row 0; it is renumbered when a resumed run reads it.) train_loss is the epoch's mean training loss
(the StepStats windows weighted by their steps), lr the learning rate its last steps used, the
eval_* columns the epoch's scheduled WebVision val evaluation (a manual one only when there is
no scheduled one), imagenet_* the ImageNet val scores of the same evaluation; the imagenet
columns appear once any row has them.

`SummaryCsv(out_dir)` is a sink. The file is rewritten whole (temp file + rename) at each
epoch's end and when a later evaluation of a finished epoch arrives, so a reader never sees half
a file. A resumed run reads the existing file at RunStarted and keeps the rows of the epochs its
checkpoint holds (up to `start_epoch`, the epochs done); the rest are rewritten as the run redoes them.
A failed write is reported once through `warn` and the run goes on.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from core.atomic import atomic_write
from core.events import EpochEnd, EvalResult, Event, RunStarted, StepStats

__all__ = ["SummaryCsv", "COLUMNS", "IMAGENET_COLUMNS", "SUMMARY_CSV"]

SUMMARY_CSV = "summary.csv"
COLUMNS = ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr")
IMAGENET_COLUMNS = ("imagenet_top1", "imagenet_top5")


def _stderr(message: str) -> None:
    print(f"wvtui: warning: {message}", file=sys.stderr, flush=True)


class _EpochLoss:
    """The running step-weighted mean of one epoch's reported losses."""

    def __init__(self, start_step: int) -> None:
        self.start_step = start_step  # where this process began: no window reaches before it
        self.weighted = 0.0
        self.steps = 0
        self.last_step: int | None = None
        self.lr: float | None = None

    def add(self, ev: StepStats) -> None:
        # A window's loss is the mean of its steps; the first one starts at the epoch's start or
        # at the resume point, later ones at the previous window's end.
        start = self.last_step
        if start is None:
            start = max(ev.step - ev.epoch_step, self.start_step)
        n = max(1, ev.step - start)
        self.weighted += ev.loss * n
        self.steps += n
        self.last_step = ev.step
        self.lr = ev.lr

    def mean(self) -> float | None:
        return self.weighted / self.steps if self.steps else None


class SummaryCsv:
    """Sink writing OUT/summary.csv (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike, *, warn: Callable[[str], None] = _stderr) -> None:
        self.path = os.path.join(os.fspath(out_dir), SUMMARY_CSV)
        self.warn = warn
        self._warned = False
        self.rows: dict[int, dict[str, Any]] = {}  # epoch -> row, only finished epochs
        self._losses: dict[int, _EpochLoss] = {}
        self._evals: dict[int, EvalResult] = {}
        self._start_step = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.rows = {e: r for e, r in self._read().items() if e <= event.start_epoch}
            self._losses, self._evals = {}, {}
            self._start_step = event.start_step
        elif isinstance(event, StepStats):
            if event.epoch not in self._losses:
                self._losses[event.epoch] = _EpochLoss(self._start_step)
            self._losses[event.epoch].add(event)
        elif isinstance(event, EvalResult):
            held = self._evals.get(event.epoch)
            if held is None or held.manual or not event.manual:
                self._evals[event.epoch] = event
                if event.epoch in self.rows:
                    self._fill_eval(self.rows[event.epoch], event)
                    self._write()
        elif isinstance(event, EpochEnd):
            loss = self._losses.pop(event.epoch, None) or _EpochLoss(self._start_step)
            row: dict[str, Any] = {"epoch": event.epoch, "train_loss": loss.mean(), "lr": loss.lr}
            previous = self.rows.get(event.epoch, {})
            for key in ("train_loss", "lr"):  # an epoch resumed at its very end reported no steps
                if row[key] is None:
                    row[key] = previous.get(key)
            if event.epoch in self._evals:
                self._fill_eval(row, self._evals[event.epoch])
            self.rows[event.epoch] = row
            self._write()

    @staticmethod
    def _fill_eval(row: dict[str, Any], ev: EvalResult) -> None:
        row.update(eval_loss=ev.loss, eval_top1=ev.acc1, eval_top5=ev.acc5)
        if ev.imagenet_acc1 is not None:
            row.update(imagenet_top1=ev.imagenet_acc1, imagenet_top5=ev.imagenet_acc5)

    def _read(self) -> dict[int, dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8", newline="") as f:
                records = list(csv.DictReader(f))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            self._warn(f"cannot read {self.path} ({e}); it is rewritten from this run's epochs")
            return {}
        rows = {}
        for r in records:
            try:
                epoch = int(r.get("epoch") or "")
            except ValueError:
                continue
            rows[epoch] = {k: _parse(v) for k, v in r.items() if k in COLUMNS + IMAGENET_COLUMNS}
            rows[epoch]["epoch"] = epoch
        if 0 in rows:  # written before the one epoch numbering: counted from 0
            rows = {e + 1: {**r, "epoch": e + 1} for e, r in rows.items()}
        return rows

    def _write(self) -> None:
        columns = list(COLUMNS)
        if any(r.get(c) is not None for r in self.rows.values() for c in IMAGENET_COLUMNS):
            columns += IMAGENET_COLUMNS
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for epoch in sorted(self.rows):
            writer.writerow({c: _format(self.rows[epoch].get(c)) for c in columns})
        try:
            with atomic_write(self.path, "w", encoding="utf-8", newline="") as f:
                f.write(buf.getvalue())
        except OSError as e:
            self._warn(f"cannot write {self.path}: {e.strerror or e}; the run goes on "
                       f"(later epochs are tried again, this warning is not repeated)")

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            self.warn(message)


def _format(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)  # nan, inf as Python and pandas read them
    return str(v)


def _parse(v: str | None) -> Any:
    if v is None or v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v
