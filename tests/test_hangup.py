"""A real SSH hang-up: an interactive shell is the session leader of a pseudo-terminal and starts
the console with DataLoader workers; the terminal goes away (the pty master closes, as sshd does
when the connection drops). The kernel and the dying shell send SIGHUP to the whole foreground
process group, workers included: the run must go on training headless, and a later SIGTERM
must still end it with 143 and a loadable last.pt."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time

import pytest

from core.checkpoint import load_checkpoint
from helpers import wait_until
from wvtui_process import QUICK, Terminal, cli_env, records

# The shell dies with the terminal, so it cannot report the exit status: this wrapper, started
# by the shell as the job, ignores the hang-up itself (its child, wvtui, gets the default
# disposition back, as any program started from a shell), writes the child's pid, waits, and
# writes its exit status.
RECORD_EXIT = """\
import os, signal, subprocess, sys
signal.signal(signal.SIGHUP, signal.SIG_IGN)
rc_path, pid_path, *cmd = sys.argv[1:]
child = subprocess.Popen(cmd, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
with open(pid_path + ".tmp", "w") as f:
    f.write(str(child.pid))
os.replace(pid_path + ".tmp", pid_path)
code = child.wait()
with open(rc_path + ".tmp", "w") as f:
    f.write(str(code))
os.replace(rc_path + ".tmp", rc_path)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_a_hang_up_of_the_shells_terminal_leaves_the_run_training(synthetic_root, tmp_path):
    out = tmp_path / "run"
    rc_path, pid_path = tmp_path / "rc", tmp_path / "pid"
    wrapper = tmp_path / "record_exit.py"
    wrapper.write_text(RECORD_EXIT)
    args = ["--root", synthetic_root, "--num-classes", "4", "--epochs", "300", "--out", str(out), *QUICK,
            "--workers", "2"]  # after QUICK: real worker processes, which the hang-up reaches too
    command = shlex.join([sys.executable, str(wrapper), str(rc_path), str(pid_path),
                          sys.executable, "-m", "wvtui", *args])

    env = cli_env(tmp_path)
    env.update(TERM="xterm-256color", PS1="$ ", HOME=str(tmp_path))
    shell = Terminal(["bash", "--norc", "--noprofile", "-i"], cwd=tmp_path, env=env)
    try:
        shell.type(command + "\n")
        wait_until(lambda: len(records(out, "train")) >= 3, 240, "the console run to train")
        pid = int(pid_path.read_text())
        assert b"\x1b[" in shell.screen  # the console, not headless lines, was on the terminal

        shell.hang_up()
        hung_up = time.monotonic()
        wait_until(lambda: shell.proc.poll() is not None, 30, "the shell to die with its terminal")
        # Training goes on: new train records keep coming for (at least) 10 s after the hang-up.
        wait_until(lambda: time.monotonic() - hung_up > 10 or not _alive(pid), 30, "10 s after the hang-up")
        assert _alive(pid) and not rc_path.exists(), "wvtui ended with the terminal"
        seen = len(records(out, "train"))
        wait_until(lambda: len(records(out, "train")) > seen or not _alive(pid), 120,
                   "train records more than 10 s after the hang-up")
        assert _alive(pid), "wvtui ended after the hang-up"
        assert not records(out, "error"), records(out, "error")
        log = (out / "console.log").read_text(errors="replace")
        assert "terminal hung up" in log and "Error" not in log, log

        os.kill(pid, signal.SIGTERM)
        wait_until(rc_path.exists, 180, "wvtui's exit status after SIGTERM")
        assert rc_path.read_text() == str(128 + signal.SIGTERM), (out / "console.log").read_text(errors="replace")
        state = load_checkpoint(str(out / "checkpoints" / "last.pt"))
        assert state["step"] >= records(out, "train")[-1]["step"]
        assert records(out, "finished")[-1]["reason"] == "stopped"
    finally:
        shell.close()
        if pid_path.exists() and _alive(int(pid_path.read_text())):
            os.kill(int(pid_path.read_text()), signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_twice_in_a_real_terminal_saves_and_exits_130(synthetic_root, tmp_path):
    """In the console's raw mode Ctrl-C is a key (byte 0x03), not SIGINT: the first opens the
    quit dialog, the second saves a checkpoint and quits with the interrupt's exit code."""
    from wvtui_process import console

    out = tmp_path / "run"
    term = console(tmp_path, ["--root", synthetic_root, "--num-classes", "4", "--epochs", "300",
                              "--out", str(out), *QUICK])
    try:
        wait_until(lambda: len(records(out, "train")) >= 2, 180, "the console run to train")
        term.type("\x03")
        wait_until(lambda: b"Save a checkpoint and quit" in term.screen, 30, "the quit dialog")
        assert term.proc.poll() is None, "the first Ctrl-C ended the console"
        term.type("\x03")
        code = term.proc.wait(120)
        assert code == 128 + signal.SIGINT, bytes(term.screen[-2000:]).decode(errors="replace")
        assert records(out, "finished")[-1]["reason"] == "stopped"
        state = load_checkpoint(str(out / "checkpoints" / "last.pt"))
        assert state["step"] >= records(out, "train")[-1]["step"]
    finally:
        term.close()
