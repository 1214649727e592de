"""Checkpoint files: atomic writes, loads that validate every field, and which file to resume.

A checkpoint is a plain dict saved with `torch.save` and read back with
`torch.load(weights_only=True)` only, so loading never runs code from the file. Everything in it
is a tensor, a number, a string, or a list/dict of those (RNG states included). A file that
cannot be used is a `CheckpointError` whose message is one line naming the file and the reason;
`--resume auto` never starts fresh over such a file, because the run would overwrite it.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import stat
import time
import zipfile
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from core.atomic import atomic_write
from core.rng import capture_rng_state, restore_rng_state, rng_state_problem

__all__ = [
    "FORMAT_VERSION",
    "REQUIRED_KEYS",
    "CHECKPOINT_NAMES",
    "CheckpointError",
    "CheckpointSaver",
    "SaveOutcome",
    "capture_rng_state",
    "find_resumable",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

FORMAT_VERSION = 1

REQUIRED_KEYS = (
    "format_version", "model", "model_name", "num_classes", "optimizer", "scheduler", "scaler", "epoch",
    "step", "epoch_step", "rng", "best_acc1", "best_acc5", "history", "config", "world_size",
)

# The files a run writes under OUT/checkpoints/, newest preferred in this order on a tie.
CHECKPOINT_NAMES = ("last.pt", "best.pt")


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line meant for the user.

    `problems` lists (path, reason) for each file at fault; the message joins "{path} {reason}".
    """

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def _refuse(path: str, reason: str) -> CheckpointError:
    return CheckpointError(f"{path} {reason}", [(path, reason)])


# ---------------------------------------------------------------------------------- writing
def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `state` to `path` so that `path` is always either the old file or the complete new
    one (`core.atomic.atomic_write`: same-directory temp file, fsync, rename, fsync of the
    directory; mode 0o666 less the umask). On failure the previous file is untouched and the
    exception propagates: an OSError when the disk is full, whatever torch wraps it in."""
    with atomic_write(path) as f:
        try:
            torch.save(state, f)
        except RuntimeError as e:
            # torch's archive writer reports a failed write (disk full, quota, file size
            # limit) as RuntimeError("unexpected pos ..."); the OSError behind it says why.
            cause = _os_error_in(e)
            if cause is None:
                raise
            raise cause from e


def _os_error_in(e: BaseException | None) -> OSError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


@dataclass(frozen=True)
class SaveOutcome:
    status: str  # saved | skipped (non-finite model) | failed (OSError)
    path: str
    seconds: float = 0.0
    error: str = ""  # one line: why it was skipped or failed ("No space left on device")


class CheckpointSaver:
    """Writes OUT/checkpoints/<name> for one run (timm's CheckpointSaver is the model).

    On ranks other than 0 (`enabled=False`) every save reports "saved" and writes nothing. A
    model with non-finite weights is never written ("skipped"); a write that fails with an
    OSError (disk full, permissions, quota) is "failed". In both cases the previous file is
    exactly as it was, and training may go on.
    """

    def __init__(self, directory: str | os.PathLike, *, enabled: bool = True) -> None:
        self.directory = os.fspath(directory)
        self.enabled = enabled
        # Whether the latest attempted write failed: a run that ends so did not keep its progress.
        self.last_failed = False

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def exists(self, name: str) -> bool:
        return os.path.isfile(self.path(name))

    def remove_stale_temp_files(self) -> list[str]:
        """Delete the temp files of saves killed midway (the real files are intact); their paths."""
        if not self.enabled or not os.path.isdir(self.directory):
            return []
        removed = []
        for name in sorted(os.listdir(self.directory)):
            if name.startswith(".") and name.endswith(".tmp"):
                try:
                    os.unlink(self.path(name))
                    removed.append(self.path(name))
                except OSError:
                    pass
        return removed

    def save(self, name: str, state_fn: Callable[[], dict[str, Any]], model: nn.Module | None) -> SaveOutcome:
        """Build the state with `state_fn()` (only when it will be written) and write it atomically."""
        path = self.path(name)
        if not self.enabled:
            return SaveOutcome("saved", path)
        if model is not None and not _is_finite(model):
            return SaveOutcome("skipped", path, error="the model has non-finite weights")
        t0 = time.perf_counter()
        try:
            save_checkpoint(state_fn(), path)
        except OSError as e:
            self.last_failed = True
            return SaveOutcome("failed", path, time.perf_counter() - t0, error=e.strerror or str(e) or type(e).__name__)
        self.last_failed = False
        return SaveOutcome("saved", path, time.perf_counter() - t0)


def _is_finite(model: nn.Module) -> bool:
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    if not tensors:
        return True
    # One host read for the whole model, not one per tensor.
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


# ---------------------------------------------------------------------------------- reading
def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *, mmap: bool = False) -> dict:
    """Load a checkpoint written by `save_checkpoint` and validate every field; CheckpointError otherwise.

    `map_location="meta"` reads only the structure (no tensor data), which is how
    `find_resumable` checks files cheaply.
    """
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise _refuse(path, "does not exist") from None
    except OSError as e:
        raise _refuse(path, f"cannot be read: {_strerror(e)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise _refuse(path, "is a directory, not a checkpoint file")
    if not stat.S_ISREG(info.st_mode):
        # A FIFO or device would block or stream forever under torch.load.
        raise _refuse(path, "is not a regular file, so not a checkpoint")
    if info.st_size == 0:
        raise _refuse(path, "is empty (0 bytes): not a PyTorch checkpoint")
    try:
        with open(path, "rb") as f:
            _check_archive(f, path)
            f.seek(0)
            state = torch.load(path if mmap else f, map_location=map_location, weights_only=True, mmap=mmap)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        # weights_only refuses any global outside the tensor/container allowlist: that is how
        # a crafted pickle (or an arbitrary Python object) shows up. Never retry unsafely.
        raise _refuse(path, f"is not a wvtui checkpoint: it holds {_refused_global(e)}, "
                            "and loading that could run code; refusing to load it") from None
    except OSError as e:
        raise _refuse(path, f"cannot be read: {_strerror(e)}") from None
    except Exception as e:  # torch raises assorted types for damaged archives
        raise _refuse(path, f"is truncated or damaged ({_first_line(e)})") from None
    problem = _content_problem(state)
    if problem:
        raise _refuse(path, problem)
    return state


def _check_archive(f, path: str) -> None:
    """Every wvtui checkpoint is a torch zip archive: say in words what any other file is."""
    head = f.read(12)
    if head.startswith(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20"):  # torch's legacy magic number
        raise _refuse(path, "is a PyTorch file in the legacy (pre-1.6) format, not a wvtui checkpoint")
    if head[:1] == b"\x80":
        raise _refuse(path, "is a Python pickle, not a PyTorch checkpoint")
    if not head.startswith(b"PK\x03\x04"):
        raise _refuse(path, f"is not a PyTorch checkpoint (it starts with {_short(head)})")
    f.seek(0)
    try:
        names = zipfile.ZipFile(f).namelist()
    except (zipfile.BadZipFile, ValueError, EOFError):
        raise _refuse(path, "is truncated or damaged (its zip directory cannot be read)") from None
    if not any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
        raise _refuse(path, "is a zip archive, not a PyTorch checkpoint")


def _refused_global(e: pickle.UnpicklingError) -> str:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    return f"a Python object ({found.group(1)})" if found else "Python objects other than tensors and plain data"


def _strerror(e: OSError) -> str:
    text = e.strerror or str(e) or type(e).__name__
    return text[:1].lower() + text[1:]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:160] if text else "") or type(e).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_percent(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 <= x <= 100


def _is_state_dict(x: Any) -> bool:
    return (isinstance(x, dict) and len(x) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in x.items()))


def _is_optimizer_state(x: Any) -> bool:
    return (isinstance(x, dict) and isinstance(x.get("state"), dict) and isinstance(x.get("param_groups"), list)
            and all(isinstance(g, dict) for g in x["param_groups"]))


# key -> (test, what the value must be). Optional keys (newer writers) are checked when present.
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (_is_state_dict, "a state_dict (a dict of tensors)"),
    "model_name": (lambda x: isinstance(x, str) and bool(x.strip()), "a model name"),
    "num_classes": (lambda x: _is_int(x) and x >= 1, "a positive integer"),
    "optimizer": (_is_optimizer_state, "an optimizer state_dict"),
    "scheduler": (lambda x: isinstance(x, dict), "a scheduler state_dict"),
    "scaler": (lambda x: x is None or isinstance(x, dict), "None or a GradScaler state_dict"),
    "epoch": (lambda x: _is_int(x) and x >= 0, "a non-negative integer"),
    "step": (lambda x: _is_int(x) and x >= 0, "a non-negative integer"),
    "epoch_step": (lambda x: _is_int(x) and x >= 0, "a non-negative integer"),
    "world_size": (lambda x: _is_int(x) and x >= 1, "a positive integer"),
    "best_acc1": (_is_percent, "a percentage"),
    "best_acc5": (_is_percent, "a percentage"),
    "history": (lambda x: isinstance(x, list) and all(isinstance(r, dict) for r in x), "a list of dicts"),
    "config": (lambda x: isinstance(x, dict), "a dict"),
    "samples_in_epoch": (lambda x: _is_int(x) and x >= 0, "a non-negative integer"),
    "batch_size": (lambda x: _is_int(x) and x >= 1, "a positive integer"),
    "elapsed_s": (lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0,
                  "a finite number of seconds >= 0"),
    "bad_images": (lambda x: _is_int(x) and x >= 0, "a non-negative integer"),
    "bad_indices": (lambda x: isinstance(x, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(_is_int(i) for i in v) for k, v in x.items()),
        "a dict of lists of integers"),
}


def _content_problem(state: Any) -> str | None:
    """None when `state` is a usable checkpoint of this format, else the reason (after the path)."""
    if not isinstance(state, dict):
        return f"is not a wvtui checkpoint (it holds a {type(state).__name__}, not a dict)"
    if "format_version" not in state:
        return "is not a wvtui checkpoint (it has no format_version)"
    version = state["format_version"]
    if not _is_int(version) or version < 1:
        return f"is not a wvtui checkpoint (format_version {_short(version)})"
    if version > FORMAT_VERSION:
        return (f"has a newer format_version {version} (this wvtui reads up to {FORMAT_VERSION}): "
                "resume it with the wvtui that wrote it")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        return f"is not a complete wvtui checkpoint (missing {', '.join(missing)})"
    for key, (ok, what) in _FIELDS.items():
        if key in state and not ok(state[key]):
            return f"is not a usable wvtui checkpoint: '{key}' must be {what}, got {_short(state[key])}"
    rng = rng_state_problem(state["rng"])
    if rng:
        return f"is not a usable wvtui checkpoint: 'rng' {rng}"
    return None


def find_resumable(out_dir: str | os.PathLike) -> str | None:
    """The checkpoint `--resume auto` continues from: the newest of OUT/checkpoints/{last,best}.pt.

    None when neither exists (a fresh start loses nothing). When any existing file cannot be
    used, CheckpointError names each one with its reason instead: starting fresh, or resuming
    from the other file, would later overwrite a file that was never loaded.
    """
    ckdir = os.path.join(os.fspath(out_dir), "checkpoints")
    usable: list[tuple[tuple, str]] = []
    problems: list[tuple[str, str]] = []
    for rank, name in enumerate(CHECKPOINT_NAMES):
        path = os.path.join(ckdir, name)
        try:
            os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as e:  # e.g. a directory on the way that this user may not enter
            problems.append((path, f"cannot be read: {_strerror(e)}"))
            continue
        try:
            # Meta tensors: the structure is read and checked, the tensor data is not.
            step = load_checkpoint(path, map_location="meta")["step"]
            usable.append(((step, os.stat(path).st_mtime_ns, -rank), path))
        except CheckpointError as e:
            problems.extend(e.problems)
        except OSError as e:
            problems.append((path, f"cannot be read: {_strerror(e)}"))
    if problems:
        files = "; ".join(f"{p} {r}" for p, r in problems)
        raise CheckpointError(
            f"--resume auto will not start over checkpoints it cannot use: {files}. "
            f"Move {'them' if len(problems) > 1 else 'it'} aside, or pass --resume PATH",
            problems,
        )
    return max(usable)[1] if usable else None
