"""TensorBoard event files of a run, in OUT/tb/: `tensorboard --logdir runs` compares runs.

`TensorBoardWriter(out_dir)` is a sink. Scalars, at the global optimizer step:
train/loss, train/lr, train/img_per_s, train/data_wait (each StepStats), val/loss, val/acc1,
val/acc5 and, when the ImageNet val set is scored, imagenet/loss, imagenet/acc1, imagenet/acc5
(each EvalResult). At RunFinished the recipe's key numbers go to the HPARAMS tab with the run's
best WebVision Acc@1/Acc@5 and its last ImageNet Acc@1/Acc@5 (hparam/* scalars).

A resumed run continues the same curves: its writer opens with `purge_step = start_step + 1`,
so TensorBoard drops what the earlier process logged after the checkpoint it resumes from (an
evaluation at the checkpoint's own step belongs to that checkpoint and stays). TensorBoard reads
a run's event files in name order, and a name starts with the creation second, so a writer never
opens within the second of an existing file.

Only the main rank's sink should hold one. A failed write is reported once through `warn` and
the run goes on without TensorBoard files.
"""

from __future__ import annotations

import glob
import math
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from core.events import EpochEnd, EvalResult, Event, RunFinished, RunStarted, StepStats

__all__ = ["TensorBoardWriter", "TB_DIR", "HPARAMS"]

TB_DIR = "tb"
# config.json keys shown in TensorBoard's HPARAMS tab (plus world_size from RunStarted).
HPARAMS = ("model", "num_classes", "image_size", "batch_size", "lr", "momentum", "weight_decay",
           "epochs", "milestones", "gamma", "amp", "seed", "use_flickr")
_STAMP = re.compile(r"events\.out\.tfevents\.(\d+)\.")


def _stderr(message: str) -> None:
    print(f"wvtui: warning: {message}", file=sys.stderr, flush=True)


def _hparam(value: Any) -> int | float | str:
    if isinstance(value, bool):
        return str(value).lower()  # the plugin would show a bool as the number 1.0
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


class TensorBoardWriter:
    """Sink writing OUT/tb/events.out.tfevents.* (see the module docstring).

    Raises RuntimeError (one line) when the tensorboard package is not installed.
    """

    def __init__(self, out_dir: str | os.PathLike, *, warn: Callable[[str], None] = _stderr,
                 flush_secs: int = 30) -> None:
        try:
            # Imported here: importing tensorboard costs about a second that --no-tb should not pay.
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError:
            raise RuntimeError("TensorBoard files need the tensorboard package: "
                               "pip install tensorboard, or pass --no-tb") from None
        self._summary_writer = SummaryWriter
        self._hparams = hparams
        self.dir = os.path.join(os.fspath(out_dir), TB_DIR)
        self.warn = warn
        self.flush_secs = flush_secs
        self.failed = False
        self._writer: Any = None
        self._config: dict[str, Any] = {}
        self._world_size = 1
        self._last_eval_step: int | None = None
        self._imagenet: tuple[float, float] | None = None

    def __call__(self, event: Event) -> None:
        if self.failed:
            return
        try:
            self._handle(event)
        except Exception as e:  # OSError mostly; tensorboard's writer thread re-raises its own
            self.failed = True
            reason = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
            self.warn(f"cannot write TensorBoard files in {self.dir}: {reason}; "
                      f"the run goes on without them")
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except Exception:  # already reported by the write that failed
                pass

    def _handle(self, ev: Event) -> None:
        if isinstance(ev, RunStarted):
            self.close()
            self._config = dict(ev.config)
            self._world_size = ev.world_size
            self._last_eval_step = None
            self._open(ev.start_step)
        elif isinstance(ev, StepStats):
            w = self._open()
            w.add_scalar("train/loss", ev.loss, ev.step)
            w.add_scalar("train/lr", ev.lr, ev.step)
            w.add_scalar("train/img_per_s", ev.img_per_s, ev.step)
            w.add_scalar("train/data_wait", ev.data_wait, ev.step)
        elif isinstance(ev, EvalResult):
            # A manual evaluation at the step of a scheduled one scores the same weights: one point.
            if ev.step == self._last_eval_step:
                return
            self._last_eval_step = ev.step
            w = self._open()
            w.add_scalar("val/loss", ev.loss, ev.step)
            w.add_scalar("val/acc1", ev.acc1, ev.step)
            w.add_scalar("val/acc5", ev.acc5, ev.step)
            if ev.imagenet_acc1 is not None:
                if ev.imagenet_loss is not None:
                    w.add_scalar("imagenet/loss", ev.imagenet_loss, ev.step)
                w.add_scalar("imagenet/acc1", ev.imagenet_acc1, ev.step)
                w.add_scalar("imagenet/acc5", ev.imagenet_acc5, ev.step)
                self._imagenet = (ev.imagenet_acc1, float(ev.imagenet_acc5))
            w.flush()
        elif isinstance(ev, EpochEnd):
            if self._writer is not None:
                self._writer.flush()
        elif isinstance(ev, RunFinished):
            self._write_hparams(ev)
            self.close()

    def _open(self, start_step: int | None = None) -> Any:
        if self._writer is None:
            existing = glob.glob(os.path.join(self.dir, "events.out.tfevents.*"))
            purge = start_step + 1 if existing and start_step is not None else None
            _wait_past(existing)
            self._writer = self._summary_writer(self.dir, purge_step=purge,
                                                flush_secs=self.flush_secs)
        return self._writer

    def _write_hparams(self, ev: RunFinished) -> None:
        hp = {k: _hparam(self._config[k]) for k in HPARAMS if self._config.get(k) is not None}
        hp["world_size"] = self._world_size
        metrics = {"hparam/best_acc1": ev.best_acc1, "hparam/best_acc5": ev.best_acc5}
        if self._imagenet is not None:
            metrics["hparam/imagenet_acc1"], metrics["hparam/imagenet_acc5"] = self._imagenet
        metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
        w = self._open()
        for summary in self._hparams(hp, metrics):
            w.file_writer.add_summary(summary, ev.step)
        for tag, value in metrics.items():
            w.add_scalar(tag, value, ev.step)


def _wait_past(files: list[str]) -> None:
    """Sleep until the clock's second is past the newest file's, so a new file sorts after it."""
    stamps = [int(m.group(1)) for f in files if (m := _STAMP.search(os.path.basename(f)))]
    if not stamps:
        return
    while time.time() < max(stamps) + 1:
        time.sleep(max(0.0, max(stamps) + 1 - time.time()) + 0.01)
