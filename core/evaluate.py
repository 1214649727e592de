"""Validation: loss, top-1/top-5, per-class accuracy and confusions of a model over a loader,
exact under DDP.

    totals = evaluate(model, val_loader, device, num_classes, dist=dist)
    totals.acc1, totals.per_class_acc1, totals.confusions, totals.images, totals.images_total

Everything is counted on the device (`index_add_` into a true x predicted count matrix, whose
row sums are the per-class images and whose diagonal the per-class top-1 hits: no `bincount`,
which reads its input's range to the host, and no boolean-mask indexing, whose output size the
host must learn), and the host reads the totals once, at the end: a GPU evaluation never waits
for the host inside its loop. Under DDP each rank evaluates a disjoint, unpadded shard and the
counts are summed, so the result equals a single-process pass over the same images.

A val dataset built with `train=False` marks an unreadable image with label -1: it is counted in
`images_total` but not scored.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data import DevicePrefetcher, normalize_on_device
from core.confusions import add_confusions, top_confusions
from core.distributed import DistContext
from core.events import EvalResult

__all__ = ["EvalTotals", "Scores", "evaluate", "model_is_finite"]

# Row layout of the one tensor that holds every count (float64: exact for counts below 2**53).
_LOSS, _HIT1, _HIT5, _SCORED, _SEEN = range(5)


@dataclass(frozen=True)
class EvalTotals:
    loss_sum: float
    hits1: int
    hits5: int
    images: int  # scored (readable) images
    images_total: int  # images the loaders yielded, readable or not
    per_class_images: tuple[int, ...]
    per_class_hits1: tuple[int, ...]
    confusions: tuple[tuple[int, int, int], ...] = ()  # (true, predicted, count), most frequent first
    bad: list[torch.Tensor] = field(default_factory=list)  # this rank's bad-slot tensors (host)

    @property
    def loss(self) -> float:
        return self.loss_sum / self.images if self.images else float("nan")

    @property
    def acc1(self) -> float:
        return 100.0 * self.hits1 / self.images if self.images else float("nan")

    @property
    def acc5(self) -> float:
        return 100.0 * self.hits5 / self.images if self.images else float("nan")

    @property
    def per_class_acc1(self) -> tuple[float, ...]:
        return tuple(100.0 * h / n if n else float("nan")
                     for h, n in zip(self.per_class_hits1, self.per_class_images))


def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    num_classes: int,
    *,
    dist: DistContext | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    max_batches: int | None = None,
) -> EvalTotals:
    """Score `model` (a plain or compiled module, never a DDP wrapper) on this rank's loader."""
    if dist is not None:
        dist.sync_buffers(model)  # every rank evaluates rank 0's BatchNorm statistics
    c = num_classes
    k = min(5, c)
    totals = torch.zeros(5 + c * c, dtype=torch.float64, device=device)
    confusion = totals[5:].view(c, c)  # rows: true label, columns: top-1 prediction
    bads: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    # Creating a loader iterator draws a seed from the global RNG; evaluating must not move it.
    with torch.random.fork_rng(devices=[]):
        loader_iter = iter(loader)
    try:
        with torch.inference_mode():
            for i, (images, labels, bad, _) in enumerate(DevicePrefetcher(loader_iter, device)):
                if max_batches is not None and i >= max_batches:
                    break
                with autocast():
                    logits = model(normalize_on_device(images, channels_last=True))
                logits = logits.float()
                scored = labels >= 0
                hits = logits.topk(k, dim=1).indices.eq(labels[:, None])  # a -1 label hits nothing
                top1 = hits[:, 0]
                totals[_LOSS] += F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
                totals[_HIT1] += top1.sum()
                totals[_HIT5] += hits.any(dim=1).sum()
                totals[_SCORED] += scored.sum()
                totals[_SEEN] += labels.numel()
                add_confusions(confusion, labels, logits.argmax(dim=1))
                bads.append(bad)
    finally:
        del loader_iter
        model.train(was_training)
    if dist is not None:
        dist.all_reduce_sum(totals)
    values = totals.tolist()  # the one host read
    matrix = np.asarray(values[5:], dtype=np.int64).reshape(c, c)
    return EvalTotals(
        loss_sum=values[_LOSS], hits1=int(values[_HIT1]), hits5=int(values[_HIT5]),
        images=int(values[_SCORED]), images_total=int(values[_SEEN]),
        per_class_images=tuple(matrix.sum(axis=1).tolist()), per_class_hits1=tuple(matrix.diagonal().tolist()),
        confusions=top_confusions(matrix), bad=bads,
    )


def model_is_finite(model: nn.Module) -> bool:
    """Whether every floating-point weight and buffer is finite (one host read)."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class Scores:
    """The run's evaluation record: the best Acc@1 and Acc@5 so far and every result (the
    checkpoint's `history`). A non-finite loss or model is never the best."""

    def __init__(self, best_acc1: float = 0.0, best_acc5: float = 0.0, history: list | None = None) -> None:
        self.best_acc1 = best_acc1
        self.best_acc5 = best_acc5
        self.history: list[dict[str, Any]] = list(history or [])

    def record(self, totals: EvalTotals, *, epoch: int, step: int, manual: bool, seconds: float,
               model: nn.Module, imagenet: EvalTotals | None = None) -> EvalResult:
        """The EvalResult of `totals` (WebVision val; the best is chosen on it alone) and of
        `imagenet`, the ILSVRC2012 val images of the same classes when they are scored too."""
        finite = math.isfinite(totals.loss)
        is_best = finite and totals.acc1 > self.best_acc1 and model_is_finite(model)
        if is_best:
            self.best_acc1 = totals.acc1
        if finite:
            self.best_acc5 = max(self.best_acc5, totals.acc5)
        ev = EvalResult(epoch=epoch, step=step, loss=totals.loss, acc1=totals.acc1, acc5=totals.acc5,
                        best_acc1=self.best_acc1, best_acc5=self.best_acc5, manual=manual, is_best=is_best,
                        seconds=seconds, images=totals.images, per_class_acc1=totals.per_class_acc1,
                        images_total=totals.images_total, confusions=totals.confusions,
                        **(_imagenet_fields(imagenet) if imagenet is not None else {}))
        self.history.append(ev.to_record())
        return ev


def _imagenet_fields(totals: EvalTotals) -> dict[str, Any]:
    return dict(imagenet_loss=totals.loss, imagenet_acc1=totals.acc1, imagenet_acc5=totals.acc5,
                imagenet_images=totals.images, imagenet_per_class_acc1=totals.per_class_acc1,
                imagenet_confusions=totals.confusions)
