"""`wvtui ls` and core.runinfo: which runs are live, how the others ended, where each got to.

Run directories are written as a run writes them (metrics.jsonl records, OUT/control/endpoint.json);
"live" is a real socket that accepts. The slow test lists real runs: one live, one finished,
one stopped, one killed with SIGKILL mid-training (crashed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from core.runinfo import list_runs, run_info
from wvtui.cli import main
from helpers import wait_until
from wvtui_process import QUICK, Live, records, wvtui_cli


def write_run(out, *recs, config=True):
    os.makedirs(out, exist_ok=True)
    if config:
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({"epochs": 3}, f)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    return str(out)


def started(t, **kw):
    return {"event": "started", "time": t, "start_epoch": 0, "start_step": 0, **kw}


def train(epoch, step, t=0.0):
    return {"event": "train", "epoch": epoch, "step": step, "loss": 1.0, "lr": 0.1, "time": t}


def evaluation(epoch, step, best):
    return {"event": "eval", "epoch": epoch, "step": step, "acc1": best, "best_acc1": best, "best_acc5": 90.0,
            "per_class_acc1": [0.5] * 1000}


def finished(reason, epoch, step):
    return {"event": "finished", "reason": reason, "epoch": epoch, "step": step, "best_acc1": 12.5, "best_acc5": 50.0}


class FakeServer:
    """A socket that accepts, named by OUT/control/endpoint.json as a run's endpoint names it."""

    def __init__(self, out, pid=None):
        self.dir = os.path.join(out, "control")
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, "wvtui.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        with open(os.path.join(self.dir, "endpoint.json"), "w") as f:
            json.dump({"protocol": 1, "pid": pid or os.getpid(), "socket": self.path, "host": socket.gethostname(),
                       "started": time.time()}, f)

    def close(self):
        self.sock.close()


# --- run_info ------------------------------------------------------------------------------------

def test_how_a_run_ended_comes_from_its_last_segment(tmp_path):
    t0 = 1_700_000_000.0
    done = write_run(tmp_path / "done", started(t0), train(1, 5), evaluation(1, 10, 40.0), finished("completed", 2, 20))
    assert run_info(done) == run_info(done)  # no side effects
    info = run_info(done)
    assert (info.state, info.pid, info.epoch, info.step, info.best_acc1, info.started) == (
        "finished", None, 2, 20, 12.5, t0)
    stopped = write_run(tmp_path / "stopped", started(t0), train(1, 5), finished("stopped", 1, 6))
    assert run_info(stopped).state == "stopped"
    for reason in ("error", "nonfinite"):
        assert run_info(write_run(tmp_path / reason, started(t0), finished(reason, 1, 3))).state == "failed"
    # Resumed after a stop, then killed: the earlier segment's "finished" says nothing about now.
    crashed = write_run(tmp_path / "crashed", started(t0), train(1, 5), evaluation(1, 8, 33.0), finished("stopped", 1, 8),
                        started(t0 + 100), train(2, 12), train(2, 14))
    info = run_info(crashed)
    assert (info.state, info.epoch, info.step, info.best_acc1, info.started) == ("crashed", 2, 14, 12.5, t0)
    assert run_info(write_run(tmp_path / "new")).state == "new"


def test_a_torn_last_line_and_a_config_without_metrics(tmp_path):
    out = write_run(tmp_path / "torn", started(1.0), train(1, 3))
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write('{"event": "finished", "reason": "comp')  # killed mid-write
    info = run_info(out)
    assert (info.state, info.step) == ("crashed", 3)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    info = run_info(str(bare))
    assert info.state == "new" and info.started == pytest.approx(os.stat(bare / "config.json").st_mtime)


def test_a_long_run_is_read_from_its_end(tmp_path):
    # 60k lines: the last records are found without parsing the file (and reading it is fast).
    out = tmp_path / "long"
    out.mkdir()
    line = json.dumps(train(1, 1)) + "\n"
    with open(out / "metrics.jsonl", "w") as f:
        f.write(json.dumps(started(5.0)) + "\n" + json.dumps(evaluation(1, 1, 7.0)) + "\n")
        f.write(line * 60_000)
        f.write(json.dumps(train(80, 60_001)) + "\n")
    t = time.perf_counter()
    info = run_info(str(out))
    elapsed = time.perf_counter() - t
    assert (info.state, info.epoch, info.step, info.best_acc1, info.started) == ("crashed", 80, 60_001, 7.0, 5.0)
    assert elapsed < 1.0


def test_live_is_a_socket_that_accepts_and_a_pid_that_is_alive(tmp_path):
    out = write_run(tmp_path / "live", started(1.0), train(1, 2))
    server = FakeServer(out)
    try:
        info = run_info(out)
        assert (info.state, info.pid, info.step) == ("live", os.getpid(), 2)
    finally:
        server.close()
    # The process died without removing its files: the socket file is there, nobody accepts.
    assert os.path.exists(server.path)
    assert run_info(out).state == "crashed" and run_info(out).pid is None

    # A socket that accepts but an endpoint.json naming a pid that is gone (reused path): not live.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out2 = write_run(tmp_path / "gone", started(1.0), finished("completed", 1, 2))
    server = FakeServer(out2, pid=gone.pid)
    try:
        assert run_info(out2).state == "finished"
    finally:
        server.close()


def test_list_runs_newest_first_and_only_run_dirs(tmp_path):
    write_run(tmp_path / "b", started(2.0), finished("completed", 1, 1))
    write_run(tmp_path / "a", started(3.0), finished("stopped", 1, 1))
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert [os.path.basename(r.out_dir) for r in list_runs(str(tmp_path))] == ["a", "b"]
    assert list_runs(str(tmp_path / "missing")) == []


# --- wvtui ls --------------------------------------------------------------------------------------

def test_ls_table_and_json(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    write_run(runs / "r1", started(1_700_000_000.0), evaluation(1, 4, 55.25), finished("completed", 1, 4))
    live = write_run(runs / "r2", started(1_700_000_100.0), train(2, 9))
    server = FakeServer(live)
    try:
        assert main(["ls", str(runs)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].split() == ["STATE", "PID", "EPOCH", "STEP", "BEST@1", "STARTED", "RUN"]
        assert out[1].split()[:5] == ["live", str(os.getpid()), "2", "9", "-"] and out[1].endswith(live)
        assert out[2].split()[:5] == ["finished", "-", "1", "4", "12.50"]
        assert main(["ls", str(runs), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert [(d["state"], d["pid"], d["step"]) for d in data] == [("live", os.getpid(), 9), ("finished", None, 4)]
    finally:
        server.close()
    # Without DIR: ./runs. A run directory itself: that run.
    monkeypatch.chdir(tmp_path)
    assert main(["ls"]) == 0
    assert "r1" in capsys.readouterr().out
    assert main(["ls", "runs/r1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("finished") and out[1].endswith("runs/r1")


def test_ls_without_runs_and_with_a_bad_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["ls"]) == 0  # no ./runs at all
    assert capsys.readouterr().out.strip() == "no runs under runs"
    (tmp_path / "empty").mkdir()
    assert main(["ls", "empty"]) == 0
    assert capsys.readouterr().out.strip() == "no runs under empty"
    assert main(["ls", "empty", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    (tmp_path / "afile").write_text("x")
    for bad in ("afile", "missing"):
        assert main(["ls", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("wvtui: error: ") and bad in err[0]


# --- real runs -------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ls_tells_live_finished_and_crashed_runs_apart(synthetic_root, tmp_path):
    # (A run stopped through its socket is listed "stopped": test_ctl's live run ends so.)
    runs = tmp_path / "runs"
    base = ["--root", synthetic_root, "--num-classes", "4", "--val-batches", "1", "--no-tb", "--no-samples",
            "--headless", *QUICK]
    # At once, to share the start-up time: one that finishes, one killed with SIGKILL mid-training.
    short = Live(tmp_path, *base, "--epochs", "1", "--steps-per-epoch", "2", "--out", str(runs / "finished"))
    long = Live(tmp_path, *base, "--epochs", "50", "--steps-per-epoch", "1000", "--out", str(runs / "killed"))
    try:
        wait_until(lambda: run_info(str(runs / "killed")).state == "live" and records(runs / "killed", "train"), 120)
        code, err = short.finish(120)
        assert code == 0, err

        def ls():
            proc = wvtui_cli(tmp_path, "ls", str(runs), "--json")
            assert proc.returncode == 0, proc.stderr
            return {os.path.basename(d["out_dir"]): d for d in json.loads(proc.stdout)}

        listed = ls()
        assert listed["finished"]["state"] == "finished" and listed["finished"]["step"] == 2
        assert listed["finished"]["epoch"] == 1 and listed["finished"]["best_acc1"] is not None
        assert listed["killed"]["state"] == "live" and listed["killed"]["pid"] == long.proc.pid
        assert listed["killed"]["step"] >= 1

        long.proc.kill()
        long.proc.wait(30)
        listed = ls()
        assert listed["killed"]["state"] == "crashed" and listed["killed"]["pid"] is None
        assert listed["finished"]["state"] == "finished"
    finally:
        for p in (short, long):
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(30)
