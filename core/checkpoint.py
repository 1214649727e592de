"""Checkpoint files: atomic writes, safe loads, and finding the newest usable one.

A checkpoint is a plain dict saved with `torch.save` and read back with
`torch.load(weights_only=True)`, so loading never runs code from the file. Everything in it is
a tensor, a number, a string, or a list/dict/tuple of those (RNG states included).
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT_VERSION",
    "REQUIRED_KEYS",
    "CheckpointError",
    "capture_rng_state",
    "find_latest_checkpoint",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

FORMAT_VERSION = 1

REQUIRED_KEYS = (
    "format_version",
    "model",
    "model_name",
    "num_classes",
    "optimizer",
    "scheduler",
    "scaler",
    "epoch",
    "step",
    "epoch_step",
    "rng",
    "best_acc1",
    "best_acc5",
    "history",
    "config",
    "world_size",
)

# Files under OUT/checkpoints/ that find_latest_checkpoint considers, most preferred first on ties.
_KNOWN_NAMES = ("last.pt", "best.pt")


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line meant for the user."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `state` to `path` so that `path` is always either the old file or the complete new one.

    The temp file lives in the same directory (os.replace is only atomic within a filesystem);
    the directory is fsynced after the rename so the new name survives a power cut. On failure
    the temp file is removed, the previous file is untouched, and the exception propagates.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                torch.save(state, f)
            except RuntimeError as e:
                # torch's archive writer reports a failed write (disk full, quota, file size
                # limit) as RuntimeError("unexpected pos ..."); the OSError behind it says why.
                cause = _os_error_in(e)
                if cause is None:
                    raise
                raise cause from e
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _os_error_in(e: BaseException) -> OSError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _fsync_dir(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory fds (Windows)
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *, mmap: bool = False) -> dict:
    """Load and validate a checkpoint written by `save_checkpoint`; CheckpointError otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global outside the tensor/container allowlist: that is how
        # a crafted pickle (or an arbitrary Python object) shows up. Never retry unsafely.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data ({first})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a checkpoint): {msg}") from None
    except Exception as e:  # torch raises assorted types for damaged archives
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    return _validate(state, path)


def _validate(state: Any, path: str) -> dict:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a wvtui checkpoint (it holds a {type(state).__name__}, not a dict)")
    version = state.get("format_version")
    if version is None:
        raise CheckpointError(f"{path} is not a wvtui checkpoint (no format_version)")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this wvtui reads version {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a complete wvtui checkpoint (missing: {', '.join(missing)})")
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise CheckpointError(f"{path}: 'model' is not a state_dict of tensors")
    for key in ("epoch", "step", "epoch_step", "num_classes", "world_size"):
        if not isinstance(state[key], int) or state[key] < 0:
            raise CheckpointError(f"{path}: '{key}' must be a non-negative integer, got {state[key]!r}")
    return state


def find_latest_checkpoint(out_dir: str | os.PathLike) -> str | None:
    """The newest loadable checkpoint under OUT/checkpoints/ (by training step, then file time).

    Damaged or foreign files are skipped, so a crash during a write falls back to the last good
    file. Temp files from an interrupted save are never candidates.
    """
    ckdir = os.path.join(os.fspath(out_dir), "checkpoints")
    if not os.path.isdir(ckdir):
        return None
    names = [n for n in os.listdir(ckdir) if n.endswith(".pt") and not n.startswith(".")]
    best: tuple | None = None
    for name in names:
        path = os.path.join(ckdir, name)
        try:
            # mmap: tensors are not read, only the archive index and the small pickled parts.
            state = load_checkpoint(path, mmap=True)
            mtime = os.stat(path).st_mtime_ns
        except (CheckpointError, OSError):
            continue
        pref = -_KNOWN_NAMES.index(name) if name in _KNOWN_NAMES else -len(_KNOWN_NAMES)
        key = (state["step"], mtime, pref)
        del state
        if best is None or key > best[0]:
            best = (key, path)
    return None if best is None else best[1]


def capture_rng_state(cuda: bool = False) -> dict[str, Any]:
    """Every RNG the run may draw from, as tensors and plain ints (loadable with weights_only)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_state[0]), "state": list(py_state[1]), "gauss_next": py_state[2]},
        "cuda": None,
    }
    if cuda and torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"].cpu())
    n = rng["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = rng["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if rng.get("cuda") is not None and torch.cuda.is_available():
        states = [s.cpu() for s in rng["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
