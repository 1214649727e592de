"""The `wvtui` command as a user meets it: bad input gets one line and exit 2; signals stop a run
after a checkpoint (exit 128+N) or save one and go on; a hang-up of the console's terminal leaves
the run going headless."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from core.checkpoint import load_checkpoint
from wvtui.cli import main
from test_headless import QUICK, cli_env, read_metrics, run_wvtui


def assert_usage_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("wvtui: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--root", "x", "--no-such-flag"], "--no-such-flag"),
    (["--root", "x", "--batch-size", "-4"], "--batch-size"),
    (["--root", "x", "--amp", "bogus"], "--amp"),
    (["--root", "x", "--epochs", "many"], "--epochs"),
    (["--root", "x", "--steps-per-epoch", "0"], "--steps-per-epoch"),
    (["--root", "x", "--milestones", "60", "30"], "--milestones"),
    (["--epochs", "3"], "--root"),
    (["--root", "x", "--resume", "auto"], "--out"),
])
def test_bad_arguments_exit_2_with_one_line(args, needle, capsys):
    code = main(args)
    assert_usage_error(code, capsys.readouterr().err, needle)


def test_bad_argument_in_a_real_process_has_no_traceback(tmp_path):
    proc = run_wvtui(tmp_path, "--root", str(tmp_path), "--amp", "bogus")
    assert_usage_error(proc.returncode, proc.stderr, "--amp", "bogus")
    assert proc.stdout == ""


def test_missing_root_names_the_path(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    assert_usage_error(main(["--root", missing]), capsys.readouterr().err, missing)


def test_root_that_is_a_file_names_the_path(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert_usage_error(main(["--root", str(f)]), capsys.readouterr().err, str(f), "not a directory")


def test_root_without_an_info_file_names_it(synthetic_root, tmp_path, capsys):
    root = str(tmp_path / "root")
    shutil.copytree(os.path.join(synthetic_root, "info"), os.path.join(root, "info"))
    os.remove(os.path.join(root, "info", "val_filelist.txt"))
    assert_usage_error(main(["--root", root]), capsys.readouterr().err,
                       os.path.join(root, "info", "val_filelist.txt"))


def test_too_many_classes(synthetic_root, tmp_path, capsys):
    code = main(["--root", synthetic_root, "--num-classes", "50", "--out", str(tmp_path / "r")])
    assert_usage_error(code, capsys.readouterr().err, "num_classes 50")


def test_out_under_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    code = main(["--root", str(tmp_path), "--out", str(f / "run")])
    assert_usage_error(code, capsys.readouterr().err, "--out", "is not a directory")


def test_device_cuda_without_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["--root", str(tmp_path), "--out", str(tmp_path / "r"), "--device", "cuda"])
    assert_usage_error(code, capsys.readouterr().err, "--device cuda", "CUDA is not available")


def test_unknown_model(synthetic_root, tmp_path, capsys):
    code = main(["--root", synthetic_root, "--num-classes", "4", "--model", "resnet_9000", "--out", str(tmp_path)])
    assert_usage_error(code, capsys.readouterr().err, "resnet_9000")


def test_image_size_too_small_for_inception_resnet_v2(synthetic_root, tmp_path, capsys):
    code = main(["--root", synthetic_root, "--num-classes", "4", "--image-size", "64", "--workers", "0", "--batch-size", "8",
                 "--out", str(tmp_path)])
    assert_usage_error(code, capsys.readouterr().err, "--image-size 64", "75")


def test_resume_missing_file(synthetic_root, tmp_path, capsys):
    missing = str(tmp_path / "nope.pt")
    code = main(["--root", synthetic_root, "--num-classes", "4", "--resume", missing])
    assert_usage_error(code, capsys.readouterr().err, missing)


def test_help_works_as_a_module(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wvtui", "--help"], cwd=tmp_path, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--root", "--num-classes", "--epochs", "--batch-size", "--lr", "--momentum", "--weight-decay",
                 "--milestones", "--gamma", "--model", "--image-size", "--workers", "--device", "--amp",
                 "--seed", "--out", "--resume", "--headless", "--demo"):
        assert flag in proc.stdout


@pytest.fixture(scope="module")
def short_run(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("short")
    out = str(tmp / "run")
    proc = run_wvtui(tmp, "--root", synthetic_root, "--num-classes", "4", "--epochs", "1", "--steps-per-epoch", "2",
                     "--val-batches", "1", "--out", out, "--headless", *QUICK)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("change, needle", [
    (["--num-classes", "3"], "class"),
    (["--model", "resnet34"], "model"),
])
def test_resume_from_another_model_or_class_count(short_run, synthetic_root, tmp_path, change, needle):
    args = ["--root", synthetic_root, "--num-classes", "4", "--epochs", "2", "--out", str(tmp_path / "r"),
            "--headless", *QUICK, "--resume", os.path.join(short_run, "checkpoints", "last.pt"), *change]
    proc = run_wvtui(tmp_path, *args)
    assert_usage_error(proc.returncode, proc.stderr, needle)


# --- signals ---------------------------------------------------------------------------------

class Live:
    """A `wvtui --headless` process whose stdout lines are read as they come."""

    def __init__(self, tmp_path, *args):
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wvtui", *args], cwd=tmp_path, env=cli_env(tmp_path),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),  # in case pytest runs under nohup
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

def _records(out, event):
    path = os.path.join(out, "metrics.jsonl")
    return [r for r in read_metrics(out) if r["event"] == event] if os.path.exists(path) else []


def _wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Console:
    """`wvtui` on a pseudo-terminal that is its controlling terminal, as in an SSH session."""

    def __init__(self, tmp_path, args, size=(40, 120)):
        import fcntl
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
        env = cli_env(tmp_path)
        env["TERM"] = "xterm-256color"

        def controlling_tty():  # in the child, after setsid
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen([sys.executable, "-m", "wvtui", *args], cwd=tmp_path, env=env,
                                     stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     preexec_fn=controlling_tty)
        os.close(slave)
        self.screen = bytearray()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):  # a terminal nobody reads blocks the app's writes
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


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_console_hangup_continues_headless_in_the_same_run_dir(synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    console = Console(tmp_path, long_run(synthetic_root, out, headless=False))
    proc = console.proc
    try:
        _wait_until(lambda: len(_records(out, "train")) >= 2, 150, "training records from the console run")
        assert proc.poll() is None
        assert b"\x1b[" in console.screen  # the console, not headless, was drawing on the terminal
        trained_before = len(_records(out, "train"))
        console.hang_up()

        log = os.path.join(out, "console.log")
        _wait_until(lambda: any(r["reason"] == "hangup" for r in _records(out, "checkpoint")), 60,
                    "the hang-up checkpoint")
        _wait_until(lambda: len(_records(out, "train")) > trained_before + 2, 60, "training after the hang-up")
        _wait_until(lambda: os.path.exists(log) and "Loss: " in open(log, errors="replace").read(), 60,
                    "headless lines in console.log")
        assert proc.poll() is None, "the run ended with the terminal"
        text = open(log, errors="replace").read()
        assert "terminal hung up" in text
        assert "\x1b[" not in text  # the app's last screen writes went nowhere, not into the log
        assert re.search(r"\[epoch \d+/200 step \d+/8 \| run \d+/1600\]", text), text

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 128 + signal.SIGTERM
        state = load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))
        assert state["step"] >= _records(out, "train")[-1]["step"]  # written at the stop, after the last report
        assert "Finished (stopped)" in open(log, errors="replace").read()
    finally:
        console.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_console_sigterm_saves_closes_the_app_and_exits_143(synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    console = Console(tmp_path, long_run(synthetic_root, out, headless=False))
    try:
        _wait_until(lambda: len(_records(out, "train")) >= 2, 150, "training records from the console run")
        console.proc.send_signal(signal.SIGTERM)
        assert console.proc.wait(120) == 128 + signal.SIGTERM
        time.sleep(0.5)  # the reader thread collects the app's last writes
        assert b"\x1b[?1049l" in console.screen  # Textual left the alternate screen: the terminal is restored
        last = _records(out, "checkpoint")[-1]
        assert last["reason"] == "signal"
        assert load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))["step"] == last["step"]
        assert _records(out, "finished")[-1]["reason"] == "stopped"
    finally:
        console.close()


# --- --demo ---------------------------------------------------------------------------------------

TINY_DEMO = dict(classes=3, queries_per_class=1, images_per_query=6, val_per_class=2, size=40, seed=0)


def test_demo_dataset_is_generated_once_into_the_cache(tmp_path, monkeypatch):
    from wvtui import demo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "DATASET", TINY_DEMO)
    # A half-written tree left by an interrupted first run is not trusted.
    os.makedirs(os.path.join(demo.cache_dir(), "info"))
    root = demo.ensure_dataset()
    assert root == str(tmp_path / "cache" / "wvtui" / demo.DEMO_VERSION)
    assert os.path.isfile(os.path.join(root, "synthetic.json"))
    assert os.listdir(os.path.dirname(root)) == [demo.DEMO_VERSION]  # no temp dirs left behind

    def must_not_generate(*a, **k):
        raise AssertionError("the cached dataset was generated again")

    monkeypatch.setattr("core.synthetic.make_webvision", must_not_generate)
    assert demo.ensure_dataset() == root


def test_demo_settings_apply_under_explicit_flags(tmp_path, monkeypatch):
    from wvtui import demo
    from wvtui.cli import build_parser, resolve_config

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "DATASET", TINY_DEMO)
    cfg = resolve_config(build_parser().parse_args(["--demo", "--epochs", "1", "--lr", "0.01",
                                                    "--out", str(tmp_path / "r")]))
    assert cfg.demo is True and cfg.root == demo.cache_dir()
    assert (cfg.epochs, cfg.lr) == (1, 0.01)  # explicit flags win
    assert (cfg.model, cfg.image_size, cfg.batch_size, cfg.num_classes) == (
        demo.CONFIG["model"], demo.CONFIG["image_size"], demo.CONFIG["batch_size"], demo.CONFIG["num_classes"])
    plain = resolve_config(build_parser().parse_args(["--root", "x", "--out", str(tmp_path / "r")]))
    assert plain.demo is False and plain.model == "inception_resnet_v2" and plain.epochs == 80


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_run_uses_the_cached_dataset_and_says_it_is_a_demo(tmp_path):
    from core.synthetic import make_webvision
    from wvtui import demo

    # Another process (this test) generated the cache: the run must reuse it, not regenerate.
    cached = tmp_path / "cache" / "wvtui" / demo.DEMO_VERSION
    make_webvision(str(cached), **dict(TINY_DEMO, classes=demo.CONFIG["num_classes"]))
    out = str(tmp_path / "run")
    proc = run_wvtui(tmp_path, "--demo", "--headless", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8",
                     "--image-size", "32", "--workers", "0", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "Generating" not in proc.stderr
    assert proc.stdout.startswith("wvtui (demo): ")
    assert f"Dataset {cached}:" in proc.stdout
    assert re.search(r"Average Loss: .* Acc@1 ", proc.stdout)
    import json

    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["demo"] is True


def test_default_out_and_the_run_dir_of_a_resumed_checkpoint(tmp_path, monkeypatch):
    from wvtui.cli import build_parser, resolve_config

    monkeypatch.chdir(tmp_path)
    cfg = resolve_config(build_parser().parse_args(["--root", "data"]))
    assert re.fullmatch(r"runs/\d{8}-\d{6}", cfg.out)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20260101-120000")
    os.makedirs("runs/20260101-120000")
    # Two runs started in the same second get two directories.
    assert resolve_config(build_parser().parse_args(["--root", "data"])).out == "runs/20260101-120000-1"

    # --resume OUT/checkpoints/last.pt continues writing OUT, unless --out says otherwise.
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "last.pt").write_bytes(b"checked when the trainer loads it")
    resume = str(run / "checkpoints" / "last.pt")
    assert resolve_config(build_parser().parse_args(["--root", "data", "--resume", resume])).out == str(run)
    other = resolve_config(build_parser().parse_args(["--root", "data", "--resume", resume, "--out", "new"]))
    assert other.out == "new"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_resume_from_a_file_that_is_not_a_checkpoint(synthetic_root, tmp_path, capsys):
    bogus = tmp_path / "last.pt"
    bogus.write_bytes(b"PK\x03\x04 this is no checkpoint")
    code = main(["--root", synthetic_root, "--num-classes", "4", "--out", str(tmp_path / "r"), "--resume", str(bogus),
                 *QUICK])
    assert_usage_error(code, capsys.readouterr().err, str(bogus))
