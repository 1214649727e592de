"""Signals as a user sends them: a stop signal ends a run after a checkpoint (exit 128+N), a second
SIGINT at once, SIGUSR1 saves and goes on; from the first moments of start-up (never a traceback,
never the default action); the console's own terminal hanging up leaves the run going headless.
A shell's terminal hanging up, DataLoader workers and all, is test_hangup.py's."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from core.checkpoint import load_checkpoint
from helpers import wait_until
from wvtui_process import QUICK, Live, catches, cli_env, console, read_metrics, records


# --- signals ---------------------------------------------------------------------------------

def long_run(synthetic_root, out, *, headless=True):
    return ["--root", synthetic_root, "--num-classes", "4", "--epochs", "200", "--out", out,
            *(["--headless"] if headless else []), *QUICK]


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_stop_signal_saves_a_checkpoint_and_exits_128_plus_n(synthetic_root, tmp_path, sig):
    out = str(tmp_path / "run")
    live = Live(tmp_path, *long_run(synthetic_root, out))
    live.wait_for(r"^Loss: ")
    live.proc.send_signal(sig)
    code, err = live.finish()
    assert code == 128 + sig, err
    assert "Traceback" not in err
    assert any(line.startswith("Finished (stopped)") for line in live.lines), live.lines
    state = load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))
    assert 0 < state["step"] < 200 * 8
    last = [r for r in read_metrics(out) if r["event"] == "checkpoint"][-1]
    assert last["reason"] == "signal" and last["step"] == state["step"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_second_sigint_exits_at_once(synthetic_root, tmp_path):
    live = Live(tmp_path, *long_run(synthetic_root, str(tmp_path / "run")))
    live.wait_for(r"^Loss: ")
    live.proc.send_signal(signal.SIGINT)
    # Apart, or the kernel merges them into one; well inside the step + checkpoint that stopping takes.
    time.sleep(0.1)
    live.proc.send_signal(signal.SIGINT)
    code, err = live.finish()
    assert code == 128 + signal.SIGINT
    assert "SIGINT again: exiting now" in err, err
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigusr1_saves_a_checkpoint_and_the_run_goes_on(synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    live = Live(tmp_path, "--root", synthetic_root, "--num-classes", "4", "--epochs", "3", "--out", out,
                "--headless", *QUICK)
    live.wait_for(r"^Loss: ")
    live.proc.send_signal(signal.SIGUSR1)
    live.wait_for(r"^Checkpoint \(signal\) saved to ")
    code, err = live.finish()
    assert code == 0, err
    assert any(line.startswith("Finished (completed)") for line in live.lines)
    records = read_metrics(out)
    manual = [r for r in records if r["event"] == "checkpoint" and r["reason"] == "signal"]
    assert len(manual) == 1
    assert manual[0]["step"] < 3 * 8 == load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))["step"]


# --- the console over a terminal that hangs up ----------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(240)
def test_console_hangup_continues_headless_in_the_same_run_dir(synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    term = console(tmp_path, long_run(synthetic_root, out, headless=False))
    proc = term.proc
    try:
        wait_until(lambda: len(records(out, "train")) >= 2, 150, "training records from the console run")
        assert proc.poll() is None
        assert b"\x1b[" in term.screen  # the console, not headless, was drawing on the terminal
        trained_before = len(records(out, "train"))
        term.hang_up()

        log = os.path.join(out, "console.log")
        wait_until(lambda: any(r["reason"] == "hangup" for r in records(out, "checkpoint")), 60,
                    "the hang-up checkpoint")
        wait_until(lambda: len(records(out, "train")) > trained_before + 2, 60, "training after the hang-up")
        wait_until(lambda: os.path.exists(log) and "Loss: " in open(log, errors="replace").read(), 60,
                    "headless lines in console.log")
        assert proc.poll() is None, "the run ended with the terminal"
        text = open(log, errors="replace").read()
        assert "terminal hung up" in text
        assert "\x1b[" not in text  # the app's last screen writes went nowhere, not into the log
        assert re.search(r"\[epoch \d+/200 step \d+/8 \| run \d+/1600\]", text), text

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 128 + signal.SIGTERM
        state = load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))
        assert state["step"] >= records(out, "train")[-1]["step"]  # written at the stop, after the last report
        assert "Finished (stopped)" in open(log, errors="replace").read()
    finally:
        term.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_console_sigterm_saves_closes_the_app_and_exits_143(synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    term = console(tmp_path, long_run(synthetic_root, out, headless=False))
    try:
        wait_until(lambda: len(records(out, "train")) >= 2, 150, "training records from the console run")
        term.proc.send_signal(signal.SIGTERM)
        assert term.proc.wait(120) == 128 + signal.SIGTERM
        # Textual left the alternate screen: the terminal is restored.
        wait_until(lambda: b"\x1b[?1049l" in term.screen, 10, "the app to leave the alternate screen")
        last = records(out, "checkpoint")[-1]
        assert last["reason"] == "signal"
        assert load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))["step"] == last["step"]
        assert records(out, "finished")[-1]["reason"] == "stopped"
    finally:
        term.close()


# --- signals during start-up --------------------------------------------------------------------

def _started(tmp_path, *args):
    """A wvtui process, returned as soon as its signal handlers are in place (imports still ahead)."""
    proc = subprocess.Popen([sys.executable, "-m", "wvtui", *args], cwd=tmp_path, env=cli_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: catches(proc.pid, signal.SIGUSR1) or proc.poll() is not None, 30,
                   "wvtui to install its signal handlers")
    except BaseException:
        proc.kill()
        raise
    return proc


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_during_start_up_exits_128_plus_n_with_one_line(synthetic_root, tmp_path, sig):
    proc = _started(tmp_path, "--root", synthetic_root, "--num-classes", "4", "--out", str(tmp_path / "r"),
                    "--headless", *QUICK)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=100)
    assert proc.returncode == 128 + sig, err
    assert err.splitlines() == [f"wvtui: {signal.Signals(sig).name} before training started: exiting "
                                "(nothing was trained, nothing to save)"], err
    assert not os.path.exists(tmp_path / "r" / "checkpoints")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigusr1_during_start_up_saves_a_checkpoint_once_training_runs(synthetic_root, tmp_path):
    out = str(tmp_path / "r")
    proc = _started(tmp_path, "--root", synthetic_root, "--num-classes", "4", "--epochs", "1", "--out", out,
                    "--headless", *QUICK)
    proc.send_signal(signal.SIGUSR1)
    stdout, err = proc.communicate(timeout=200)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    saved = [r for r in records(out, "checkpoint") if r["reason"] == "signal"]
    assert len(saved) == 1 and saved[0]["step"] <= 1, records(out, "checkpoint")


def test_forked_children_do_not_inherit_the_consoles_or_the_bridges_handlers(tmp_path):
    # A DataLoader worker forked while the console runs once inherited Textual's SIGCONT handler,
    # which the hang-up's SIGCONT then ran against the dead terminal, killing the worker.
    code = """
import multiprocessing, signal
from wvtui.signals import SignalBridge
SignalBridge().install()
signal.signal(signal.SIGCONT, lambda *a: None)   # as Textual's driver does
def report(q):
    q.put({s.name: getattr(signal.getsignal(s), "name", "a Python handler") for s in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                                                      signal.SIGTERM, signal.SIGCONT)})
q = multiprocessing.get_context("fork").SimpleQueue()
p = multiprocessing.get_context("fork").Process(target=report, args=(q,))
p.start(); p.join()
print(q.get())
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(tmp_path), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str({"SIGINT": "SIG_IGN", "SIGHUP": "SIG_IGN", "SIGUSR1": "SIG_IGN",
                                       "SIGTERM": "SIG_DFL", "SIGCONT": "SIG_DFL"})
