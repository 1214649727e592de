"""Per-sample training losses and predictions of one epoch, kept on the device, gathered once.

Every step's per-sample losses and argmax predictions (from the training forward pass, so of
the augmented views the model saw) are copied into device buffers at the step's place in this
rank's epoch order: no host sync per step. `gather` (every rank, once per epoch) maps places to
dataset indices through the sampler's deterministic order, drops the padding that evens the
ranks out (the same sample would count twice) and returns one entry per sample, sorted by
index. A mid-epoch checkpoint holds the gathered filled part (`state`, plain tensors), so a
resumed epoch's record has no gap and no double.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.checkpoint import CheckpointError
from core.data import ResumableSampler
from core.distributed import DistContext

__all__ = ["Samples", "SampleRecord"]


@dataclass
class Samples:
    """(index, loss, pred) of one epoch's samples, one entry per dataset index, sorted by it."""

    index: np.ndarray  # int64, into index.train
    loss: np.ndarray  # float32
    pred: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def empty(cls) -> Samples:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))

    @classmethod
    def merged(cls, parts: list[Samples]) -> Samples:
        """The parts as one, sorted by index; of a repeated index the later part's entry wins
        (a resume with another batch size or rank count may see a sample again)."""
        index = np.concatenate([p.index for p in parts]).astype(np.int64, copy=False)
        loss = np.concatenate([p.loss for p in parts]).astype(np.float32, copy=False)
        pred = np.concatenate([p.pred for p in parts]).astype(np.int64, copy=False)
        order = np.argsort(index, kind="stable")
        index, loss, pred = index[order], loss[order], pred[order]
        last = np.ones(len(index), dtype=bool)
        last[:-1] = index[1:] != index[:-1]
        return cls(index[last], loss[last], pred[last])


class SampleRecord:
    """The epoch's per-sample record of this rank; see the module docstring."""

    def __init__(self, sampler: ResumableSampler | None, batch_size: int, device: torch.device | None, *,
                 enabled: bool = True) -> None:
        self.enabled = enabled  # off (record_samples=False): no buffers, nothing gathered or saved
        self.sampler = sampler
        self.batch_size = batch_size
        self.device = device
        self.loss = torch.zeros(0)
        self.pred = torch.zeros(0, dtype=torch.int64)
        self.epoch = -1
        self.first_step = self.end_step = 0  # steps of this rank filled in this process
        self.carried = Samples.empty()  # the epoch's part from before a resume (all ranks)

    @classmethod
    def for_run(cls, enabled: bool, sampler: ResumableSampler | None = None, batch_size: int = 0,
                device: torch.device | None = None) -> SampleRecord:
        return cls(sampler, batch_size, device, enabled=enabled)

    def start_epoch(self, epoch: int, epoch_step: int, steps_per_epoch: int) -> None:
        """Record `epoch` from step `epoch_step` on (a resumed epoch keeps what it carried)."""
        if not self.enabled:
            return
        size = steps_per_epoch * self.batch_size
        if len(self.loss) != size:
            # Zeros, not empty: a step that bypasses the record (bench drains) leaves no garbage.
            self.loss = torch.zeros(size, dtype=torch.float32, device=self.device)
            self.pred = torch.zeros(size, dtype=torch.int64, device=self.device)
        if epoch != self.epoch:
            self.epoch, self.carried = epoch, Samples.empty()
        self.first_step = self.end_step = epoch_step

    def add(self, epoch_step: int, losses: torch.Tensor, preds: torch.Tensor) -> None:
        """One step's per-sample losses and predictions; device copies only."""
        if not self.enabled:
            return
        lo = epoch_step * self.batch_size
        self.loss[lo:lo + len(losses)].copy_(losses, non_blocking=True)
        self.pred[lo:lo + len(preds)].copy_(preds, non_blocking=True)
        self.end_step = max(self.end_step, epoch_step + 1)

    def _local(self) -> Samples:
        """This rank's filled places as dataset indices, padding dropped (one host copy)."""
        lo, hi = self.first_step * self.batch_size, self.end_step * self.batch_size
        if hi <= lo:
            return Samples.empty()
        s = copy.copy(self.sampler)
        s.set_epoch(self.epoch)  # the copy: the loader's sampler keeps its resume start
        order = s.indices().numpy()
        places = np.arange(lo, hi)
        # Rank r's place p is place p * world + r of the padded whole; past n it repeats the start.
        real = places * s.world_size + s.rank < s.n
        places = places[real]
        loss = self.loss[lo:hi].cpu().numpy()[real]
        pred = self.pred[lo:hi].cpu().numpy()[real]
        return Samples(order[places].astype(np.int64), loss, pred)

    def gather(self, dist: DistContext | None) -> Samples:
        """Every rank's part and the carried part, one entry per sample (a collective)."""
        if not self.enabled:
            return Samples.empty()
        local = self._local()
        parts = dist.all_gather_object(local) if dist is not None else [local]
        return Samples.merged([self.carried, *parts])

    def clear(self) -> None:
        self.epoch, self.carried = -1, Samples.empty()
        self.first_step = self.end_step = 0

    def state(self, dist: DistContext | None, epoch: int) -> dict[str, Any] | None:
        """What a checkpoint taken in `epoch` holds of the record (None when it holds none of
        that epoch); called on every rank at the same boundary, as it gathers."""
        if not self.enabled or self.epoch != epoch:
            return None
        s = self.gather(dist)
        return {"epoch": int(epoch), "index": torch.from_numpy(s.index), "loss": torch.from_numpy(s.loss),
                "pred": torch.from_numpy(s.pred)}

    def restore(self, saved: Any, epoch: int, path: str) -> None:
        """Carry a checkpoint's record of the epoch it resumes; CheckpointError for a malformed one."""
        if saved is None or not self.enabled:
            return
        try:
            index, loss, pred = (saved[k].numpy() for k in ("index", "loss", "pred"))
            ok = index.ndim == loss.ndim == pred.ndim == 1 and len(index) == len(loss) == len(pred)
            saved_epoch = int(saved["epoch"])
        except (KeyError, TypeError, AttributeError, ValueError, RuntimeError):
            ok = False
        if not ok:
            raise CheckpointError(f"{path} is not a usable wvtui checkpoint: 'samples' must hold epoch and "
                                  "index/loss/pred 1-D tensors of one length")
        if saved_epoch == epoch:
            self.epoch = epoch
            self.carried = Samples.merged([Samples(index, loss, pred)])
