"""The run directory's text files: OUT/config.json and OUT/metrics.jsonl.

`RunLog` is a sink that writes what events say: every event whose class is `LOGGED` becomes
one line of metrics.jsonl, `event.to_record()` as JSON (its `"event"` key is the class's
`RECORD`: "started", "state", "train", "eval", "epoch", "checkpoint", ...) plus `"time"`, the unix
time it was written. Each line goes to
the file in one `write` on an append-only descriptor, so `tail -f` follows a live run and a
reader never sees half a record unless the process died inside that write.

A run directory outlives disks and crashes:
- a resumed run appends; a torn last line left by a crash mid-write is cut off first, so every
  line of the file stays valid JSON;
- a failed write (disk full, I/O error) is undone (the file is cut back to its last whole line),
  reported once through `warn`, and the run goes on; later events are tried again, so the log
  resumes when space comes back;
- files are created with the process umask (0666 & ~umask), like any other tool's output.

config.json is the configuration in effect: written at RunStarted, and rewritten when a
ConfigChanged says a resumed run applies other settings than its checkpoint's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

from core.atomic import atomic_write
from core.events import ConfigChanged, Event, RunFinished, RunStarted

__all__ = ["RunLog", "read_metrics", "repair_torn_tail", "epoch_of"]


def _stderr(message: str) -> None:
    print(f"wvtui: warning: {message}", file=sys.stderr, flush=True)


def repair_torn_tail(path: str | os.PathLike) -> int:
    """Cut a last line that has no newline (a write torn by a crash) off the file at `path`.

    Returns the number of bytes removed (0 when the file ends cleanly or does not exist).
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        # Read backwards in blocks until a newline: a torn record is one line, rarely long.
        end, block = size, 65536
        while end > 0:
            start = max(0, end - block)
            chunk = os.pread(fd, end - start, start)
            if end == size and chunk.endswith(b"\n"):
                return 0
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            end = start
        else:
            keep = 0
        os.ftruncate(fd, keep)
        return size - keep
    finally:
        os.close(fd)


class RunLog:
    """Sink that writes OUT/config.json and appends OUT/metrics.jsonl (see the module docstring).

    warn: called with one line the first time a file cannot be written (default: stderr).
    """

    def __init__(self, out_dir: str | os.PathLike, *, warn: Callable[[str], None] = _stderr) -> None:
        self.out_dir = os.fspath(out_dir)
        self.config_path = os.path.join(self.out_dir, "config.json")
        self.metrics_path = os.path.join(self.out_dir, "metrics.jsonl")
        self.warn = warn
        self.failed_writes = 0
        self._fd: int | None = None
        self._config: dict[str, Any] | None = None
        self._warned: set[str] = set()

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._config = dict(event.to_record()["config"])
            self._write_config()
        elif isinstance(event, ConfigChanged) and self._config is not None:
            for name, (_old, new) in event.to_record()["changes"].items():
                self._config[name] = new
            self._write_config()
        if type(event).LOGGED:
            # "time": when it was logged (unix seconds), for the log pane's stamps on a replay;
            # event_from_record ignores it like any key that is not a field.
            self._append(json.dumps({**event.to_record(), "time": time.time()}, allow_nan=False) + "\n")
        if isinstance(event, RunFinished):
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _failed(self, path: str, exc: OSError) -> None:
        self.failed_writes += 1
        if path not in self._warned:
            self._warned.add(path)
            self.warn(f"cannot write {path}: {exc.strerror or exc}; the run goes on "
                      f"(later records are tried again, this warning is not repeated)")

    def _write_config(self) -> None:
        try:
            with atomic_write(self.config_path, "w", encoding="utf-8") as f:
                json.dump(self._config, f, indent=2, sort_keys=True)
                f.write("\n")
        except OSError as exc:
            self._failed(self.config_path, exc)

    def _open(self) -> int:
        os.makedirs(self.out_dir, exist_ok=True)
        # Before the first append of this process: a crash of an earlier one may have torn the
        # last line, and our first record would otherwise be glued onto it.
        removed = repair_torn_tail(self.metrics_path)
        if removed:
            self.warn(f"{self.metrics_path} ended in a torn line ({removed} bytes, a crash mid-write); "
                      "removed it before appending")
        return os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def _append(self, line: str) -> None:
        data = line.encode("utf-8")
        try:
            if self._fd is None:
                self._fd = self._open()
            before = os.fstat(self._fd).st_size
        except OSError as exc:
            self._failed(self.metrics_path, exc)
            return
        try:
            written = os.write(self._fd, data)
            if written != len(data):  # a short write: the disk filled up inside this line
                raise OSError(28, os.strerror(28))
        except OSError as exc:
            try:
                os.ftruncate(self._fd, before)  # no half line left for the next record to join
            except OSError:
                pass
            self._failed(self.metrics_path, exc)


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


# Records whose `epoch` an older wvtui (before the one 1-based numbering) wrote counted from 0;
# its ends ("completed" runs, epoch checkpoints) already said the number of epochs done.
_ZERO_BASED = {"train", "eval", "epoch", "noise", "state", "config_change", "finished", "checkpoint"}


def epoch_of(record: dict[str, Any]) -> int | None:
    """The 1-based epoch of a metrics.jsonl record, None when it has none.

    Lines written since the one epoch numbering carry "time" and say it as it is; older lines
    (no "time") counted from 0 and are moved up by one.
    """
    epoch = record.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        return None
    if "time" in record or record.get("event") not in _ZERO_BASED:
        return epoch
    if (record.get("event"), record.get("reason")) in (("finished", "completed"), ("checkpoint", "epoch")):
        return epoch
    return epoch + 1
