"""Real `wvtui` processes for the CLI tests: run to the end, watched line by line, or on a
pseudo-terminal as a user's SSH session would hold it."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--model", "resnet18", "--image-size", "32", "--batch-size", "8", "--workers", "0",
         "--report-every", "1", "--lr", "0.05"]


def cli_env(tmp_path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=REPO, XDG_CACHE_HOME=str(tmp_path / "cache"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)
    return env


def run_wvtui(tmp_path, *args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wvtui", *args], cwd=tmp_path, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def read_metrics(out) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def records(out, event) -> list[dict]:
    """The `event` records of OUT/metrics.jsonl so far (none while the file does not exist)."""
    path = os.path.join(out, "metrics.jsonl")
    return [r for r in read_metrics(out) if r["event"] == event] if os.path.exists(path) else []


def wvtui_cli(tmp_path, *args, timeout=60) -> subprocess.CompletedProcess:
    """`python -m wvtui ARGS` (a subcommand: ctl, ls, ...) run to the end, output captured."""
    return subprocess.run([sys.executable, "-m", "wvtui", *args], cwd=tmp_path, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler installed for `sig` (Linux: /proc/PID/status SigCgt)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except FileNotFoundError:
        pass
    return False


def default_stop_signals() -> None:
    """In a child before exec: SIGINT and SIGHUP back to their default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class Live:
    """A `wvtui --headless` process whose stdout lines are read as they come."""

    def __init__(self, tmp_path, *args):
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wvtui", *args], cwd=tmp_path, env=cli_env(tmp_path),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # As a user's shell starts it: pytest itself may run under nohup, or as a background job
            # of a non-interactive shell, which starts with SIGINT ignored (and wvtui keeps an
            # inherited "ignore" as the user's choice).
            preexec_fn=default_stop_signals,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, pattern, timeout=120.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n" + "\n".join(self.lines))
            if line is None:
                raise AssertionError(f"process ended before {pattern!r}:\n" + "\n".join(self.lines)
                                     + "\nstderr:\n" + self.proc.stderr.read())
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def finish(self, timeout=120.0) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        while (line := self._q.get(timeout=10)) is not None:
            self.lines.append(line)
        return code, self.proc.stderr.read()


class Terminal:
    """A pseudo-terminal whose slave side is the controlling terminal of a new session that
    runs `argv`, as in an SSH session. The master side is drained (a terminal nobody reads
    blocks its writers) into `screen`; `hang_up()` closes it, and the kernel sends SIGHUP to the
    session's foreground process group and its leader."""

    def __init__(self, argv, *, cwd, env, size=(40, 120)):
        import fcntl
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))

        def controlling_tty():  # in the child, after setsid
            default_stop_signals()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, preexec_fn=controlling_tty)
        os.close(slave)
        self.screen = bytearray()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        import select

        while not self._stop.is_set():
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    return
                if not data:
                    return
                self.screen.extend(data)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def hang_up(self):
        """Close the terminal's master side: the kernel sends SIGHUP to the session."""
        self._stop.set()
        self._reader.join(5)
        os.close(self.master)
        self.master = None

    def close(self):
        self._stop.set()
        if self.master is not None:
            self._reader.join(5)
            os.close(self.master)
            self.master = None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def console(tmp_path, args, size=(40, 120)) -> Terminal:
    """`wvtui ARGS` itself as the session leader of a terminal."""
    env = cli_env(tmp_path)
    env["TERM"] = "xterm-256color"
    return Terminal([sys.executable, "-m", "wvtui", *args], cwd=tmp_path, env=env, size=size)
