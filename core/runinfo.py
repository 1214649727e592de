"""What a run directory says about its run, cheaply: live or how it ended, where it got to.

    run_info("runs/a")   -> RunInfo(out_dir="runs/a", state="live", pid=4242, epoch=3, step=1200, ...)
    list_runs("runs")    -> [RunInfo, ...] newest first (a missing root: [])

A run directory holds config.json or metrics.jsonl. Its state:
- "live": OUT/control/endpoint.json names a process that is alive and a socket that accepts a
  connection (the run serves its console there);
- otherwise from the last segment of metrics.jsonl (a resumed run appends a "started" record,
  then its own records): its "finished" record's reason, completed -> "finished", stopped ->
  "stopped", error or nonfinite -> "failed"; a segment without one -> "crashed" (killed, power
  lost); no records yet -> "new".

A run of days has tens of thousands of lines: the file is read backwards in blocks, and only
the lines this needs are parsed as JSON.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Iterator

from core.protocol import pointer_path

__all__ = ["RunInfo", "run_info", "list_runs", "is_run_dir", "live_pid"]

_BLOCK = 1 << 16
# Records are json.dumps output: the event name is found without parsing the (maybe large) line.
_EVENT = re.compile(rb'"event":\s*"([a-z_]+)"')
_PROGRESS = {"train", "epoch", "eval", "finished"}
_ENDED = {"completed": "finished", "stopped": "stopped", "error": "failed", "nonfinite": "failed"}


@dataclass(frozen=True)
class RunInfo:
    out_dir: str
    state: str  # "live" | "finished" | "stopped" | "failed" | "crashed" | "new"
    pid: int | None  # the serving process, while live
    epoch: int | None
    step: int | None
    best_acc1: float | None
    started: float | None  # unix seconds


def is_run_dir(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name)) for name in ("config.json", "metrics.jsonl"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def live_pid(out_dir: str, *, timeout: float = 1.0) -> int | None:
    """The pid of the process serving OUT's control socket, or None when nothing serves it.

    Connects and closes at once (the hello is not read): a stale endpoint.json left by a
    killed run names a socket nobody accepts on, or a pid that is gone.
    """
    try:
        with open(pointer_path(out_dir), encoding="utf-8") as f:
            endpoint = json.load(f)
        pid, path = int(endpoint["pid"]), str(endpoint["socket"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid <= 0 or not _pid_alive(pid):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except TimeoutError:  # a backlog full of connections: a live server, busy
        return pid
    except OSError:
        return None
    finally:
        sock.close()
    return pid


def _lines_backwards(path: str) -> Iterator[bytes]:
    """The lines of a file, last first, read in blocks from the end."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        rest = b""
        while end > 0:
            start = max(0, end - _BLOCK)
            f.seek(start)
            chunk = f.read(end - start) + rest
            end = start
            lines = chunk.split(b"\n")
            rest = lines.pop(0)  # maybe the tail of a line that starts in an earlier block
            for line in reversed(lines):
                if line.strip():
                    yield line
        if rest.strip():
            yield rest


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:  # a line torn by a crash
        return None
    return record if isinstance(record, dict) else None


def _first_record(path: str) -> dict[str, Any] | None:
    with open(path, "rb") as f:
        return _parse(f.readline())


@dataclass
class _Tail:
    ended: str | None = None  # state from the last segment's end: "finished", ..., "crashed"
    progress: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    any_record: bool = False


def _read_tail(path: str) -> _Tail:
    tail = _Tail()
    for line in _lines_backwards(path):
        m = _EVENT.search(line)
        if m is None:
            continue
        name = m.group(1).decode()
        wanted = (
            (tail.ended is None and name in ("finished", "started"))
            or (tail.progress is None and name in _PROGRESS)
            or (tail.eval is None and name in ("eval", "finished"))
        )
        if not wanted:
            tail.any_record = True
            continue
        record = _parse(line)
        if record is None:
            continue
        tail.any_record = True
        if tail.ended is None and name == "finished":
            tail.ended = _ENDED.get(str(record.get("reason")), "failed")
        elif tail.ended is None and name == "started":
            tail.ended = "crashed"  # the last segment started and never said how it ended
        if tail.progress is None and name in _PROGRESS:
            tail.progress = record
        if tail.eval is None and name in ("eval", "finished") and record.get("best_acc1") is not None:
            tail.eval = record
        if tail.ended is not None and tail.progress is not None and tail.eval is not None:
            break
    if tail.ended is None and tail.any_record:
        tail.ended = "crashed"  # records, but not even a "started" (an older or cut file)
    return tail


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _started(out_dir: str, metrics: str) -> float | None:
    first = None
    try:
        first = _first_record(metrics)
    except OSError:
        pass
    if first is not None and first.get("event") == "started" and _float(first.get("time")) is not None:
        return float(first["time"])
    for name in ("config.json", "metrics.jsonl"):
        try:
            return os.stat(os.path.join(out_dir, name)).st_mtime
        except OSError:
            continue
    return None


def run_info(out_dir: str) -> RunInfo:
    """What OUT's files and control socket say about its run (see the module docstring)."""
    metrics = os.path.join(out_dir, "metrics.jsonl")
    try:
        tail = _read_tail(metrics)
    except OSError:
        tail = _Tail()
    pid = live_pid(out_dir)
    state = "live" if pid is not None else (tail.ended or "new")
    progress = tail.progress or {}
    best = (tail.eval or {}).get("best_acc1")
    return RunInfo(out_dir=out_dir, state=state, pid=pid, epoch=_int(progress.get("epoch")),
                   step=_int(progress.get("step")), best_acc1=_float(best), started=_started(out_dir, metrics))


def list_runs(root: str = "runs") -> list[RunInfo]:
    """The run directories directly under `root`, newest first (a missing root: [])."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    runs = [run_info(os.path.join(root, n)) for n in names if is_run_dir(os.path.join(root, n))]
    runs.sort(key=lambda r: (r.started or 0.0, r.out_dir), reverse=True)
    return runs
