"""A client of a run's control endpoint (core.endpoint): what `wvtui attach` and `wvtui ctl` use.

    client = ControlClient("runs/2026-11-30_0347")   # connects, reads the hello
    client.hello["history"]                          # the run so far
    client.command("pause")                          # waits until the trainer applied it
    client.command("lr", 0.01)
    while (msg := client.recv()) is not None: ...    # events, telemetry, bye; None at EOF
    client.close()
"""

from __future__ import annotations

import collections
import json
import os
import select
import socket
import time
from typing import Any

from core.protocol import PROTOCOL, ProtocolError, decode, encode, pointer_path

__all__ = ["ControlClient", "NotLive", "Refused", "CommandRefused", "socket_path", "live_pid"]

_RECV = 1 << 20  # a hello can be megabytes of history


class NotLive(Exception):
    """No live run to talk to at that directory (never served, finished, or its process died)."""


class Refused(NotLive):
    """The run is live but would not take this client (other uid, too many clients, protocol)."""


class CommandRefused(Exception):
    """The run answered a command with an error; str() is its one line."""


def socket_path(out_dir: str | os.PathLike) -> str:
    """The socket of the run at `out_dir`, from OUT/control/endpoint.json; NotLive without one."""
    out_dir = os.fspath(out_dir)
    try:
        with open(pointer_path(out_dir), encoding="utf-8") as f:
            pointer = json.load(f)
    except FileNotFoundError:
        raise NotLive(f"no live run at {out_dir} (it has finished, or was started by a wvtui "
                      "without an endpoint)") from None
    except (OSError, ValueError) as e:
        raise NotLive(f"cannot read {pointer_path(out_dir)}: {e}") from None
    path = pointer.get("socket") if isinstance(pointer, dict) else None
    if not isinstance(path, str) or not path:
        raise NotLive(f"{pointer_path(out_dir)} names no socket")
    return path


def live_pid(out_dir: str | os.PathLike) -> int | None:
    """The pid serving the run at `out_dir`, or None when no live run serves it (cheap: a
    connect, no hello read; for `wvtui ls`). A pointer left by a killed run is not live."""
    try:
        path = socket_path(out_dir)
        with open(pointer_path(os.fspath(out_dir)), encoding="utf-8") as f:
            pid = json.load(f).get("pid")
    except (NotLive, OSError, ValueError, AttributeError):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2.0)
    try:
        sock.connect(path)
    except OSError:
        return None
    finally:
        sock.close()
    return pid if isinstance(pid, int) else None


class ControlClient:
    """One connection to a live run. `timeout` bounds the connect and the hello."""

    def __init__(self, out_dir: str | os.PathLike, *, timeout: float = 10.0) -> None:
        self.out_dir = os.fspath(out_dir)
        self.timeout = timeout
        self.path = socket_path(self.out_dir)
        self._buf = bytearray()
        self._start = 0  # where the next message begins in _buf
        self._scanned = 0  # _buf holds no newline between _start and this
        self._backlog: collections.deque[dict[str, Any]] = collections.deque()
        self._eof = False
        self._next_id = 0
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            raise NotLive(f"no live run at {self.out_dir} (its socket {self.path} is gone or refuses "
                          f"connections: {e.strerror}); the run has ended") from None
        except OSError as e:
            sock.close()
            raise NotLive(f"cannot connect to {self.path}: {e.strerror or e}") from None
        self._sock = sock
        try:
            hello = self._next(timeout)
        except TimeoutError:
            self.close()
            raise NotLive(f"the run at {self.out_dir} did not say hello within {timeout:g}s") from None
        if hello is None:
            self.close()
            raise NotLive(f"the run at {self.out_dir} closed the connection at once (it is ending)")
        if hello.get("type") == "error":
            self.close()
            raise Refused(f"the run at {self.out_dir} refused: {hello.get('error')}")
        if hello.get("type") != "hello" or hello.get("protocol") != PROTOCOL:
            self.close()
            raise Refused(f"the run at {self.out_dir} speaks protocol {hello.get('protocol')!r}, this wvtui "
                          f"speaks {PROTOCOL}: attach with the wvtui that started it")
        self.hello: dict[str, Any] = hello

    # -- reading -------------------------------------------------------------------------------

    def pending(self) -> bool:
        """Whether a message is already buffered (a select() on fileno() would not say so)."""
        return bool(self._backlog) or self._buf.find(b"\n", self._scanned) >= 0 or (self._eof and bool(self._buf))

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message; None at EOF. timeout None waits as long as it takes; TimeoutError."""
        if self._backlog:
            return self._backlog.popleft()
        return self._next(timeout)

    def _next(self, timeout: float | None) -> dict[str, Any] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            nl = self._buf.find(b"\n", self._scanned)
            if nl >= 0:
                line = bytes(self._buf[self._start:nl])
                self._start = self._scanned = nl + 1
                if self._start == len(self._buf):
                    self._buf.clear()
                    self._start = self._scanned = 0
                try:
                    return decode(line)
                except ProtocolError as e:
                    raise NotLive(f"the run at {self.out_dir} sent garbage ({e})") from None
            if self._start:  # cut what was read once per recv, not once per message
                del self._buf[:self._start]
                self._start = 0
            self._scanned = len(self._buf)
            if self._eof:
                return None
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left is not None and left <= 0 and not select.select([self._sock], [], [], 0)[0]:
                raise TimeoutError("no message from the run in time")
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(_RECV)
            except socket.timeout:
                raise TimeoutError("no message from the run in time") from None
            except OSError:
                data = b""
            if not data:
                self._eof = True
            self._buf += data

    # -- commands ------------------------------------------------------------------------------

    def send(self, command: str, value: float | None = None) -> int:
        """Send a command; its request id. NotLive when the run is gone."""
        self._next_id += 1
        msg: dict[str, Any] = {"type": "command", "id": self._next_id, "command": command}
        if value is not None:
            msg["value"] = value
        try:
            self._sock.settimeout(self.timeout)
            self._sock.sendall(encode(msg))
        except OSError as e:
            reason = self._bye_reason()
            if reason is not None:
                raise NotLive(f"the run at {self.out_dir} has ended ({reason})") from None
            raise NotLive(f"the run at {self.out_dir} is gone ({e.strerror or e})") from None
        return self._next_id

    def _bye_reason(self) -> str | None:
        """Why the server closed, from what it sent before (kept for recv()); None if unknown."""
        try:
            while (msg := self._next(1.0)) is not None:
                self._backlog.append(msg)
                if msg.get("type") == "bye":
                    return str(msg.get("reason"))
        except (TimeoutError, NotLive):
            pass
        return None

    def command(self, command: str, value: float | None = None, *,
                timeout: float | None = None) -> dict[str, Any]:
        """Send a command and wait until it is applied: the "done" message.

        CommandRefused on an error reply, NotLive when the run ends first, TimeoutError after
        `timeout` seconds (None: as long as it takes; a stop waits for the final checkpoint).
        Other messages that come meanwhile stay queued for recv().
        """
        rid = self.send(command, value)
        deadline = None if timeout is None else time.monotonic() + timeout
        held: list[dict[str, Any]] = []
        try:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                msg = self._next(left)
                if msg is None:
                    raise NotLive(f"the run at {self.out_dir} ended before {command!r} was applied")
                kind = msg.get("type")
                if kind == "done" and msg.get("id") == rid:
                    return msg
                if kind == "error" and msg.get("id") in (rid, None):
                    raise CommandRefused(str(msg.get("error")))
                held.append(msg)
                if kind == "bye":
                    raise NotLive(f"the run at {self.out_dir} ended ({msg.get('reason')}) before "
                                  f"{command!r} was applied")
        finally:
            self._backlog.extend(held)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """Disconnect (the run goes on). A recv() blocked in another thread returns None."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv(); close() alone does not
        except OSError:
            pass
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
