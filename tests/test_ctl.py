"""`wvtui ctl OUT COMMAND`: a script controls a live run through its socket and learns, from the
exit code and one line, whether the command was applied.

Fast tests serve a real ControlEndpoint from the test process, with a stand-in trainer that
applies each command a moment later (a CommandApplied through the sink, as the trainer does).
The slow test drives a real headless run in a subprocess: every command applied at the next
step boundary, with its effect in metrics.jsonl."""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time

import pytest

from core.endpoint import ControlEndpoint
from core.events import CommandApplied, RunFinished
from core.history import RunHistory
from wvtui.cli import main
from wvtui.ctl import status_of
from helpers import wait_until
from wvtui_process import QUICK, Live, records, wvtui_cli


def one_error_line(err, *needles):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("wvtui: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- checked before connecting -------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["bogus"], "unknown command 'bogus'"),
    (["lr"], "lr needs a VALUE"),
    (["lr", "abc"], "expected a number"),
    (["lr", "-1"], "> 0"),
    (["lr", "0"], "> 0"),
    (["lr", "nan"], "> 0"),
    (["lr", "inf"], "> 0"),
    (["pause", "3"], "takes no value"),
    (["stop_no_save"], "unknown command"),
    (["pause", "--timeout", "-1"], "--timeout"),
])
def test_a_bad_command_or_value_exits_2_without_connecting(tmp_path, capsys, args, needle):
    control = tmp_path / "control"
    control.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(control / "wvtui.sock"))
    listener.listen(4)
    listener.setblocking(False)
    (control / "endpoint.json").write_text(json.dumps({"pid": os.getpid(), "socket": str(control / "wvtui.sock")}))
    try:
        assert main(["ctl", str(tmp_path), *args]) == 2
        one_error_line(capsys.readouterr().err, needle)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def test_ctl_without_a_run_dir_or_command_is_a_usage_error(capsys):
    assert main(["ctl"]) == 2
    one_error_line(capsys.readouterr().err, "wvtui ctl")


def test_a_run_that_never_served_or_died_is_not_live(tmp_path, capsys):
    assert main(["ctl", str(tmp_path), "pause"]) == 1  # no endpoint.json: never started
    one_error_line(capsys.readouterr().err, "no live run", str(tmp_path))
    # Killed: endpoint.json and the socket file left behind, nobody accepting.
    control = tmp_path / "control"
    control.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(control / "wvtui.sock"))
    dead.close()
    (control / "endpoint.json").write_text(json.dumps({"pid": 99999999, "socket": str(control / "wvtui.sock")}))
    assert main(["ctl", str(tmp_path), "status"]) == 1
    one_error_line(capsys.readouterr().err, "no live run")


# --- against a real endpoint ---------------------------------------------------------------------------

class StandIn:
    """A real ControlEndpoint whose 'trainer' applies each command after `delay` seconds."""

    def __init__(self, out, delay=0.05):
        self.delay = delay
        self.submitted = []
        self.refuse = None
        self.apply = True
        self.endpoint = ControlEndpoint(str(out), RunHistory(str(out)), self.submit, telemetry_interval=60)
        self.endpoint.start()

    def submit(self, command, value, token):
        if self.refuse:
            raise ValueError(self.refuse)
        self.submitted.append((command, value))
        if self.apply:
            detail = f"lr 0.1 -> {value}" if command == "lr" else ""
            threading.Timer(self.delay, self.endpoint,
                            [CommandApplied(command, epoch=2, step=17, token=token, detail=detail)]).start()


@pytest.fixture
def stand_in(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    served = StandIn(out)
    yield served
    served.endpoint.close()


def test_each_command_waits_for_done_and_says_where_it_was_applied(stand_in, capsys):
    out = stand_in.endpoint.out_dir
    for command in ("pause", "resume", "checkpoint", "evaluate", "stop"):
        assert main(["ctl", out, command]) == 0
        assert capsys.readouterr().out.strip() == f"{command}: applied at epoch 2 step 17"
    assert main(["ctl", out, "lr", "1e-3"]) == 0
    assert capsys.readouterr().out.strip() == "lr 0.001: applied at epoch 2 step 17 (lr 0.1 -> 0.001)"
    assert stand_in.submitted == [("pause", None), ("resume", None), ("checkpoint", None), ("evaluate", None),
                                  ("stop", None), ("lr", 0.001)]


def test_a_refusal_exits_2_and_a_timeout_or_an_ended_run_exits_1(stand_in, capsys):
    out = stand_in.endpoint.out_dir
    stand_in.refuse = "cannot evaluate: no validation set"
    assert main(["ctl", out, "evaluate"]) == 2
    one_error_line(capsys.readouterr().err, "refused", "no validation set")

    stand_in.refuse, stand_in.apply = None, False  # accepted, never applied
    t = time.monotonic()
    assert main(["ctl", out, "checkpoint", "--timeout", "0.3"]) == 1
    assert time.monotonic() - t < 5
    one_error_line(capsys.readouterr().err, "not applied within --timeout 0.3s")

    stand_in.endpoint(RunFinished("completed", epoch=3, step=30, best_acc1=1.0, best_acc5=2.0, seconds=1.0))
    assert main(["ctl", out, "pause"]) == 1
    # The endpoint closes itself once the RunFinished is out: before that "the run has ended",
    # after it "no live run at OUT (it has finished, ...)".
    err = capsys.readouterr().err
    one_error_line(err)
    assert "ended" in err or "finished" in err, err


def test_the_run_ending_before_the_command_is_applied_exits_1(stand_in, capsys):
    stand_in.apply = False
    threading.Timer(0.3, stand_in.endpoint.close, ["stopped"]).start()
    assert main(["ctl", stand_in.endpoint.out_dir, "pause"]) == 1
    one_error_line(capsys.readouterr().err, "ended", "pause")


def test_status_is_one_json_object_from_the_hello(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    recs = [
        {"event": "started", "config": {"epochs": 5, "lr": 0.1}, "steps_per_epoch": 10, "start_epoch": 0,
         "start_step": 0, "elapsed_s": 0.0},
        {"event": "train", "epoch": 1, "step": 9, "steps_per_epoch": 10, "lr": 0.1, "img_per_s": 123.5,
         "elapsed_s": 4.0},
        {"event": "eval", "epoch": 1, "step": 10, "acc1": 30.0, "best_acc1": 30.0, "best_acc5": 70.0},
        {"event": "checkpoint", "path": str(out / "checkpoints" / "last.pt"), "epoch": 1, "step": 10},
        {"event": "lr_set", "epoch": 2, "step": 12, "old": 0.1, "new": 0.02},
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    endpoint = ControlEndpoint(str(out), RunHistory(str(out)), lambda *a: None, telemetry_interval=60)
    endpoint.start()
    try:
        assert main(["ctl", str(out), "status"]) == 0
        text = capsys.readouterr().out
    finally:
        endpoint.close()
    assert len(text.strip().splitlines()) == 1
    status = json.loads(text)
    assert status == {"pid": os.getpid(), "state": "starting", "epoch": 2, "step": 12, "steps_per_epoch": 10,
                      "epochs": 5, "lr": 0.02, "img_per_s": 123.5, "best_acc1": 30.0, "best_acc5": 70.0,
                      "elapsed_s": 4.0, "last_checkpoint": str(out / "checkpoints" / "last.pt"),
                      "out_dir": str(out), "clients": 1}


def test_status_of_a_hello_without_history():
    s = status_of({"type": "hello", "pid": 7, "state": "starting", "config": None, "history": [], "clients": 2})
    assert s["pid"] == 7 and s["step"] is None and s["clients"] == 2


# --- a real run ------------------------------------------------------------------------------------

def ctl(tmp_path, out, *args, timeout=60):
    return wvtui_cli(tmp_path, "ctl", str(out), *args, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ctl_drives_a_live_headless_run_each_command_at_the_next_step(synthetic_root, tmp_path):
    from core.checkpoint import load_checkpoint
    from core.runinfo import run_info

    out = tmp_path / "run"
    run = Live(tmp_path, "--root", synthetic_root, "--num-classes", "4", "--epochs", "3", "--steps-per-epoch", "400",
               "--val-batches", "1", "--no-tb", "--no-samples", "--out", str(out), "--headless", *QUICK)
    try:
        wait_until(lambda: run_info(str(out)).state == "live", 120, what="the run serves its socket")
        wait_until(lambda: records(out, "train"), 60)

        p = ctl(tmp_path, out, "pause")
        assert p.returncode == 0, p.stderr
        paused = [r for r in records(out, "command") if r["command"] == "pause"]
        assert len(paused) == 1 and p.stdout.strip().startswith(f"pause: applied at epoch {paused[0]['epoch']} "
                                                                f"step {paused[0]['step']}")
        assert [r for r in records(out, "state") if r["state"] == "paused"][-1]["step"] == paused[0]["step"]

        p = ctl(tmp_path, out, "status")
        assert p.returncode == 0, p.stderr
        status = json.loads(p.stdout)
        assert status["state"] == "paused" and status["pid"] == run.proc.pid and status["epochs"] == 3
        assert status["step"] == paused[0]["step"] and status["out_dir"] == str(out)

        # While paused: checkpoint, evaluate and lr are applied at once, at the same step.
        step = paused[0]["step"]
        for args in (["checkpoint"], ["evaluate"], ["lr", "0.0125"]):
            p = ctl(tmp_path, out, *args)
            assert p.returncode == 0, (args, p.stderr)
            assert f"step {step}" in p.stdout, p.stdout
        assert [(r["command"], r["step"]) for r in records(out, "command")] == [
            ("pause", step), ("checkpoint", step), ("evaluate", step), ("lr", step)]
        manual = [r for r in records(out, "checkpoint") if r["reason"] == "manual"]
        assert len(manual) == 1 and manual[0]["step"] == step
        assert load_checkpoint(manual[0]["path"])["step"] == step
        assert [r["step"] for r in records(out, "eval") if r["manual"]] == [step]
        lr_set = records(out, "lr_set")
        assert len(lr_set) == 1 and lr_set[0]["new"] == 0.0125 and lr_set[0]["old"] == pytest.approx(0.05)

        p = ctl(tmp_path, out, "resume")
        assert p.returncode == 0, p.stderr
        later = wait_until(lambda: [r for r in records(out, "train") if r["step"] > step], 60)
        assert all(math.isclose(r["lr"], 0.0125) for r in later)

        p = ctl(tmp_path, out, "stop")
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith("stop: applied at epoch ")
        code, err = run.finish(120)
        assert code == 0, err
        finished = records(out, "finished")
        assert finished[-1]["reason"] == "stopped"
        last = load_checkpoint(str(out / "checkpoints" / "last.pt"))
        assert last["step"] == finished[-1]["step"] > step

        # The run has ended: nothing serves it any more.
        p = ctl(tmp_path, out, "pause")
        assert p.returncode == 1 and "no live run" in p.stderr
        listed = json.loads(wvtui_cli(tmp_path, "ls", str(tmp_path), "--json").stdout)
        assert [(d["out_dir"], d["state"], d["step"]) for d in listed] == [(str(out), "stopped", last["step"])]
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(30)
