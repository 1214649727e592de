"""The step window: what the training loop measures between two reports.

Losses are summed on the device, so a step never waits for the GPU; `read()` brings the sums
to the host (the one host-device sync of a window, an all-reduce under DDP) after the same
number of steps on every rank. The host side keeps the window's totals (loss, steps,
data-wait, time spent on other things than training) and turns them into a `StepStats`.

The meter only measures and reports. What a reading means (a non-finite loss that should pause
or stop the run) is the trainer's decision.
"""

from __future__ import annotations

import math
import time

import torch

from core.distributed import DistContext
from core.events import EpochEnd, StepStats

__all__ = ["StepMeter"]

# Weight of the newest window in the smoothed step time behind the ETAs.
_ETA_SMOOTHING = 0.3


class StepMeter:
    """Loss sums on the device, rates, data-wait and ETAs of the current window and epoch."""

    def __init__(self, device: torch.device, images_per_step: int) -> None:
        self.device = device
        self.images_per_step = images_per_step  # batch size x ranks
        self.run_t0 = time.perf_counter()
        self.elapsed_before = 0.0  # seconds of earlier segments of a resumed run
        self.step_time: float | None = None  # smoothed seconds per step
        self.eval_seconds = 0.0  # the latest end-of-epoch evaluation, for the run's ETA
        self.latest_loss = 0.0  # mean loss of the latest read (0.0 before any)
        self.latest_last_loss = 0.0  # the loss of the last step of the latest read
        # The device side: sums since the last read.
        self.loss_sum = torch.zeros((), device=device)
        self.last_loss = torch.zeros((), device=device)
        self.unread = 0
        # The host side: totals since the last report.
        self.window_loss = 0.0
        self.window_steps = 0
        self.window_wait = 0.0
        self.window_idle = 0.0
        self.window_t0 = time.perf_counter()
        # The epoch: its start, time spent not training (pauses, evaluations, saves), its steps.
        self.epoch_t0 = time.perf_counter()
        self.epoch_idle = 0.0
        self.epoch_steps = 0
        self.epoch_train_s = 0.0

    def start_run(self, t0: float, before: float = 0.0) -> None:
        """The run's clock starts at perf_counter() value t0, `before` seconds into the run (the
        earlier segments of a resumed run): the elapsed time of the reports."""
        self.run_t0 = t0
        self.elapsed_before = before

    def elapsed(self, now: float | None = None) -> float:
        """Seconds of the whole run so far, earlier segments included."""
        return self.elapsed_before + (time.perf_counter() if now is None else now) - self.run_t0

    def start_epoch(self) -> None:
        """A fresh window and epoch clock; drops whatever device tensors the window held."""
        now = time.perf_counter()
        self.loss_sum = torch.zeros((), device=self.device)
        self.last_loss = torch.zeros((), device=self.device)
        self.unread = 0
        self.window_loss = 0.0
        self.window_steps = 0
        self.window_wait = 0.0
        self.window_idle = 0.0
        self.window_t0 = now
        self.epoch_t0 = now
        self.epoch_idle = 0.0
        self.epoch_steps = 0
        self.epoch_train_s = 0.0

    def add_step(self, loss: torch.Tensor, wait_s: float) -> None:
        """One optimizer step: its loss stays on the device."""
        self.loss_sum += loss
        self.last_loss = loss
        self.window_wait += wait_s
        self.unread += 1
        self.epoch_steps += 1

    def add_idle(self, seconds: float) -> None:
        """Time that is not training (a pause, a manual evaluation or save): not in the rates."""
        self.window_idle += seconds
        self.epoch_idle += seconds

    def read(self, dist: DistContext) -> float:
        """The mean loss of the steps since the last read, over all ranks (a host sync).

        Every rank must call it after the same steps: under DDP it is an all-reduce.
        """
        packed = torch.stack([self.loss_sum, self.last_loss])
        dist.all_reduce_sum(packed)
        loss_sum, last = (v / dist.world_size for v in packed.tolist())
        n = self.unread
        self.loss_sum = torch.zeros((), device=self.device)
        self.unread = 0
        self.window_loss += loss_sum
        self.window_steps += n
        self.latest_loss = loss_sum / n if n else last
        self.latest_last_loss = last
        return self.latest_loss

    def due(self, interval_s: float) -> bool:
        """Whether the window has run long enough to report (and has steps to report)."""
        return self.window_steps > 0 and self._active_s() >= interval_s

    def report(self, *, epoch: int, step: int, epoch_step: int, steps_per_epoch: int, total_steps: int,
               epochs_left: int, lr: float, bad_images: int) -> StepStats:
        """The window as a StepStats event; starts the next window."""
        now = time.perf_counter()
        active = self._active_s(now)
        step_time = active / self.window_steps
        self.step_time = step_time if self.step_time is None else \
            (1 - _ETA_SMOOTHING) * self.step_time + _ETA_SMOOTHING * step_time
        st = self.step_time
        stats = StepStats(
            epoch=epoch, step=step, epoch_step=epoch_step, steps_per_epoch=steps_per_epoch,
            total_steps=total_steps, loss=self.window_loss / self.window_steps, last_loss=self.latest_last_loss,
            lr=lr, img_per_s=self.window_steps * self.images_per_step / active if active > 0 else 0.0,
            data_wait=min(1.0, max(0.0, self.window_wait / active)) if active > 0 else 0.0,
            eta_epoch_s=(steps_per_epoch - epoch_step) * st,
            eta_run_s=(total_steps - step) * st + epochs_left * self.eval_seconds,
            elapsed_s=self.elapsed(now), bad_images=bad_images,
        )
        self.window_loss = 0.0
        self.window_steps = 0
        self.window_wait = 0.0
        self.window_idle = 0.0
        self.window_t0 = now
        return stats

    def end_epoch_training(self) -> None:
        """The epoch's training time ends here (its evaluation and save are not training)."""
        self.epoch_train_s = time.perf_counter() - self.epoch_t0 - self.epoch_idle

    def epoch_end(self, epoch: int, step: int) -> EpochEnd:
        train_s = self.epoch_train_s
        images = self.epoch_steps * self.images_per_step
        return EpochEnd(epoch=epoch, step=step, seconds=time.perf_counter() - self.epoch_t0,
                        img_per_s=images / train_s if train_s > 0 else 0.0)

    @property
    def latest_loss_is_finite(self) -> bool:
        return math.isfinite(self.latest_loss)

    def _active_s(self, now: float | None = None) -> float:
        return (time.perf_counter() if now is None else now) - self.window_t0 - self.window_idle
