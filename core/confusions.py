"""Per-class accuracy and the most frequent mistakes of an evaluation, kept in the run dir.

    counts = torch.zeros(c, c, dtype=torch.int64, device=device)   # rows: true, columns: predicted
    add_confusions(counts, labels, logits.argmax(1))                 # each batch, on the device
    dist.all_reduce_sum(counts)                                      # exact under DDP
    per_class_acc1(counts), top_confusions(counts, k=20)             # one host read at the end

`EvalDetailsWriter` is a sink: for each EvalResult it writes
OUT/evals/epoch_NNN_step_SSSSSSS.json (1-based epoch, as in metrics.jsonl) with the per-class
Acc@1 and confusions of WebVision val and, when evaluated, ImageNet val.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from core.atomic import atomic_write
from core.events import EvalResult, Event, RunStarted

__all__ = ["add_confusions", "per_class_acc1", "top_confusions", "EvalDetailsWriter", "EVALS_DIR"]

EVALS_DIR = "evals"
_NAME = re.compile(r"epoch_\d+_step_(\d+)\.json\Z")


def add_confusions(counts: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor) -> None:
    """counts[true, pred] += 1 for each scored sample, in place, without a host sync.

    Labels < 0 (unreadable val images) are not counted: they add a weight of 0 rather than being
    masked out, since a masked tensor's size would have to be read back to the host.
    """
    c = counts.shape[0]
    scored = labels >= 0
    flat = torch.where(scored, labels * c + preds, torch.zeros_like(labels))
    counts.view(-1).index_add_(0, flat, scored.to(counts.dtype))


def _host(counts: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().numpy()
    return np.asarray(counts, dtype=np.int64)


def per_class_acc1(counts: torch.Tensor | np.ndarray) -> tuple[float, ...]:
    """Top-1 accuracy (percent) of each true class; NaN for a class without images."""
    m = _host(counts)
    totals = m.sum(axis=1)
    return tuple(100.0 * float(h) / float(t) if t > 0 else float("nan")
                 for h, t in zip(m.diagonal(), totals))


def top_confusions(counts: torch.Tensor | np.ndarray, k: int = 20) -> tuple[tuple[int, int, int], ...]:
    """The k most frequent (true, predicted, count) mistakes, most frequent first (ties: by true,
    then predicted label); pairs never confused are left out. Host-side (numpy) work: give it
    the counts once they have been read back."""
    m = _host(counts).copy()
    np.fill_diagonal(m, 0)
    flat = np.flatnonzero(m)  # row-major: already ordered by (true, predicted)
    order = np.argsort(-m.flat[flat], kind="stable")[:k]
    c = m.shape[1]
    return tuple((int(i // c), int(i % c), int(m.flat[i])) for i in flat[order])


def _stderr(message: str) -> None:
    print(f"wvtui: warning: {message}", file=sys.stderr, flush=True)


def _number(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


class EvalDetailsWriter:
    """Sink keeping the per-class table and confusions of every evaluation in OUT/evals/.

    classes: the class names (or wnids) of the labels, written into each file when given.
    A resumed run (RunStarted with start_step S) removes the files of evaluations after S, which
    the earlier process made but its checkpoint does not hold. A failed write is reported once
    through `warn` and the run goes on.
    """

    def __init__(self, out_dir: str | os.PathLike, *, classes: Sequence[str] | None = None,
                 warn: Callable[[str], None] = _stderr) -> None:
        self.dir = os.path.join(os.fspath(out_dir), EVALS_DIR)
        self.classes = list(classes) if classes is not None else None
        self.warn = warn
        self._warned = False

    def __call__(self, event: Event) -> None:
        try:
            if isinstance(event, RunStarted):
                self._drop_after(event.start_step)
            elif isinstance(event, EvalResult):
                self._write(event)
        except OSError as e:
            if not self._warned:
                self._warned = True
                self.warn(f"cannot write {self.dir}: {e.strerror or e}; the run goes on "
                          f"(this warning is not repeated)")

    def path(self, epoch: int, step: int) -> str:
        return os.path.join(self.dir, f"epoch_{epoch:03d}_step_{step:07d}.json")

    def _drop_after(self, step: int) -> None:
        for path in glob.glob(os.path.join(self.dir, "epoch_*_step_*.json")):
            m = _NAME.search(os.path.basename(path))
            if m and int(m.group(1)) > step:
                os.unlink(path)

    def _write(self, ev: EvalResult) -> None:
        record: dict[str, Any] = {
            "epoch": ev.epoch,
            "step": ev.step,
            "manual": ev.manual,
            "webvision": {
                "loss": _number(ev.loss), "acc1": _number(ev.acc1), "acc5": _number(ev.acc5),
                "images": ev.images, "images_total": ev.images_total or ev.images,
                "per_class_acc1": [_number(a) for a in ev.per_class_acc1],
                "confusions": [list(c) for c in ev.confusions],
            },
            "imagenet": None if ev.imagenet_acc1 is None else {
                "loss": _number(ev.imagenet_loss), "acc1": _number(ev.imagenet_acc1),
                "acc5": _number(ev.imagenet_acc5), "images": ev.imagenet_images,
                "per_class_acc1": [_number(a) for a in ev.imagenet_per_class_acc1],
                "confusions": [list(c) for c in ev.imagenet_confusions],
            },
        }
        if self.classes is not None:
            record["classes"] = self.classes
        with atomic_write(self.path(ev.epoch, ev.step), "w", encoding="utf-8") as f:
            json.dump(record, f, allow_nan=False)
            f.write("\n")
