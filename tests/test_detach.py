"""`wvtui --detach`: the run goes on in a session of its own after the terminal that started it
is gone, writes OUT/console.log, and is reached with `wvtui ctl` (and `wvtui attach`); a second
run into a live OUT is refused."""

from __future__ import annotations

import os
import re
import time

import pytest

from core.runinfo import run_info
from wvtui.cli import main
from wvtui.detach import child_argv
from helpers import wait_until
from wvtui_process import QUICK, console, records, wvtui_cli


def test_the_run_gets_the_same_flags_headless_with_out_fixed():
    argv = ["--root", "r", "--detach", "--epochs", "3", "--no-attach"]
    assert child_argv(argv, "runs/x", out_given=False) == ["--root", "r", "--epochs", "3", "--headless",
                                                           "--out", "runs/x"]
    # argparse's unique prefixes are flags too; an --out given stays as given.
    assert child_argv(["--root", "r", "--det", "--no-att", "--out", "o"], "o", out_given=True) == [
        "--root", "r", "--out", "o", "--headless"]


def test_a_failed_start_shows_only_its_own_lines_of_console_log(tmp_path):
    from wvtui.detach import _tail

    log = tmp_path / "console.log"
    log.write_text("an earlier segment\nits last line\n")
    start = log.stat().st_size
    with open(log, "a") as f:
        f.write("wvtui: error: this start's\n")
    assert _tail(str(log), start) == ["wvtui: error: this start's"]
    assert _tail(str(log), 0, n=2) == ["its last line", "wvtui: error: this start's"]


def test_detach_refuses_bad_flags_before_starting_anything(tmp_path, capsys):
    assert main(["--root", "x", "--detach", "--amp", "bogus"]) == 2  # argparse, in this process
    assert "--amp" in capsys.readouterr().err
    out = tmp_path / "afile"
    out.write_text("x")
    assert main(["--root", "x", "--detach", "--out", str(out / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a directory" in err[0]
    assert main(["--root", "x", "--detach", "--resume", "auto"]) == 2
    assert "--resume auto needs --out" in capsys.readouterr().err


def _detached_pid(screen: str) -> int:
    m = re.search(r"^pid:\s+(\d+)", screen, re.M)
    assert m, screen
    return int(m.group(1))


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return True


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_detached_run_outlives_its_terminal_and_stops_through_ctl(synthetic_root, tmp_path, capsys):
    # Started from a terminal as in an SSH session, with the default OUT (runs/<date-time>),
    # which this command must fix before it starts the run, and name.
    term = console(tmp_path, ["--root", synthetic_root, "--num-classes", "4", "--epochs", "3",
                              "--steps-per-epoch", "400", "--val-batches", "1", "--no-tb", "--no-samples",
                              "--detach", "--no-attach", *QUICK])
    pid = None
    try:
        t = time.monotonic()
        assert term.proc.wait(120) == 0, term.screen.decode(errors="replace")
        wait_until(lambda: b"control:" in term.screen, 10)
        screen = term.screen.decode(errors="replace")
        m = re.search(r"^run directory: (runs/\d{8}-\d{6})\s*$", screen, re.M)
        assert m, screen
        out = tmp_path / m.group(1)
        pid = _detached_pid(screen)
        assert f"wvtui attach {m.group(1)}" in screen and f"wvtui ctl {m.group(1)} " in screen
        assert time.monotonic() - t < 120
        # Its own session: the terminal's hang-up does not reach it.
        assert os.getsid(pid) == pid != os.getsid(0)
        term.hang_up()
        info = run_info(str(out))
        assert info.state == "live" and info.pid == pid
        wait_until(lambda: len(records(out, "train")) >= 2, 60)
        with open(out / "console.log") as f:
            log = f.read()
        assert "Dataset" in log or "Epoch" in log or "step" in log, log

        # A second run into the live OUT is refused, naming the pid; so is a second --detach.
        assert main(["--root", synthetic_root, "--num-classes", "4", "--out", str(out), "--headless", *QUICK]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and f"pid {pid}" in lines[0] and str(out) in lines[0], lines
        again = wvtui_cli(tmp_path, "--root", synthetic_root, "--out", str(out), "--detach", "--no-attach")
        assert again.returncode == 2 and f"pid {pid}" in again.stderr

        stop = wvtui_cli(tmp_path, "ctl", str(out), "stop", timeout=120)
        assert stop.returncode == 0, stop.stderr
        wait_until(lambda: _gone(pid), 60, what="the detached run exits")
        pid = None
        assert run_info(str(out)).state == "stopped"
        with open(out / "console.log") as f:
            assert "stopped" in f.read()
    finally:
        term.close()
        if pid is not None and not _gone(pid):
            os.kill(pid, 9)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_detached_run_that_cannot_start_shows_its_error_and_exit_code(tmp_path):
    out = tmp_path / "run"
    proc = wvtui_cli(tmp_path, "--root", str(tmp_path / "nowhere"), "--lr", "nan", "--out", str(out), "--detach", "--no-attach",
                     timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("wvtui: error: ") and "--lr" in last
    assert not out.exists()  # it started nothing: no empty run directory is left behind


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_detach_attaches_on_a_terminal_and_d_leaves_the_run_going(synthetic_root, tmp_path):
    import json

    out = tmp_path / "run"
    term = console(tmp_path, ["--root", synthetic_root, "--num-classes", "4", "--epochs", "3", "--steps-per-epoch",
                              "2000", "--val-batches", "1", "--no-tb", "--no-samples", "--out", str(out), "--detach",
                              *QUICK])
    pid = None
    try:
        wait_until(lambda: b"control:" in term.screen, 120, what="the run directory and commands are printed")
        pid = _detached_pid(term.screen.decode(errors="replace"))

        def attached():  # ctl's own connection is one; the console is the other
            p = wvtui_cli(tmp_path, "ctl", str(out), "status")
            return p.returncode == 0 and json.loads(p.stdout)["clients"] == 2

        wait_until(attached, 60, interval=0.5, what="the console attached")

        def detached():  # a key typed before the console reads the terminal is flushed: again
            term.type("d")
            return term.proc.poll() is not None

        wait_until(detached, 60, interval=1.0, what="d detaches")
        assert term.proc.returncode == 0, term.screen.decode(errors="replace")
        assert run_info(str(out)).state == "live" and run_info(str(out)).pid == pid
        stop = wvtui_cli(tmp_path, "ctl", str(out), "stop", timeout=120)
        assert stop.returncode == 0, stop.stderr
        wait_until(lambda: _gone(pid), 60, what="the detached run exits")
        pid = None
    finally:
        term.close()
        if pid is not None and not _gone(pid):
            os.kill(pid, 9)
