"""Plain-text front end: the reference training script's lines, for nohup, log files and scripts.

    Epoch[1] starting
    Loss: 2.3012
    [epoch 1/80 step 120/515 | run 120/41200] 412.3 img/s | data-wait 4% | ETA epoch 0:02:41, run 21:14:05 | lr 0.1
    Average Loss: 1.8731 Acc@1 41.200 (Best 41.200) Acc@5 77.480
    Epoch[1] done in 172.4s

Epochs are numbered from 1 here, as a person counts them; metrics.jsonl keeps the trainer's
0-based numbers.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TextIO

from core.events import (
    CheckpointSaved,
    EpochEnd,
    EvalResult,
    Event,
    Paused,
    Resumed,
    RunError,
    RunFinished,
    RunStarted,
    RunWarning,
    StepStats,
)


def format_duration(seconds: float) -> str:
    """H:MM:SS, or "?" when the trainer cannot estimate yet."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    if s >= 86400:
        return f"{s // 86400}d{(s % 86400) // 3600:02d}h{(s % 3600) // 60:02d}m"
    return f"{s // 3600}:{(s % 3600) // 60:02d}:{s % 60:02d}"


class HeadlessPrinter:
    """A sink that prints one line per event worth a line; flushed line by line.

    The progress line follows a `Loss:` line at most every `progress_interval_s` seconds so a
    log of a multi-day run stays readable. Ranks other than 0 print errors only. A stream that
    fails (closed pipe, hung-up terminal) silences the printer instead of breaking the trainer.
    """

    def __init__(self, stream: TextIO, *, rank: int | None = None, progress_interval_s: float = 10.0,
                 epochs: int = 0, current_epoch: int = -1) -> None:
        """epochs, current_epoch: for a printer attached to a run already under way (after a
        hang-up), which will not see RunStarted."""
        self.stream = stream
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self.progress_interval_s = progress_interval_s
        self._last_progress = float("-inf")
        self._epochs = epochs
        self._announced = current_epoch  # highest 0-based epoch announced with "Epoch[i] starting"
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
        if epoch > self._announced and (self._epochs == 0 or epoch < self._epochs):
            self._announced = epoch
            self._print(f"Epoch[{epoch + 1}] starting")

    def __call__(self, event: Event) -> None:
        if self.rank != 0 and not isinstance(event, RunError):
            return
        handler = getattr(self, "_on_" + type(event).__name__, None)
        if handler is not None:
            handler(event)

    def _on_RunStarted(self, ev: RunStarted) -> None:
        self._epochs = int(ev.config.get("epochs", 0))
        s = ev.summary or {}
        demo = " (demo)" if ev.config.get("demo") else ""
        self._print(
            f"wvtui{demo}: {ev.model} ({ev.num_params / 1e6:.1f}M params) on {ev.device}, amp {ev.amp}"
            + (f", {ev.world_size} processes" if ev.world_size > 1 else "")
        )
        if s:
            self._print(
                f"Dataset {s.get('root', '?')}: {s.get('num_classes', '?')} classes, "
                f"{s.get('train_images', '?')} train / {s.get('val_images', '?')} val images"
            )
        self._print(
            f"Run directory {ev.out_dir}: {self._epochs} epochs x {ev.steps_per_epoch} steps "
            f"= {ev.total_steps} steps"
        )
        if ev.resumed_from:
            self._print(f"Resumed from {ev.resumed_from} at epoch {ev.start_epoch + 1}, step {ev.start_step}")
        self._announce(ev.start_epoch)

    def _on_StepStats(self, ev: StepStats) -> None:
        self._announce(ev.epoch)
        self._print(f"Loss: {ev.loss:.4f}")
        now = time.monotonic()
        if now - self._last_progress >= self.progress_interval_s:
            self._last_progress = now
            bad = f" | bad images {ev.bad_images}" if ev.bad_images else ""
            self._print(
                f"[epoch {ev.epoch + 1}/{self._epochs or '?'} step {ev.epoch_step}/{ev.steps_per_epoch}"
                f" | run {ev.step}/{ev.total_steps}] {ev.img_per_s:.1f} img/s"
                f" | data-wait {100 * ev.data_wait:.0f}%"
                f" | ETA epoch {format_duration(ev.eta_epoch_s)}, run {format_duration(ev.eta_run_s)}"
                f" | lr {ev.lr:.4g}{bad}"
            )

    def _on_EvalResult(self, ev: EvalResult) -> None:
        line = (
            f"Average Loss: {ev.loss:.4f} Acc@1 {ev.acc1:.3f} (Best {ev.best_acc1:.3f}) Acc@5 {ev.acc5:.3f}"
        )
        if ev.manual:
            line += f" [manual, epoch {ev.epoch + 1} step {ev.step}]"
        self._print(line)

    def _on_EpochEnd(self, ev: EpochEnd) -> None:
        self._print(f"Epoch[{ev.epoch + 1}] done in {ev.seconds:.1f}s")
        self._announce(ev.epoch + 1)

    def _on_CheckpointSaved(self, ev: CheckpointSaved) -> None:
        self._print(f"Checkpoint ({ev.reason}) saved to {ev.path} in {ev.seconds:.2f}s")

    def _on_Paused(self, ev: Paused) -> None:
        self._print(f"Paused at epoch {ev.epoch + 1}, step {ev.step}")

    def _on_Resumed(self, ev: Resumed) -> None:
        self._print(f"Resumed at epoch {ev.epoch + 1}, step {ev.step}")

    def _on_RunWarning(self, ev: RunWarning) -> None:
        self._print(f"Warning ({ev.kind}): {ev.message}")
        for p in ev.paths[:5]:
            self._print(f"  {p}")
        if len(ev.paths) > 5:
            self._print(f"  ... and {len(ev.paths) - 5} more")

    def _on_RunError(self, ev: RunError) -> None:
        prefix = f"[rank {self.rank}] " if self.rank != 0 else ""
        self._print(f"{prefix}Error ({ev.kind}): {ev.message}")

    def _on_RunFinished(self, ev: RunFinished) -> None:
        self._print(
            f"Finished ({ev.reason}) at epoch {ev.epoch + 1 if ev.reason != 'completed' else ev.epoch}"
            f", step {ev.step} after {format_duration(ev.seconds)}: "
            f"best Acc@1 {ev.best_acc1:.3f} Acc@5 {ev.best_acc5:.3f}"
        )
