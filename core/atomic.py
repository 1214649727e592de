"""Files a run writes whole or not at all: checkpoints, config.json, summary.csv, the
per-evaluation and per-epoch records. A reader (a resumed run, `tail`, TensorBoard, a user's
script) sees either the previous file or the complete new one, never a torn one."""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import IO, Iterator

__all__ = ["atomic_write", "fsync_dir"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO]:
    """A file to write `path`'s new content into; on a normal exit it replaces `path`.

    The temp file lives in the same directory (os.replace is only atomic within a filesystem),
    is created with mode 0o666 less the umask (not mkstemp's 0600: these files are no more
    private than any other the run writes), and is flushed and fsynced before the rename; the
    directory is fsynced after it, so the new name survives a power cut. On any exception the
    temp file is removed, `path` is untouched, and the exception propagates.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = _create_temp(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def _create_temp(directory: str, name: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def fsync_dir(directory: str) -> None:
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
