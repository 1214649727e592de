"""Plain-text front end: the reference training script's lines, for nohup, log files and scripts.

    Epoch[1] starting
    Loss: 2.3012
    [epoch 1/80 step 120/515 | run 120/41200] 412.3 img/s | data-wait 4% | ETA epoch 2:41, run 21:14:05 | lr 0.1
    Average Loss: 1.8731 Acc@1 41.200 (Best 41.200) Acc@5 77.480
    Epoch[1] done in 172.4s

Every event line comes from `wvtui.eventtext` (the console's event log writes the same words);
durations are `eventtext.duration`'s: minutes:seconds under an hour, then H:MM:SS, then days.
This module adds what only a log file needs: the epoch announcements, a `Loss:` line per
report and a progress line at most every `progress_interval_s` seconds.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from core.events import EpochEnd, Event, RunError, RunStarted, StepStats

from .eventtext import describe, duration, loss, plain


class HeadlessPrinter:
    """A sink that prints one line per event worth a line; flushed line by line.

    Ranks other than 0 print errors only, prefixed with their rank. A stream that fails (closed
    pipe, hung-up terminal) silences the printer instead of breaking the trainer.
    """

    def __init__(self, stream: TextIO, *, rank: int = 0, progress_interval_s: float = 10.0,
                 epochs: int = 0, current_epoch: int = -1) -> None:
        """epochs, current_epoch: for a printer attached to a run already under way (after a
        hang-up), which will not see RunStarted; current_epoch is the trainer's `epoch` (the
        epochs done), so the epoch it is in has been announced already."""
        self.stream = stream
        self.rank = rank
        self.progress_interval_s = progress_interval_s
        self._last_progress = float("-inf")
        self._epochs = epochs
        self._announced = current_epoch + 1  # the highest (1-based) epoch announced: "Epoch[N] starting"
        self._broken = False
        self._lock = threading.Lock()

    def _print(self, line: str) -> None:
        if self._broken:
            return
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # EPIPE/EIO, or a closed file
                self._broken = True

    def _announce(self, epoch: int) -> None:
        if epoch > self._announced and (self._epochs == 0 or epoch <= self._epochs):
            self._announced = epoch
            self._print(f"Epoch[{epoch}] starting")

    def __call__(self, event: Event) -> None:
        if self.rank != 0:
            if isinstance(event, RunError):
                for line in describe(event):
                    self._print(f"[rank {self.rank}] {plain(line)}")
            return
        if isinstance(event, RunStarted):
            self._epochs = int(event.config.get("epochs", 0))
        elif isinstance(event, StepStats):
            self._step(event)
            return
        for line in describe(event):
            self._print(plain(line))
        if isinstance(event, RunStarted):
            self._announce(event.start_epoch + 1)  # start_epoch: the epochs done
        elif isinstance(event, EpochEnd):
            self._announce(event.epoch + 1)  # the epoch after the one that ended

    def _step(self, ev: StepStats) -> None:
        self._announce(ev.epoch)
        self._print(f"Loss: {loss(ev.loss)}")
        now = time.monotonic()
        if now - self._last_progress >= self.progress_interval_s:
            self._last_progress = now
            bad = f" | bad images {ev.bad_images}" if ev.bad_images else ""
            self._print(
                f"[epoch {ev.epoch}/{self._epochs or '?'} step {ev.epoch_step}/{ev.steps_per_epoch}"
                f" | run {ev.step}/{ev.total_steps}] {ev.img_per_s:.1f} img/s"
                f" | data-wait {100 * ev.data_wait:.0f}%"
                f" | ETA epoch {duration(ev.eta_epoch_s)}, run {duration(ev.eta_run_s)}"
                f" | lr {ev.lr:.4g}{bad}"
            )
