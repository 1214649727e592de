"""What a run has said so far, for a console that attaches (or starts) in the middle of it.

`RunHistory` is an event sink. At construction it reads OUT/metrics.jsonl, the records earlier
segments of a resumed run wrote; then it keeps this segment's logged records as they come, the
latest NoiseDetails (too big for the log, but the noise pane wants it), the run's state and its
configuration. A resumed run may go back over steps an earlier segment had logged (it resumes
from its last checkpoint, not from its last step): when a "started" record says start_step S,
the earlier progress records after S are dropped, so charts show one line, not two. A new run
started in a directory an earlier run used (start_step 0, resumed from nothing) starts empty.

Memory stays bounded over a days-long run: at most about MAX_TRAIN "train" records are kept,
older ones thinned evenly; evaluation, epoch and checkpoint records are all kept.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from core.events import Event, NoiseDetails

__all__ = ["RunHistory", "MAX_TRAIN"]

MAX_TRAIN = 20000
_RECENT = 2000  # the newest train records are never thinned: the chart's right end stays exact
_PROGRESS = frozenset({"train", "eval", "epoch", "checkpoint", "noise"})


class RunHistory:
    """See the module docstring. Thread-safe: the trainer feeds it, the endpoint reads it."""

    def __init__(self, out_dir: str | os.PathLike, *, max_train: int = MAX_TRAIN) -> None:
        self.out_dir = os.fspath(out_dir)
        self.max_train = max(8, max_train)
        self._recent = min(_RECENT, self.max_train // 4)
        self._lock = threading.Lock()
        # (train ordinal or -1, record): the ordinal decides which train records thinning keeps.
        self._records: list[tuple[int, dict[str, Any]]] = []
        self._train = 0  # train records kept
        self._ordinal = 0  # train records ever added
        self._stride = 1  # older train records are kept when their ordinal is a multiple of this
        self._noise: dict[str, Any] | None = None
        self._config: dict[str, Any] | None = None
        self._state = "starting"
        self._seen = 0  # events received through __call__ (the endpoint lines its stream up on it)
        self.skipped_lines = 0
        self._load(os.path.join(self.out_dir, "metrics.jsonl"))

    def _load(self, path: str) -> None:
        try:
            f = open(path, "rb")
        except OSError:
            return  # a new run (or an unreadable log: the console starts empty, the run goes on)
        with f:
            for raw in f:
                try:
                    record = json.loads(raw)
                except ValueError:  # a torn line from a crash, or garbage: not a record
                    self.skipped_lines += raw.strip() != b""
                    continue
                if isinstance(record, dict) and isinstance(record.get("event"), str):
                    self._add(record)
        self._state = "starting"  # an earlier segment's last state is not this process's

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._seen += 1
            if isinstance(event, NoiseDetails):
                self._noise = event.to_record()
            elif type(event).LOGGED:
                record = event.to_record()
                record.setdefault("time", time.time())
                self._add(record)

    def _add(self, record: dict[str, Any]) -> None:
        kind = record["event"]
        if kind == "started":
            if record.get("start_step") == 0 and not record.get("resumed_from"):
                # A new run in an old directory: its own history only.
                self._records, self._train, self._stride = [], 0, 1
            else:
                self._went_back_to(record.get("start_step"))
            if isinstance(record.get("config"), dict):
                self._config = dict(record["config"])
        elif kind == "config_change" and self._config is not None and isinstance(record.get("changes"), dict):
            for name, change in record["changes"].items():
                if isinstance(change, (list, tuple)) and len(change) == 2:
                    self._config[name] = change[1]
        elif kind == "state" and isinstance(record.get("state"), str):
            self._state = record["state"]
        if kind == "train":
            self._ordinal += 1
            self._records.append((self._ordinal, record))
            self._train += 1
            if self._train > self.max_train:
                self._thin()
        else:
            self._records.append((-1, record))

    def _went_back_to(self, start_step: Any) -> None:
        if not isinstance(start_step, int) or isinstance(start_step, bool):
            return
        kept = [(n, r) for n, r in self._records
                if not (r["event"] in _PROGRESS and isinstance(r.get("step"), int) and r["step"] > start_step)]
        if len(kept) != len(self._records):
            self._records = kept
            self._train = sum(n >= 0 for n, _ in kept)

    def _thin(self) -> None:
        """Double the stride of the older train records (an even thinning: the chart keeps its
        shape); the newest few all stay, so the chart's right end is exact."""
        older = self._ordinal - self._recent
        while older / self._stride > self.max_train // 2:
            self._stride *= 2
        keep = 1 % self._stride
        self._records = [(n, r) for n, r in self._records if n < 0 or n > older or n % self._stride == keep]
        self._train = sum(n >= 0 for n, _ in self._records)

    def snapshot(self) -> dict[str, Any]:
        """{"records", "noise_details", "state", "config", "seen"}; the lists are copies."""
        with self._lock:
            return {
                "records": [r for _, r in self._records],
                "noise_details": self._noise,
                "state": self._state,
                "config": None if self._config is None else dict(self._config),
                "seen": self._seen,
            }

    @property
    def seen(self) -> int:
        with self._lock:
            return self._seen
