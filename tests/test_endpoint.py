"""The control endpoint every run serves, over real Unix sockets with its real threads.

A fake trainer stands in (it applies a submitted command from its own thread, as the real one
does at a step boundary); everything between it and the client is the real thing: the sink,
the server thread, the history, the socket files, SO_PEERCRED, the client.
"""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from core.client import CommandRefused, ControlClient, NotLive, Refused, live_pid, socket_path
from core.endpoint import ControlEndpoint, EndpointError, check_free
from core.events import CommandApplied, RunFinished, RunWarning, fanout
from core.history import RunHistory
from core.protocol import (MAX_REQUEST_BYTES, ProtocolError, decode, default_socket_path, encode, pointer_path,
                           telemetry_from_dict, telemetry_to_dict, validate_command)
from core.runlog import RunLog
from core.telemetry import GpuSnapshot, HostSnapshot, Telemetry
from test_history import first_segment, started, step



def wait_until(predicate, timeout=5.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)
    return value


class FakeTrainer:
    """Applies each submitted command from its own thread, as the trainer does at a step boundary."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, float | None, str]] = []
        self.sink = None

    def submit(self, command: str, value: float | None, token: str) -> None:
        self.submitted.append((command, value, token))
        detail = f"lr {value}" if value is not None else "applied"
        threading.Thread(target=self.sink, args=(CommandApplied(command, 1, 7, token=token, detail=detail),)).start()


class Served:
    """history + endpoint as the session wires them: one sink, the history first."""

    def __init__(self, out: str, **kw) -> None:
        self.out = out
        self.trainer = FakeTrainer()
        self.history = RunHistory(out)
        self.warnings: list[str] = []
        self.endpoint = ControlEndpoint(out, self.history, self.trainer.submit, warn=self.warnings.append, **kw)
        self.sink = fanout(self.history, self.endpoint)
        self.trainer.sink = self.sink
        self.endpoint.start()


@pytest.fixture
def served(tmp_path):
    made: list[Served] = []

    def make(out: str | None = None, **kw) -> Served:
        s = Served(out or str(tmp_path / f"run{len(made)}"), **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.endpoint.close("test over")


def receive(client: ControlClient, timeout: float = 5.0) -> dict | None:
    """The next message that is not a telemetry sample (those come whenever the sampler ticks)."""
    while (msg := client.recv(timeout)) is not None and msg["type"] == "telemetry":
        pass
    return msg


def raw(path: str) -> socket.socket:
    """A client that speaks bytes: junk is what it is for."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    sock.connect(path)
    return sock


def lines(sock: socket.socket):
    buf = b""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            msg = json.loads(line)
            if msg["type"] != "telemetry":
                yield msg
        data = sock.recv(1 << 20)
        if not data:
            return
        buf += data


# -- the protocol ----------------------------------------------------------------------------------


def test_requests_are_validated_with_one_line_reasons():
    assert decode(encode({"type": "command", "id": 1, "command": "pause"}))["command"] == "pause"
    for bad, reason in [(b"\xff\xfe\n", "not UTF-8"), (b"{nope\n", "not JSON"), (b"[1]\n", "JSON object"),
                        (b'{"id": 1}\n', '"type"'), (b'{"type": "command", "value": NaN}', "NaN")]:
        with pytest.raises(ProtocolError, match=reason):
            decode(bad)
    assert validate_command({"type": "command", "command": "lr", "value": 0.01}) == ("lr", 0.01)
    assert validate_command({"type": "command", "command": "pause", "value": "ignored"}) == ("pause", None)
    with pytest.raises(ProtocolError, match=r"unknown command 'fly' \(known: pause, resume, checkpoint"):
        validate_command({"type": "command", "command": "fly"})
    with pytest.raises(ProtocolError, match="unknown message type 'hello'"):
        validate_command({"type": "hello"})
    for value in (0, -1.0, "0.1", None, True, float("inf")):
        with pytest.raises(ProtocolError, match="lr takes a finite value > 0"):
            validate_command({"type": "command", "command": "lr", "value": value})


def test_telemetry_round_trips_and_tolerates_other_versions():
    t = Telemetry(time=1.5, gpus=(GpuSnapshot(0, "H200", 50.0, 1, 2, 40.0, 300.0, 700.0, 5, 6, 7),),
                  gpu_unavailable_reason=None,
                  host=HostSnapshot(10.0, 1, 2, 3, float("nan"), 4, 5))
    back = telemetry_from_dict(json.loads(encode(telemetry_to_dict(t))))
    assert back.gpus == t.gpus and isinstance(back.gpus, tuple) and isinstance(back.host, HostSnapshot)
    assert back.host.process_cpu_percent is None  # NaN travels as null: N/A
    # A newer sender's extra keys are ignored; an older one's missing fields are unknown (None).
    d = telemetry_to_dict(t)
    d["future"] = 1
    d["gpus"][0]["fan_pct"] = 30
    del d["host"]["workers"]
    back = telemetry_from_dict(d)
    assert back.gpus[0].name == "H200" and back.host.workers is None


# -- hello, events, commands -----------------------------------------------------------------------


def test_the_hello_holds_the_whole_history_and_live_events_follow_in_order(served, tmp_path):
    out = str(tmp_path / "resumed")
    first_segment(out)  # an earlier process: 25 steps, then it died
    s = served(out)
    s.sink(started(out, start_step=20))
    for n in range(21, 24):
        s.sink(step(n))
    with ControlClient(out) as c:
        hello = c.hello
        assert hello["protocol"] == 1 and hello["pid"] == os.getpid() and hello["out_dir"] == os.path.abspath(out)
        assert hello["config"] == {"lr": 0.1, "epochs": 3} and hello["clients"] == 1
        steps = [r["step"] for r in hello["history"] if r["event"] == "train"]
        assert steps == list(range(1, 24))  # the resumed-over 21..25 of the first segment are gone
        for n in range(24, 224):
            s.sink(step(n))
        got = [receive(c)["record"]["step"] for _ in range(200)]
        assert got == list(range(24, 224))  # in order, none twice (23 was in the hello), none lost


def test_events_that_race_a_connect_come_exactly_once(served):
    s = served()
    stop = threading.Event()

    def feed():
        n = 0
        while not stop.is_set():
            n += 1
            s.sink(step(n))
            time.sleep(0.0005)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        for _ in range(3):
            with ControlClient(s.out) as c:
                seen = [r["step"] for r in c.hello["history"] if r["event"] == "train"]
                deadline = time.monotonic() + 0.03
                while time.monotonic() < deadline:
                    msg = receive(c)
                    if msg["type"] == "event":
                        seen.append(msg["record"]["step"])
                assert seen == list(range(1, seen[-1] + 1))
    finally:
        stop.set()
        feeder.join()


def test_a_command_is_acknowledged_then_done_once_applied(served):
    s = served()
    with ControlClient(s.out) as c, ControlClient(s.out) as other:
        done = c.command("lr", 0.01, timeout=5)
        assert done == {"type": "done", "id": 1, "command": "lr", "epoch": 1, "step": 7, "detail": "lr 0.01"}
        assert s.trainer.submitted[0][:2] == ("lr", 0.01)
        # The ack came first, and stays readable; every client sees the command's effect.
        assert receive(c) == {"type": "ack", "id": 1, "command": "lr"}
        assert receive(c)["record"]["event"] == "command"
        record = receive(other)["record"]
        assert record["event"] == "command" and record["command"] == "lr"
        assert other.command("pause", timeout=5)["command"] == "pause"
        # A client that reuses an id still gets one done per command.
        for command in ("checkpoint", "evaluate"):
            other._sock.sendall(encode({"type": "command", "id": 1, "command": command}))
        dones = []
        while len(dones) < 2:
            msg = receive(other)
            if msg["type"] == "done":
                dones.append(msg["command"])
        assert sorted(dones) == ["checkpoint", "evaluate"]


def test_the_endpoint_closes_itself_once_the_run_has_finished(served):
    s = served()
    with ControlClient(s.out) as c:
        s.sink(RunFinished(reason="completed", epoch=1, step=10, best_acc1=1.0, best_acc5=2.0, seconds=3.0))
        # A command that crosses the end is refused, whichever comes first.
        with pytest.raises((CommandRefused, NotLive), match=r"the run has ended \(completed\)|ended \(completed\)"):
            c.command("checkpoint", timeout=5)
        assert receive(c)["record"]["event"] == "finished"
        assert receive(c) == {"type": "bye", "reason": "completed"}
        assert receive(c) is None
    assert s.trainer.submitted == []
    wait_until(lambda: not os.path.exists(pointer_path(s.out)), what="endpoint.json to go")
    assert not os.path.exists(s.endpoint.path)


def test_a_finished_run_closes_its_endpoint_with_nobody_attached(served):
    s = served()
    s.sink(RunFinished(reason="stopped", epoch=1, step=10, best_acc1=1.0, best_acc5=2.0, seconds=3.0))
    wait_until(lambda: not os.path.exists(pointer_path(s.out)), what="endpoint.json to go")
    with pytest.raises(NotLive, match="no live run"):
        ControlClient(s.out)


def test_bad_requests_get_errors_and_the_endpoint_keeps_serving(served):
    s = served()
    sock = raw(s.endpoint.path)
    replies = lines(sock)
    assert next(replies)["type"] == "hello"
    for junk, error in [(b"\xff\xfe\x00garbage\n", "not UTF-8"), (b"not json at all\n", "not JSON"),
                        (b'{"type": "command", "id": 5, "command": "fly"}\n', "unknown command 'fly'"),
                        (b'{"type": "command", "id": 6, "command": "lr", "value": -1}\n', "lr takes a finite"),
                        (b'{"type": "command", "id": 7, "command": "lr", "value": 1e999}\n', "lr takes a finite"),
                        (b'{"type": "status", "id": 8}\n', "unknown message type")]:
        sock.sendall(junk)
        reply = next(replies)
        assert reply["type"] == "error" and error in reply["error"], reply
    assert reply["id"] == 8  # the request's id when it could be read
    sock.sendall(b'{"type": "command", "id": 9, "command": "resume"}\n')
    assert next(replies) == {"type": "ack", "id": 9, "command": "resume"}
    assert [c for c, _, _ in s.trainer.submitted] == ["resume"]  # nothing else reached the trainer
    # A line longer than the limit: an error, then the connection is closed.
    sock.sendall(b"x" * (MAX_REQUEST_BYTES + 10))
    rest = [m for m in replies if m["type"] not in ("event", "done")]
    assert rest == [{"type": "error", "id": None, "error": f"request longer than {MAX_REQUEST_BYTES} bytes; closing"}]
    sock.close()
    with ControlClient(s.out) as c:  # still serving
        assert c.command("checkpoint", timeout=5)["command"] == "checkpoint"


def test_a_client_that_never_reads_is_dropped_while_the_sink_stays_fast(served):
    s = served(queue_limit=100)
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(s.endpoint.path)
    reader = ControlClient(s.out)
    got: list[int] = []

    def read():
        while (m := reader.recv(10)) is not None:
            if m["type"] == "event":
                got.append(len(m["record"]["message"]))

    t = threading.Thread(target=read)
    t.start()
    wait_until(lambda: s.endpoint.clients == 2, what="both clients")
    slowest = 0.0
    for n in range(300):  # 6 MB: far more than the socket buffers and 100 queued messages hold
        event = RunWarning(kind="test", message="w" * (20000 + n))
        before = time.perf_counter()
        s.sink(event)
        slowest = max(slowest, time.perf_counter() - before)
        if n % 20 == 19:  # the reader keeps up, as a console does; the stuck one never reads
            wait_until(lambda: len(got) == n + 1, what="the reading client to get every event")
    wait_until(lambda: s.endpoint.dropped == 1, what="the stuck client to be dropped")
    assert got == [20000 + n for n in range(300)]
    assert slowest < 0.05, f"a sink call took {slowest * 1000:.1f} ms"
    assert s.warnings == ["dropped a console client that stopped reading"]
    assert s.endpoint.clients == 1
    stuck.close()
    reader.close()
    t.join(5)


def test_with_no_client_the_sink_does_not_even_serialise(served):
    s = served()

    class Unserialisable(RunWarning):
        def to_record(self):
            raise AssertionError("serialised with nobody to send it to")

    before = time.perf_counter()
    for _ in range(2000):
        s.endpoint(Unserialisable(kind="x", message="y"))
    assert time.perf_counter() - before < 0.2
    assert not s.endpoint._inbox


def test_a_peer_with_another_uid_is_refused(served):
    s = served(allowed_uid=os.getuid() + 1)  # the SO_PEERCRED check itself, for any test user
    with pytest.raises(Refused, match=rf"this run serves uid {os.getuid() + 1} only \(you are uid {os.getuid()}\)"):
        ControlClient(s.out)
    assert s.endpoint.clients == 0


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another user")
def test_another_user_cannot_even_reach_the_socket(served):
    # A world-traversable parent, so only the endpoint's own 0700/0600 modes stand in the way.
    parent = tempfile.mkdtemp(prefix="wvtui-uid-")
    os.chmod(parent, 0o755)
    try:
        s = served(os.path.join(parent, "run"))

        def as_nobody() -> int:
            """The errno of a connect by uid 65534 (0: it connected), from a forked child."""
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: become nobody, try, report, and leave without cleanup
                code = 0
                try:
                    os.setgid(65534)
                    os.setuid(65534)
                    socket.socket(socket.AF_UNIX).connect(s.endpoint.path)
                except OSError as e:
                    code = e.errno or 255
                os.write(w, str(code).encode())
                os._exit(0)
            os.close(w)
            os.waitpid(pid, 0)
            with os.fdopen(r) as f:
                return int(f.read())

        assert as_nobody() == 13  # EACCES: the 0700 directory
        os.chmod(os.path.dirname(s.endpoint.path), 0o755)
        assert as_nobody() == 13  # and the 0600 socket on its own
        os.chmod(s.endpoint.path, 0o666)
        assert as_nobody() == 0  # the probe itself can connect when the modes allow it
    finally:
        subprocess.run(["rm", "-rf", parent])


def test_at_most_max_clients(served):
    s = served(max_clients=2)
    a, b = ControlClient(s.out), ControlClient(s.out)
    with pytest.raises(Refused, match=r"too many clients \(2 are attached\)"):
        ControlClient(s.out)
    a.close()
    wait_until(lambda: s.endpoint.clients == 1, what="the first client to be gone")
    c = ControlClient(s.out)
    assert c.hello["clients"] == 2
    b.close()
    c.close()


# -- files -----------------------------------------------------------------------------------------


def test_socket_0600_in_a_0700_directory_with_a_pointer(served):
    s = served()
    control = os.path.join(s.out, "control")
    assert s.endpoint.path == os.path.join(os.path.abspath(s.out), "control", "wvtui.sock")
    assert stat.S_IMODE(os.stat(control).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(s.endpoint.path).st_mode) == 0o600
    pointer = json.load(open(pointer_path(s.out)))
    assert pointer["protocol"] == 1 and pointer["pid"] == os.getpid() and pointer["socket"] == s.endpoint.path
    assert socket_path(s.out) == s.endpoint.path


def test_a_long_run_directory_gets_a_short_socket_path_and_a_pointer(served, tmp_path, monkeypatch):
    runtime = tmp_path / "rt"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    out = str(tmp_path / ("a-very-long-run-directory-name-" * 4))
    s = served(out)
    assert os.path.dirname(s.endpoint.path) == str(runtime / "wvtui")
    assert len(os.fsencode(s.endpoint.path)) <= 100
    assert stat.S_IMODE(os.stat(runtime / "wvtui").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(out, "control")).st_mode) == 0o700
    with ControlClient(out) as c:
        assert c.hello["out_dir"] == os.path.abspath(out)
    s.endpoint.close()
    assert not os.path.exists(s.endpoint.path) and not os.path.exists(pointer_path(out))


def test_a_stale_socket_is_replaced_and_a_live_one_refused(served, tmp_path):
    out = str(tmp_path / "run")
    path = default_socket_path(out, create=True)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)  # a crashed run's socket: the file is there, nobody listens
    dead.close()
    with open(pointer_path(out), "w") as f:  # and the pointer of the crashed run
        json.dump({"protocol": 1, "pid": 999999, "socket": path}, f)
    assert live_pid(out) is None
    check_free(out)
    s = served(out)
    assert live_pid(out) == os.getpid()
    with ControlClient(out) as c:
        assert c.hello["pid"] == os.getpid()
    with pytest.raises(EndpointError, match=rf"another wvtui \(pid {os.getpid()}\) is serving .*run; "
                                            rf"attach with `wvtui attach .*run`"):
        ControlEndpoint(out, RunHistory(out), lambda *a: None).start()
    with pytest.raises(EndpointError, match="is serving"):
        check_free(out)
    assert os.path.exists(s.endpoint.path)  # the live one untouched


def test_close_says_bye_and_removes_the_socket_and_pointer(served):
    s = served()
    with ControlClient(s.out) as c:
        s.sink(step(1))
        s.endpoint.close("completed")
        assert receive(c)["record"]["step"] == 1  # what was sent before the close still arrives
        assert receive(c) == {"type": "bye", "reason": "completed"}
        # By the bye the run is no longer listed as live.
        assert not os.path.exists(s.endpoint.path) and not os.path.exists(pointer_path(s.out))
        assert receive(c) is None
    with pytest.raises(NotLive, match="no live run at .*it has finished"):
        ControlClient(s.out)
    s.endpoint.close()  # again: nothing
    s.sink(step(2))  # a late event: ignored, no error


def test_telemetry_flows_from_a_real_sampler_while_a_client_is_connected(served):
    s = served(telemetry_interval=0.05)
    with ControlClient(s.out) as c:
        msg = c.recv(5)
        while msg["type"] != "telemetry":
            msg = c.recv(5)
        t = telemetry_from_dict(msg["telemetry"])
        assert t.host.ram_total_bytes > 0 and t.host.process_rss_bytes > 0
        assert t.gpus or t.gpu_unavailable_reason
    with ControlClient(s.out) as c:
        assert c.hello["telemetry"]["host"]["ram_total_bytes"] > 0  # the latest, in the hello
    assert s.endpoint.telemetry_errors == 0


def test_a_failing_sampler_is_counted_not_raised(served):
    class Broken:
        def sample(self):
            raise RuntimeError("NVML went away")

    s = served(sampler=Broken(), telemetry_interval=0.02)
    with ControlClient(s.out) as c:
        wait_until(lambda: s.endpoint.telemetry_errors >= 2, what="sampling attempts")
        assert c.command("pause", timeout=5)["command"] == "pause"


def test_a_real_runlog_beside_the_endpoint_sees_the_same_records(served, tmp_path):
    s = served()
    log = RunLog(s.out, warn=lambda m: None)
    sink = fanout(log, s.sink)
    with ControlClient(s.out) as c:
        sink(started(s.out))
        for n in range(1, 4):
            sink(step(n))
        live = [receive(c)["record"] for _ in range(4)]
    log.close()
    on_disk = [json.loads(line) for line in open(os.path.join(s.out, "metrics.jsonl"))]
    assert [{k: v for k, v in r.items() if k != "time"} for r in on_disk] == live


def test_a_forked_child_such_as_a_dataloader_worker_does_not_keep_a_dropped_client_connected(served):
    s = served()
    with ControlClient(s.out) as c:
        wait_until(lambda: s.endpoint.clients == 1, what="the client")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # a worker: lives on while the run closes its endpoint
            try:
                os.close(w)
                select.select([r], [], [], 30)  # bounded: a hung child must not hang the suite
            finally:
                os._exit(0)
        os.close(r)
        try:
            s.endpoint.close("completed")
            assert receive(c) == {"type": "bye", "reason": "completed"}
            assert receive(c) is None  # EOF although the child is still alive
        finally:
            os.close(w)
            os.waitpid(pid, 0)


def test_a_hello_of_megabytes_arrives_whole(served):
    s = served()
    s.sink(RunWarning(kind="bad_images", message="m" * 3_000_000, paths=tuple(f"/img/{i}.jpg" for i in range(20000))))
    with ControlClient(s.out) as c:
        (warning,) = c.hello["history"]
        assert len(warning["message"]) == 3_000_000 and len(warning["paths"]) == 20000
        s.sink(step(1))
        assert receive(c)["record"]["step"] == 1


def test_the_dataset_tables_are_made_once_and_a_failure_leaves_them_out(served):
    calls = []

    def tables():
        calls.append(1)
        return {"summary": {"num_classes": 2}, "classes": [{"label": 0}, {"label": 1}], "queries": []}

    s = served(dataset=tables)
    for _ in range(2):
        with ControlClient(s.out) as c:
            assert c.hello["dataset"]["classes"] == [{"label": 0}, {"label": 1}]
    assert calls == [1]
    broken = served(dataset=lambda: 1 / 0)
    with ControlClient(broken.out) as c:
        assert c.hello["dataset"] is None
