"""The control endpoint every run serves: its console, over a Unix socket (see core.protocol).

    history = RunHistory(out)                       # a sink, fed before the endpoint
    endpoint = ControlEndpoint(out, history, submit=lambda c, v, token: ...)
    sink = fanout(run_log, history, endpoint, ...)  # the endpoint is a sink too
    endpoint.start()                                # binds OUT/control/wvtui.sock
    ...
    endpoint.close("completed")                     # bye to every client, socket removed

The trainer never waits on a client. The sink only appends the event to a deque and wakes the
endpoint's thread (with nobody connected it does not even do that); that thread serialises each
event once and queues the bytes for every client, sending without blocking. A client whose
queue of unsent messages fills up (it stopped reading) is dropped; training goes on.

A client is this user's only: the socket is 0600 in a 0700 directory, and the peer's uid
(SO_PEERCRED) is checked too. Each request line is at most MAX_REQUEST_BYTES; a malformed or
unknown request gets an error reply and never reaches the trainer. A valid command goes to
`submit(command, value, token)`: an "ack" at once, a "done" when the trainer's CommandApplied
with that token goes through the sink. Once the RunFinished has gone out the endpoint closes
itself (bye to every client, socket and endpoint.json removed): a finished run is not live.
"""

from __future__ import annotations

import collections
import json
import os
import selectors
import socket
import struct
import sys
import threading
import time
import weakref
from typing import Any, Callable

from core.atomic import atomic_write
from core.events import Event, RunFinished
from core.history import RunHistory
from core.telemetry_feed import TelemetryFeed
from core.protocol import (
    MAX_REQUEST_BYTES,
    PROTOCOL,
    ProtocolError,
    control_dir,
    decode,
    default_socket_path,
    encode,
    pointer_path,
    request_id,
    telemetry_to_dict,
    validate_command,
)

__all__ = ["ControlEndpoint", "EndpointError", "check_free"]

_SEND_CHUNK = 256 * 1024
_CLOSE_FLUSH_S = 1.0  # how long close() tries to hand the last messages to slow clients


# DataLoader workers are forked from the training process: a child holding a copy of a client's
# socket would keep that client from seeing EOF when the run drops or closes it, and a listener
# copy would make a dead run look alive. Each child closes its copies at once.
_SERVING: weakref.WeakSet[ControlEndpoint] = weakref.WeakSet()


def _close_copies_in_child() -> None:
    for endpoint in list(_SERVING):
        try:
            endpoint._forget_in_child()
        except Exception:  # noqa: BLE001 - one endpoint's failure must not leave the others' copies open
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_copies_in_child)


class EndpointError(Exception):
    """The endpoint cannot serve this run directory (another live wvtui serves it, ...)."""


def _stderr(message: str) -> None:
    print(f"wvtui: {message}", file=sys.stderr, flush=True)


def _read_pointer(out_dir: str) -> dict[str, Any] | None:
    try:
        with open(pointer_path(out_dir), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _answers(path: str) -> bool:
    """Whether a server accepts connections at `path` (False: absent, or stale)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect(path)
        return True
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        return False
    except socket.timeout:
        return True  # a backlog full of connections: something lives there
    except OSError:
        return False
    finally:
        s.close()


def _busy_error(out_dir: str, pointer: dict[str, Any] | None) -> EndpointError:
    pid = pointer.get("pid") if pointer else None
    who = f"another wvtui (pid {pid})" if isinstance(pid, int) else "another wvtui"
    return EndpointError(f"{who} is serving {out_dir}; attach with `wvtui attach {out_dir}`")


def check_free(out_dir: str | os.PathLike) -> None:
    """EndpointError when a live run already serves `out_dir` (two runs would write one log)."""
    out_dir = os.fspath(out_dir)
    pointer = _read_pointer(out_dir)
    paths = []
    if pointer and isinstance(pointer.get("socket"), str):
        paths.append(pointer["socket"])
    try:
        paths.append(default_socket_path(out_dir))
    except OSError:
        pass
    for path in dict.fromkeys(paths):
        if os.path.exists(path) and _answers(path):
            raise _busy_error(out_dir, pointer)


class _Client:
    __slots__ = ("id", "sock", "inbuf", "out", "offset", "skip_until", "closing", "hello_queued")

    def __init__(self, cid: int, sock: socket.socket, skip_until: int) -> None:
        self.id = cid
        self.sock = sock
        self.inbuf = bytearray()
        self.out: collections.deque[bytes] = collections.deque()
        self.offset = 0  # bytes of out[0] already sent
        self.skip_until = skip_until  # events numbered up to this are in its hello already
        self.closing = False  # send what is queued, then close (an error that ends the connection)
        self.hello_queued = True  # the hello is not counted against the queue limit


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlEndpoint:
    """See the module docstring.

    submit(command, value, token): hands a validated command to the trainer (the session passes
    `trainer.submit`); token is what the trainer's CommandApplied carries back.
    sampler: an object with .sample() -> core.telemetry.Telemetry (None: a TelemetrySampler,
    made when the first client connects; or the process's `feed`, a core.telemetry_feed.TelemetryFeed
    shared with an in-process console); sampled every `telemetry_interval` seconds while a
    client is connected. queue_limit: messages a client may have unsent before it is dropped.
    allowed_uid: the only uid served (default: this process's). dataset: makes the hello's
    "dataset" ({"summary", "classes", "queries"}: what the dataset pane shows), once, when the
    first client connects.
    """

    def __init__(self, out_dir: str | os.PathLike, history: RunHistory,
                 submit: Callable[[str, float | None, str], None], *, sampler: Any = None,
                 telemetry_interval: float = 1.0, max_clients: int = 8, queue_limit: int = 10000,
                 allowed_uid: int | None = None, warn: Callable[[str], None] = _stderr,
                 dataset: Callable[[], dict[str, Any]] | None = None, feed: TelemetryFeed | None = None) -> None:
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.history = history
        self.submit = submit
        # One sampling loop per process (a sample is a window: see core.telemetry_feed).
        self._own_feed = feed is None
        self.feed = feed if feed is not None else TelemetryFeed(sampler, telemetry_interval)
        self._unsubscribe: Callable[[], None] | None = None
        self.max_clients = max_clients
        self.queue_limit = queue_limit
        self.allowed_uid = os.getuid() if allowed_uid is None else allowed_uid
        self.warn = warn
        self._dataset_source = dataset
        self._dataset: dict[str, Any] | None = None
        self.path: str = ""
        self.dropped = 0  # clients dropped for not reading
        self.last_telemetry: dict[str, Any] | None = None
        # Shared with the sink (trainer thread): held only for a few appends.
        self._lock = threading.Lock()
        self._inbox: collections.deque[tuple[int, float, Event]] = collections.deque()
        self._telemetry_inbox: collections.deque[dict[str, Any]] = collections.deque()
        self._seq = 0
        # The history's count when we started counting: its snapshot's "seen" minus this is ours.
        self._seq_offset = history.seen
        self._nclients = 0
        self._woken = False
        self._ended: str | None = None
        self._closing: str | None = None
        # The server thread's own.
        self._clients: dict[int, _Client] = {}
        self._tokens: dict[str, tuple[int, Any, str]] = {}
        self._next_id = 0
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the sink (trainer thread) -------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        try:
            with self._lock:
                self._seq += 1
                if isinstance(event, RunFinished):
                    self._ended = event.reason  # the thread says bye once it has sent this event
                elif not self._nclients:
                    return
                self._inbox.append((self._seq, time.time(), event))
                wake = not self._woken
                self._woken = True
            if wake:
                self._wake()
        except Exception:  # noqa: BLE001 - a broken endpoint must never stop training
            pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:  # pipe full (the thread is awake anyway) or closed
            pass

    @property
    def clients(self) -> int:
        with self._lock:
            return self._nclients

    # -- start and close -----------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket and start serving; EndpointError when that cannot be done."""
        if self._thread is not None:
            return
        try:
            path = default_socket_path(self.out_dir, create=True)
            os.makedirs(control_dir(self.out_dir), mode=0o700, exist_ok=True)
            os.chmod(control_dir(self.out_dir), 0o700)
        except OSError as e:
            raise EndpointError(f"cannot make the control directory for {self.out_dir}: {e}") from None
        if os.path.lexists(path):
            if _answers(path):
                raise _busy_error(self.out_dir, _read_pointer(self.out_dir))
            try:
                os.unlink(path)  # stale: its run died without cleaning up
            except FileNotFoundError:
                pass
            except OSError as e:
                raise EndpointError(f"cannot remove the stale control socket {path}: {e}") from None
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            os.chmod(path, 0o600)  # the 0700 directory keeps others out until then
            listener.listen(16)
            listener.setblocking(False)
        except OSError as e:
            listener.close()
            raise EndpointError(f"cannot serve the control socket {path}: {e}") from None
        self.path = path
        self._listener = listener
        try:
            with atomic_write(pointer_path(self.out_dir), "w", encoding="utf-8") as f:
                json.dump({"protocol": PROTOCOL, "pid": os.getpid(), "socket": path,
                           "host": socket.gethostname(), "started": time.time()}, f)
                f.write("\n")
        except OSError as e:
            listener.close()
            _unlink(path)
            raise EndpointError(f"cannot write {pointer_path(self.out_dir)}: {e}") from None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        # Daemons: a console that never reads must not keep a finished run's process alive.
        self._thread = threading.Thread(target=self._serve, name="wvtui-endpoint", daemon=True)
        _SERVING.add(self)
        self._thread.start()

    def _forget_in_child(self) -> None:
        """In a forked child: close this process's copies of the endpoint's descriptors (no
        shutdown: that would cut the parent's connections too)."""
        socks = [c.sock for c in list(self._clients.values())]
        if self._listener is not None:
            socks.append(self._listener)
        fds = [self._wake_r, self._wake_w]
        for sock in socks:
            try:
                fds.append(sock.detach())
            except OSError:
                pass
        if self._selector is not None:
            try:
                fds.append(self._selector.fileno())
            except (AttributeError, OSError, ValueError):
                pass
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._clients = {}
        self._listener = self._selector = None
        self._wake_r = self._wake_w = -1
        self._closed = True

    def close(self, reason: str = "run ended") -> None:
        """Say bye to every client, close them, remove the socket and endpoint.json. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop_sampling()
        if self._own_feed:
            self.feed.close()
        if self._thread is None:
            return
        with self._lock:
            self._closing = reason
        self._wake()  # unless it closed itself after the RunFinished: then nobody listens
        self._thread.join(_CLOSE_FLUSH_S + 5.0)
        if not self._thread.is_alive():
            _SERVING.discard(self)
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._wake_r = self._wake_w = -1

    # -- the server thread ---------------------------------------------------------------------

    def _serve(self) -> None:
        sel = self._selector
        assert sel is not None
        try:
            while True:
                for key, mask in sel.select(timeout=None):
                    what = key.data
                    if what == "accept":
                        self._accept()
                    elif what == "wake":
                        _drain(self._wake_r)
                    else:
                        client = what
                        if client.id not in self._clients:
                            continue
                        if mask & selectors.EVENT_READ:
                            self._read(client)
                        if mask & selectors.EVENT_WRITE and client.id in self._clients:
                            self._flush(client)
                with self._lock:
                    self._woken = False
                    events = list(self._inbox)
                    self._inbox.clear()
                    telemetry = list(self._telemetry_inbox)
                    self._telemetry_inbox.clear()
                    closing = self._closing
                for seq, when, event in events:
                    self._broadcast_event(seq, when, event)
                    if isinstance(event, RunFinished):
                        # A finished run is not live: nothing more will happen here to watch or control.
                        closing = event.reason
                for t in telemetry:
                    self._broadcast(encode({"type": "telemetry", "telemetry": t}))
                if closing is not None:
                    self._shutdown(closing)
                    return
        except Exception as e:  # noqa: BLE001 - the run goes on without its endpoint
            self.warn(f"the control endpoint failed ({type(e).__name__}: {e}); the run goes on without it")
            self._shutdown("the endpoint failed")

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            uid = _peer_uid(sock)
            if uid != self.allowed_uid:
                _refuse(sock, f"refused: this run serves uid {self.allowed_uid} only (you are uid {uid})")
                continue
            if len(self._clients) >= self.max_clients:
                _refuse(sock, f"refused: too many clients ({self.max_clients} are attached)")
                continue
            sock.setblocking(False)
            self._next_id += 1
            with self._lock:
                snap = self.history.snapshot()
                self._nclients += 1
                # Events the history had when the snapshot was taken are in the hello: not again.
                skip_until = snap.get("seen", 0) - self._seq_offset
                nclients = self._nclients
            client = _Client(self._next_id, sock, skip_until)
            self._clients[client.id] = client
            hello = {"type": "hello", "protocol": PROTOCOL, "pid": os.getpid(), "out_dir": self.out_dir,
                     "state": snap["state"], "config": snap["config"], "history": snap["records"],
                     "noise_details": snap["noise_details"], "telemetry": self.last_telemetry,
                     "clients": nclients, "dataset": self._dataset_tables()}
            client.out.append(encode(hello))
            self._selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
            if self._unsubscribe is None and not self._closed:
                self._unsubscribe = self.feed.subscribe(self._on_telemetry)

    def _dataset_tables(self) -> dict[str, Any] | None:
        if self._dataset is None and self._dataset_source is not None:
            try:
                self._dataset = self._dataset_source()
            except Exception:  # noqa: BLE001 - a console without its dataset tables still works
                pass
            self._dataset_source = None  # made once, failed or not
        return self._dataset

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        if client.closing:
            return
        client.inbuf += data
        while True:
            nl = client.inbuf.find(b"\n")
            if nl < 0:
                if len(client.inbuf) > MAX_REQUEST_BYTES:
                    self._fatal(client, f"request longer than {MAX_REQUEST_BYTES} bytes; closing")
                return
            line = bytes(client.inbuf[:nl])
            del client.inbuf[:nl + 1]
            if len(line) > MAX_REQUEST_BYTES:
                self._fatal(client, f"request longer than {MAX_REQUEST_BYTES} bytes; closing")
                return
            if line.strip():
                self._request(client, line)
            if client.closing or client.id not in self._clients:
                return

    def _request(self, client: _Client, line: bytes) -> None:
        rid = None
        try:
            msg = decode(line)
            rid = request_id(msg)
            command, value = validate_command(msg)
        except ProtocolError as e:
            self._send(client, {"type": "error", "id": rid, "error": str(e)})
            return
        with self._lock:
            ended = self._ended
        if ended is not None:
            self._send(client, {"type": "error", "id": rid, "error": f"the run has ended ({ended})"})
            return
        token = f"{client.id}:{rid}"
        if token in self._tokens:  # the client reused an id: each command still gets its own done
            token = f"{token}#{self._seq}-{len(self._tokens)}"
        self._tokens[token] = (client.id, rid, command)
        try:
            self.submit(command, value, token)
        except Exception as e:  # noqa: BLE001 - refused by the trainer: the client hears why
            self._tokens.pop(token, None)
            self._send(client, {"type": "error", "id": rid, "error": f"{command}: {e}".splitlines()[0]})
            return
        self._send(client, {"type": "ack", "id": rid, "command": command})

    def _broadcast_event(self, seq: int, when: float, event: Event) -> None:
        record = event.to_record()
        data = encode({"type": "event", "time": when, "record": record})
        for client in list(self._clients.values()):
            if seq > client.skip_until:
                self._queue(client, data)
        token = record.get("token") if record.get("event") == "command" else None
        if isinstance(token, str) and token in self._tokens:
            cid, rid, command = self._tokens.pop(token)
            client = self._clients.get(cid)
            if client is not None:
                self._send(client, {"type": "done", "id": rid, "command": record.get("command", command),
                                    "epoch": record.get("epoch"), "step": record.get("step"),
                                    "detail": record.get("detail", "")})

    def _broadcast(self, data: bytes) -> None:
        for client in list(self._clients.values()):
            self._queue(client, data)

    def _send(self, client: _Client, msg: dict[str, Any]) -> None:
        self._queue(client, encode(msg))

    def _queue(self, client: _Client, data: bytes) -> None:
        if client.id not in self._clients or client.closing:
            return
        if len(client.out) - client.hello_queued >= self.queue_limit:
            self.dropped += 1
            try:
                self.warn("dropped a console client that stopped reading")
            except Exception:  # noqa: BLE001 - news, not a reason to stop serving
                pass
            self._drop(client)
            return
        was_empty = not client.out
        client.out.append(data)
        if was_empty:
            self._flush(client)

    def _flush(self, client: _Client) -> None:
        while client.out:
            head = client.out[0]
            try:
                n = client.sock.send(memoryview(head)[client.offset:client.offset + _SEND_CHUNK])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(client)
                return
            client.offset += n
            if client.offset >= len(head):
                client.out.popleft()
                client.offset = 0
                client.hello_queued = False
        if not client.out and client.closing:
            self._drop(client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
        try:
            self._selector.modify(client.sock, events, client)
        except (KeyError, ValueError, OSError):
            pass

    def _fatal(self, client: _Client, error: str) -> None:
        self._send(client, {"type": "error", "id": None, "error": error})
        client.closing = True
        client.inbuf.clear()
        self._flush(client)

    def _drop(self, client: _Client) -> None:
        if self._clients.pop(client.id, None) is None:
            return
        with self._lock:
            self._nclients -= 1
        if not self._clients:
            self._stop_sampling()
        for token in [t for t, (cid, _, _) in self._tokens.items() if cid == client.id]:
            del self._tokens[token]
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError, OSError):
            pass
        client.sock.close()

    def _shutdown(self, reason: str) -> None:
        # Not live any more before anyone hears bye: a client that then looks (ls, status) agrees.
        if self._listener is not None:
            try:
                self._selector.unregister(self._listener)
            except (KeyError, ValueError, OSError):
                pass
            self._listener.close()
            self._listener = None
        _unlink(self.path)
        pointer = _read_pointer(self.out_dir)
        if pointer is None or pointer.get("pid") == os.getpid():
            _unlink(pointer_path(self.out_dir))
        bye = encode({"type": "bye", "reason": reason})
        for client in list(self._clients.values()):
            client.closing = False
            client.out.append(bye)
            self._flush(client)
        deadline = time.monotonic() + _CLOSE_FLUSH_S
        while any(c.out for c in self._clients.values()) and time.monotonic() < deadline:
            for key, _mask in self._selector.select(timeout=max(0.0, deadline - time.monotonic())):
                if isinstance(key.data, _Client) and key.data.id in self._clients:
                    self._flush(key.data)
        for client in list(self._clients.values()):
            self._drop(client)
        try:
            self._selector.close()
        except OSError:
            pass
        self._selector = None
        self._stop_sampling()

    # -- telemetry (its own thread: NVML calls may take milliseconds) ------------------------

    @property
    def telemetry_errors(self) -> int:
        return self.feed.errors

    def _stop_sampling(self) -> None:
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def _on_telemetry(self, telemetry: Any) -> None:
        """A sample from the feed's thread (NVML calls may take milliseconds: never this one's)."""
        t = telemetry_to_dict(telemetry)
        self.last_telemetry = t
        with self._lock:
            self._telemetry_inbox.append(t)
            wake = not self._woken
            self._woken = True
        if wake:
            self._wake()


def _refuse(sock: socket.socket, error: str) -> None:
    try:
        sock.settimeout(0.5)
        sock.sendall(encode({"type": "error", "id": None, "error": error}))
    except OSError:
        pass
    finally:
        sock.close()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, OSError):
        pass


def _unlink(path: str) -> None:
    if not path:
        return
    try:
        os.unlink(path)
    except OSError:
        pass
