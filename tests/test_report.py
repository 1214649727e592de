"""`wvtui report`: run directories written as the run log writes them, read back as tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from core.events import EpochEnd, EvalResult, RunFinished, RunStarted, StepStats
from wvtui.report import main

SPE = 10
BASE = {"root": "/data/webvision", "model": "inception_resnet_v2", "image_size": 299,
        "batch_size": 128, "lr": 0.1, "epochs": 3, "milestones": [30, 60], "seed": 0,
        "workers": 8, "num_classes": 50}


def started(config, start_step=0, start_epoch=0, **kw):
    return RunStarted(config=config, summary={}, device="cpu", model=config["model"], num_params=1,
                      steps_per_epoch=SPE, total_steps=3 * SPE, start_epoch=start_epoch,
                      start_step=start_step, out_dir="out", **kw)


def train(s, elapsed):
    return StepStats(epoch=(s - 1) // SPE, step=s, epoch_step=(s - 1) % SPE + 1, steps_per_epoch=SPE,
                     total_steps=3 * SPE, loss=1.0, last_loss=1.0, lr=0.1, img_per_s=50.0,
                     data_wait=0.1, eta_epoch_s=1.0, eta_run_s=1.0, elapsed_s=elapsed, bad_images=0)


def evaluation(epoch, acc1, acc5, imagenet=None):
    extra = {} if imagenet is None else dict(imagenet_loss=1.0, imagenet_acc1=imagenet[0],
                                             imagenet_acc5=imagenet[1], imagenet_images=100)
    return EvalResult(epoch=epoch, step=(epoch + 1) * SPE, loss=1.0, acc1=acc1, acc5=acc5,
                      best_acc1=acc1, best_acc5=acc5, manual=False, is_best=False, seconds=1.0,
                      images=100, **extra)


def epoch_end(epoch, img_per_s):
    return EpochEnd(epoch=epoch, step=(epoch + 1) * SPE, seconds=10.0, img_per_s=img_per_s)


def write_run(out, config, events, tail="", one_based=False):
    """The helpers' events are numbered as an older wvtui wrote them (epochs from 0, no "time");
    one_based: as the run log writes them now (epochs from 1, each line with its "time")."""
    os.makedirs(out)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for ev in events:
            record = ev.to_record()
            if one_based:
                if record["event"] in ("train", "eval", "epoch"):
                    record["epoch"] += 1
                record["time"] = 1.7e9
            f.write(json.dumps(record) + "\n")
        f.write(tail)
    return out


def finished_run(out, one_based=False):
    """Three epochs over two processes: the first got to step 20, its checkpoint was at step 10."""
    return write_run(out, BASE, one_based=one_based, events=[
        started(BASE),
        train(10, 100.0), evaluation(0, 40.0, 70.0, imagenet=(35.0, 65.0)), epoch_end(0, 200.0),
        train(20, 200.0), evaluation(1, 90.0, 99.0, imagenet=(88.0, 98.0)), epoch_end(1, 999.0),
        started(BASE, start_step=10, start_epoch=1),
        train(20, 90.0), evaluation(1, 55.0, 80.0, imagenet=(50.0, 75.0)), epoch_end(1, 220.0),
        train(30, 180.0), evaluation(2, 52.0, 81.0, imagenet=(51.0, 74.0)), epoch_end(2, 240.0),
        RunFinished(reason="completed", epoch=3, step=30, best_acc1=55.0, best_acc5=81.0, seconds=200.0),
    ])


def live_run(out, one_based=False):
    config = {**BASE, "lr": 0.05, "seed": 1, "workers": 2}
    return write_run(out, config, one_based=one_based, events=[
        started(config), train(10, 60.0), evaluation(0, 30.0, 60.0), epoch_end(0, 300.0), train(15, 90.0),
    ], tail='{"event": "train", "epoch": 1, "ste')  # torn by a crash mid-write


def rows(text):
    """{first cell: other cells} of the first Markdown table in `text`."""
    table = {}
    for line in text.split("\n\n")[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        table[cells[0]] = cells[1:]
    return table


@pytest.mark.parametrize("one_based", [True, False], ids=["written-now", "written-by-an-older-wvtui"])
def test_report_on_two_runs_side_by_side(tmp_path, capsys, one_based):
    a = finished_run(str(tmp_path / "a"), one_based)
    b = live_run(str(tmp_path / "b"), one_based)

    assert main([a, b]) == 0
    out = capsys.readouterr().out
    t = rows(out)
    assert t["run"] == [a, b]
    assert t["status"][0] == "finished"
    assert t["status"][1].startswith("running or unknown (last record")
    assert t["epochs done"] == ["3 / 3", "1 / 3"]
    # The first process's evaluation after the checkpoint it was resumed from (90.0) is not history.
    assert t["WebVision top-1 best"] == ["55.00 (epoch 2)", "30.00 (epoch 1)"]
    assert t["WebVision top-5 best"] == ["81.00 (epoch 3)", "60.00 (epoch 1)"]
    assert t["WebVision top-1 last"] == ["52.00 (epoch 3)", "30.00 (epoch 1)"]
    assert t["ILSVRC12 top-1 best"] == ["51.00 (epoch 3)", "—"]
    assert t["ILSVRC12 top-5 last"] == ["74.00 (epoch 3)", "—"]
    assert t["ILSVRC12 top-1 / top-5 at best WebVision top-1"] == ["50.00 / 75.00", "—"]
    assert t["train images/s"] == ["220", "300"]  # (200 + 220 + 240) / 3
    assert t["wall time"] == ["6:40", "1:30"]  # both processes: 200 s + 200 s
    assert t["model"] == ["inception_resnet_v2"] * 2
    assert t["lr"] == ["**0.1**", "**0.05**"]
    assert t["seed"] == ["**0**", "**1**"]
    assert t["milestones"] == ["30 60", "30 60"]
    assert "workers" not in t and "root" not in t  # not recipe / not different
    assert "| DivideMix | 77.32 | 91.64 | 75.20 | 90.84 |" in out
    assert "227-px" in out and "ICLR 2020" in out


def test_wall_time_of_a_resumed_run_whose_elapsed_goes_on_from_the_earlier_segment(tmp_path, capsys):
    crashed = write_run(str(tmp_path / "crashed"), BASE, one_based=True, events=[
        started(BASE), train(10, 100.0),
        RunFinished(reason="stopped", epoch=1, step=10, best_acc1=0.0, best_acc5=0.0, seconds=100.0),
        started(BASE, start_step=10, start_epoch=1, elapsed_s=100.0), train(20, 250.0),  # then it crashed
    ])
    assert main([crashed]) == 0
    assert rows(capsys.readouterr().out)["wall time"] == ["4:10"]  # 100 s + 150 s, not 100 s + 250 s


def test_report_on_a_failed_run_and_a_recorded_pid(tmp_path, capsys):
    failed = write_run(str(tmp_path / "failed"), BASE, [
        started(BASE), train(5, 10.0),
        RunFinished(reason="error", epoch=0, step=5, best_acc1=0.0, best_acc5=0.0, seconds=12.0),
    ])
    assert main([failed]) == 0
    t = rows(capsys.readouterr().out)
    assert t["status"] == ["failed (error)"]
    assert t["epochs done"] == ["0 / 3"] and t["WebVision top-1 best"] == ["—"]
    assert t["wall time"] == ["0:12"] and t["lr"] == ["0.1"]  # one run: nothing to highlight

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    for name, pid, says in [("alive", os.getpid(), f"running (pid {os.getpid()})"),
                            ("gone", int(gone.stdout), "ended without a finish record")]:
        out = str(tmp_path / name)
        os.makedirs(out)
        with open(os.path.join(out, "metrics.jsonl"), "w") as f:
            f.write(json.dumps({**started(BASE).to_record(), "pid": pid}) + "\n")
        assert main([out]) == 0
        assert rows(capsys.readouterr().out)["status"][0].startswith(says)


@pytest.mark.parametrize("make, says", [
    (lambda p: None, "does not exist"),
    (lambda p: os.makedirs(p), "is not a run directory (no config.json or metrics.jsonl)"),
    (lambda p: open(p, "w").close(), "is not a directory"),
])
def test_a_bad_run_dir_is_one_line_and_exit_2(tmp_path, capsys, make, says):
    good = finished_run(str(tmp_path / "good"))
    bad = str(tmp_path / "bad")
    make(bad)
    assert main([good, bad]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"wvtui: error: {bad} {says}\n"


def test_no_run_dir_is_a_usage_error(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wvtui: error:") and err.count("\n") == 1
