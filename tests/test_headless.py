"""Headless mode: a real `wvtui` process writing its lines and its run directory.

The printer's lines themselves (and the formatter it shares with the console) are in test_eventtext.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from core.checkpoint import load_checkpoint
from wvtui_process import QUICK, read_metrics, run_wvtui

@pytest.fixture(scope="module")
def finished_run(synthetic_root, tmp_path_factory):
    """A complete 2-epoch run without --headless: stdout is a pipe, so headless is chosen."""
    tmp = tmp_path_factory.mktemp("finished")
    out = str(tmp / "run")
    proc = run_wvtui(tmp, "--root", synthetic_root, "--num-classes", "4", "--epochs", "2", "--out", out, *QUICK)
    return proc, out, tmp


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_headless_run_prints_reference_lines_and_writes_the_run_dir(finished_run):
    proc, out, _ = finished_run
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for pattern in (r"Epoch\[1\] starting", r"Epoch\[2\] starting", r"Loss: \d+\.\d{4}",
                    r"Average Loss: \d+\.\d+ Acc@1 \d+\.\d+ \(Best \d+\.\d+\) Acc@5 \d+\.\d+",
                    r"Epoch\[1\] done in \d+\.\ds", r"Epoch\[2\] done in \d+\.\ds",
                    r"\[epoch 1/2 step \d+/8 \| run \d+/16\] .* img/s \| data-wait \d+% \| ETA .*",
                    r"Checkpoint \(\w+\) saved to .*last\.pt.*", r"Finished \(completed\).*"):
        assert any(re.fullmatch(pattern, line) for line in lines), f"{pattern!r} not in:\n{proc.stdout}"
    assert sum(line.startswith("Average Loss:") for line in lines) == 2
    assert "Traceback" not in proc.stderr
    # No console escape codes: headless was chosen because stdout is not a terminal.
    assert "\x1b[" not in proc.stdout

    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["model"] == "resnet18" and config["epochs"] == 2 and config["demo"] is False
    records = read_metrics(out)
    kinds = {r["event"] for r in records}
    assert {"train", "eval", "epoch", "checkpoint"} <= kinds
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [1, 2]
    state = load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))
    assert state["step"] == 16


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_auto_continues_the_step_count(finished_run):
    proc, out, tmp = finished_run
    assert proc.returncode == 0, proc.stderr
    run = str(tmp / "resumed")
    shutil.copytree(out, run)
    again = run_wvtui(tmp, "--root", _root_of(out), "--num-classes", "4", "--epochs", "3", "--out", run,
                      "--resume", "auto", "--headless", *QUICK)
    assert again.returncode == 0, again.stderr
    assert re.search(r"Resumed from .*checkpoints/\w+\.pt at epoch 3, step 16", again.stdout), again.stdout
    assert "Epoch[1] starting" not in again.stdout and "Epoch[3] starting" in again.stdout
    steps = [r["step"] for r in read_metrics(run)[len(read_metrics(out)):] if r["event"] == "train"]
    assert steps and min(steps) > 16 and max(steps) == 24
    assert load_checkpoint(os.path.join(run, "checkpoints", "last.pt"))["step"] == 24


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_with_another_lr_records_the_lr_in_effect(finished_run):
    proc, out, tmp = finished_run
    assert proc.returncode == 0, proc.stderr
    run = str(tmp / "new-lr")
    shutil.copytree(out, run)
    again = run_wvtui(tmp, "--root", _root_of(out), "--num-classes", "4", "--epochs", "3", "--out", run,
                      "--resume", "auto", "--headless", *QUICK, "--lr", "0.01")
    assert again.returncode == 0, again.stderr
    with open(os.path.join(run, "config.json")) as f:
        assert json.load(f)["lr"] == 0.01
    assert load_checkpoint(os.path.join(run, "checkpoints", "last.pt"))["config"]["lr"] == 0.01
    changes = [r for r in read_metrics(run) if r["event"] == "config_change"]
    assert changes and changes[-1]["changes"]["lr"] == [0.05, 0.01]


def _root_of(out) -> str:
    with open(os.path.join(out, "config.json")) as f:
        return json.load(f)["root"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_non_finite_loss_stops_a_headless_run_with_exit_1(synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    proc = run_wvtui(tmp_path, "--root", synthetic_root, "--num-classes", "4", "--epochs", "3", "--out", out,
                     "--headless", *QUICK, "--lr", "1e12")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"^Error \(nonfinite\): .*Lower --lr", proc.stdout, re.M), proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("Finished (nonfinite)")
    assert "not a finite number" in proc.stderr.splitlines()[-1], proc.stderr
    assert not os.path.exists(os.path.join(out, "checkpoints", "best.pt"))
