"""The run directory's text files: OUT/config.json and OUT/metrics.jsonl.

`RunLog` is a sink. metrics.jsonl gets one JSON object a line with an `"event"` key
("train", "eval", "epoch", "checkpoint", plus "warning", "error" and "finished" for post-mortems),
written and flushed line by line so `tail -f` follows a live run. A resumed run appends.
"""

from __future__ import annotations

import json
import math
import os
from typing import IO, Any

from core.events import (
    CheckpointSaved,
    EpochEnd,
    EvalResult,
    Event,
    RunError,
    RunFinished,
    RunStarted,
    RunWarning,
    StepStats,
)

__all__ = ["RunLog", "read_metrics"]


def _finite(v: Any) -> Any:
    # JSON has no NaN/Infinity; a non-finite loss is written as null so every line stays valid JSON.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


class RunLog:
    """Sink that writes OUT/config.json at RunStarted and appends OUT/metrics.jsonl."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = os.fspath(out_dir)
        self.config_path = os.path.join(self.out_dir, "config.json")
        self.metrics_path = os.path.join(self.out_dir, "metrics.jsonl")
        self._file: IO[str] | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._write_config(event)
        record = self._record(event)
        if record is not None:
            self._write(record)
        if isinstance(event, RunFinished):
            self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write_config(self, ev: RunStarted) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        tmp = self.config_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(_finite(ev.config), f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, self.config_path)

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            os.makedirs(self.out_dir, exist_ok=True)
            self._file = open(self.metrics_path, "a", encoding="utf-8", buffering=1)
        self._file.write(json.dumps(_finite(record), allow_nan=False) + "\n")
        self._file.flush()

    @staticmethod
    def _record(ev: Event) -> dict[str, Any] | None:
        if isinstance(ev, StepStats):
            return {
                "event": "train",
                "epoch": ev.epoch,
                "step": ev.step,
                "epoch_step": ev.epoch_step,
                "loss": ev.loss,
                "last_loss": ev.last_loss,
                "lr": ev.lr,
                "img_per_s": ev.img_per_s,
                "data_wait": ev.data_wait,
                "bad_images": ev.bad_images,
            }
        if isinstance(ev, EvalResult):
            return {
                "event": "eval",
                "epoch": ev.epoch,
                "step": ev.step,
                "loss": ev.loss,
                "acc1": ev.acc1,
                "acc5": ev.acc5,
                "best_acc1": ev.best_acc1,
                "best_acc5": ev.best_acc5,
                "manual": ev.manual,
                "is_best": ev.is_best,
                "images": ev.images,
                "seconds": ev.seconds,
                "per_class_acc1": list(ev.per_class_acc1),
            }
        if isinstance(ev, EpochEnd):
            return {"event": "epoch", "epoch": ev.epoch, "step": ev.step, "seconds": ev.seconds,
                    "img_per_s": ev.img_per_s}
        if isinstance(ev, CheckpointSaved):
            return {"event": "checkpoint", "path": ev.path, "reason": ev.reason, "epoch": ev.epoch,
                    "step": ev.step, "seconds": ev.seconds}
        if isinstance(ev, RunWarning):
            return {"event": "warning", "kind": ev.kind, "message": ev.message, "paths": list(ev.paths)}
        if isinstance(ev, RunError):
            return {"event": "error", "kind": ev.kind, "message": ev.message}
        if isinstance(ev, RunFinished):
            return {"event": "finished", "reason": ev.reason, "epoch": ev.epoch, "step": ev.step,
                    "best_acc1": ev.best_acc1, "best_acc5": ev.best_acc5, "seconds": ev.seconds}
        return None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file (a torn last line from a crash is skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
