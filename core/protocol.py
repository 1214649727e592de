"""The control endpoint's wire format and where its socket lives.

Newline-delimited JSON objects in UTF-8, each with a "type" (PROTOCOL 1). The server (a run,
`core.endpoint`) sends "hello", "event", "telemetry", "ack", "done", "error" and "bye"; a client
(`core.client`) sends `{"type": "command", "id": N, "command": "pause", "value": 0.01?}`.
Records travel as `Event.to_record()` gives them, so the socket needs no field tables of its own.

Files: OUT/control/ (mode 0700) holds wvtui.sock (0600) and endpoint.json, which says where the
socket is and who serves it. A Unix socket's path is limited to about 108 bytes: when
OUT/control/wvtui.sock is longer than 100, the socket lives in $XDG_RUNTIME_DIR/wvtui/ (else
/tmp/wvtui-<uid>/, 0700, as tmux keeps its sockets) under a hash of OUT, and endpoint.json still
lives in OUT/control/ and points at it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import stat
import types
import typing
from typing import Any

from core.telemetry import GpuSnapshot, HostSnapshot, Telemetry

__all__ = [
    "PROTOCOL", "MAX_REQUEST_BYTES", "CLIENT_COMMANDS", "ProtocolError", "encode", "decode",
    "validate_command", "request_id", "telemetry_to_dict", "telemetry_from_dict",
    "control_dir", "pointer_path", "default_socket_path", "MAX_SOCKET_PATH",
]

PROTOCOL = 1
MAX_REQUEST_BYTES = 64 * 1024  # a client's line; a command is a few dozen bytes
MAX_SOCKET_PATH = 100  # bytes; sun_path holds 108 on Linux, 104 on macOS, with its NUL
CLIENT_COMMANDS = ("pause", "resume", "checkpoint", "evaluate", "stop", "stop_no_save", "lr")


class ProtocolError(ValueError):
    """A message that cannot be served; str() is the one line the peer gets back."""


# -- messages ------------------------------------------------------------------------------------

def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: they travel as null, as the run log writes them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def encode(obj: dict[str, Any]) -> bytes:
    """One message as one line of UTF-8 JSON, newline included."""
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a non-finite float somewhere: rare, so only then walk the object
        text = json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8") + b"\n"


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"not JSON: {name} is not a JSON value")


def decode(line: bytes | str) -> dict[str, Any]:
    """The message of one line (newline optional); ProtocolError with a one-line reason."""
    if isinstance(line, (bytes, bytearray)):
        try:
            line = bytes(line).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"not UTF-8 text (byte {e.start})") from None
    try:
        msg = json.loads(line, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"not JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise ProtocolError("not JSON: nested too deeply") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"a message is a JSON object, not {type(msg).__name__}")
    if not isinstance(msg.get("type"), str):
        raise ProtocolError('a message needs a "type" string')
    return msg


def request_id(msg: dict[str, Any]) -> int | str | None:
    """The client's id for a request, echoed in the reply (None when absent or not a scalar)."""
    rid = msg.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (int, str)):
        return None
    return rid


def validate_command(msg: dict[str, Any]) -> tuple[str, float | None]:
    """(command, value) of a client's request, or ProtocolError saying what is wrong."""
    if msg.get("type") != "command":
        raise ProtocolError(f"unknown message type {msg.get('type')!r:.40} (known: command)")
    command = msg.get("command")
    if not isinstance(command, str) or command not in CLIENT_COMMANDS:
        shown = repr(command)[:40] if command is not None else "(none)"
        raise ProtocolError(f"unknown command {shown} (known: {', '.join(CLIENT_COMMANDS)})")
    if command != "lr":
        return command, None
    value = msg.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ProtocolError(f"lr takes a finite value > 0 (got {value!r:.40})")
    return command, float(value)


# -- telemetry -----------------------------------------------------------------------------------

def telemetry_to_dict(t: Telemetry) -> dict[str, Any]:
    return _finite(dataclasses.asdict(t))


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation we cannot resolve: values are taken as they are
        return {}


def _rebuild(tp: Any, value: Any) -> Any:
    """`value` (from JSON) as type `tp`: dataclasses rebuilt, lists as tuples where declared."""
    if value is None:
        return None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass_from(tp, value) if isinstance(value, dict) else None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None):
                continue
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return _dataclass_from(arg, value)
            if typing.get_origin(arg) is tuple and isinstance(value, list):
                return _rebuild(arg, value)
        return value
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_rebuild(args[0], v) for v in value)
        if args and len(args) == len(value):
            return tuple(_rebuild(a, v) for a, v in zip(args, value))
        return tuple(value)
    return value


def _dataclass_from(cls: type, data: dict[str, Any]) -> Any:
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _rebuild(hints.get(f.name), data[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            values[f.name] = None  # a sender without this field: the metric is unknown (N/A)
    return cls(**values)  # keys this build does not know (a newer sender's) are left out


def telemetry_from_dict(data: dict[str, Any]) -> Telemetry:
    """The Telemetry a `telemetry_to_dict` made, from this or another wvtui version."""
    if not isinstance(data, dict):
        raise ProtocolError(f"telemetry is a JSON object, not {type(data).__name__}")
    try:
        t = _dataclass_from(Telemetry, data)
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"malformed telemetry: {e}") from None
    # The nested snapshots whatever the annotations resolved to.
    gpus = tuple(g if isinstance(g, GpuSnapshot) else _dataclass_from(GpuSnapshot, g)
                 for g in (t.gpus or ()) if isinstance(g, (GpuSnapshot, dict)))
    host = t.host if isinstance(t.host, HostSnapshot) else (
        _dataclass_from(HostSnapshot, t.host) if isinstance(t.host, dict) else _dataclass_from(HostSnapshot, {}))
    return dataclasses.replace(t, gpus=gpus, host=host)


# -- where the socket lives ----------------------------------------------------------------------

def control_dir(out_dir: str | os.PathLike) -> str:
    return os.path.join(os.path.abspath(os.fspath(out_dir)), "control")


def pointer_path(out_dir: str | os.PathLike) -> str:
    """OUT/control/endpoint.json: {"protocol", "pid", "socket", "host", "started"}."""
    return os.path.join(control_dir(out_dir), "endpoint.json")


def _private_dir(path: str) -> str:
    """`path` as a directory of this user's only (0700); OSError if someone else owns it."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise OSError(f"{path} belongs to uid {st.st_uid}, not to this user")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def _fits(path: str) -> bool:
    return len(os.fsencode(path)) <= MAX_SOCKET_PATH


def default_socket_path(out_dir: str | os.PathLike, *, create: bool = False) -> str:
    """Where the run at `out_dir` binds its socket; `create` makes the 0700 directory for it."""
    own = os.path.join(control_dir(out_dir), "wvtui.sock")
    if _fits(own):
        if create:
            _private_dir(control_dir(out_dir))
        return own
    digest = hashlib.sha256(os.fsencode(os.path.realpath(os.fspath(out_dir)))).hexdigest()[:20]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    candidates = []
    if runtime and os.path.isabs(runtime):
        candidates.append(os.path.join(runtime, "wvtui"))
    candidates.append(os.path.join("/tmp", f"wvtui-{os.getuid()}"))
    for base in candidates:
        path = os.path.join(base, f"{digest}.sock")
        if not _fits(path):
            continue
        if not create:
            return path
        try:
            _private_dir(base)
        except OSError:
            if base == candidates[-1]:
                raise
            continue
        return path
    raise OSError("no directory short enough for the control socket (set XDG_RUNTIME_DIR to a short path)")
