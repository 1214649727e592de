"""Headless mode: the reference's log lines, and a real `wvtui` process writing its run directory."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from core.checkpoint import load_checkpoint
from core.events import (
    CheckpointSaved,
    EpochEnd,
    EvalResult,
    RunError,
    RunFinished,
    RunStarted,
    RunWarning,
    StateChanged,
    StepStats,
    RunState,
)
from wvtui.headless import HeadlessPrinter, format_duration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--model", "resnet18", "--image-size", "32", "--batch-size", "8", "--workers", "0",
         "--report-every", "1", "--lr", "0.05"]


def cli_env(tmp_path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=REPO, XDG_CACHE_HOME=str(tmp_path / "cache"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def run_wvtui(tmp_path, *args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wvtui", *args], cwd=tmp_path, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def read_metrics(out) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _step(epoch, step, loss=2.0):
    return StepStats(epoch=epoch, step=step, epoch_step=step % 10, steps_per_epoch=10, total_steps=20, loss=loss,
                     last_loss=loss, lr=0.1, img_per_s=123.4, data_wait=0.25, eta_epoch_s=65, eta_run_s=3725,
                     elapsed_s=1.0, bad_images=0)


def _eval(epoch, step, acc1, manual=False):
    return EvalResult(epoch=epoch, step=step, loss=1.5, acc1=acc1, acc5=90.0, best_acc1=max(acc1, 40.0),
                      best_acc5=90.0, manual=manual, is_best=acc1 > 40, seconds=1.0, images=16)


def test_printer_writes_the_reference_lines_in_order():
    out = io.StringIO()
    p = HeadlessPrinter(out, rank=0, progress_interval_s=0)
    p(RunStarted(config={"epochs": 2, "demo": False}, summary={"root": "/d", "num_classes": 4, "train_images": 64,
                 "val_images": 16}, device="cpu", model="resnet18", num_params=11_000_000, steps_per_epoch=10,
                 total_steps=20, start_epoch=0, start_step=0, out_dir="/runs/x"))
    p(StateChanged(state=RunState.RUNNING, epoch=0, step=0))
    p(_step(0, 5, loss=2.25))
    p(_eval(0, 7, 12.5, manual=True))
    p(_eval(0, 10, 50.0))
    # The trainer's order at an epoch end: evaluation, checkpoint (epoch already advanced), EpochEnd.
    p(CheckpointSaved(path="/runs/x/checkpoints/last.pt", reason="epoch", epoch=1, step=10, seconds=0.1))
    p(StateChanged(state=RunState.RUNNING, epoch=1, step=10))
    p(EpochEnd(epoch=0, step=10, seconds=12.34, img_per_s=50.0))
    p(_step(1, 15))
    p(RunWarning(kind="bad_images", message="2 unreadable images", paths=("a.jpg", "b.jpg")))
    p(RunError(kind="checkpoint", message="No space left on device"))
    p(RunFinished(reason="completed", epoch=2, step=20, best_acc1=50.0, best_acc5=90.0, seconds=30.0))
    lines = out.getvalue().splitlines()

    def index(pattern):
        hits = [i for i, line in enumerate(lines) if re.fullmatch(pattern, line)]
        assert hits, f"no line matches {pattern!r} in:\n" + "\n".join(lines)
        return hits[0]

    order = [
        index(r"Epoch\[1\] starting"),
        index(r"Loss: 2\.2500"),
        index(r"Average Loss: 1\.5000 Acc@1 12\.500 \(Best 40\.000\) Acc@5 90\.000 \[manual, epoch 1 step 7\]"),
        index(r"Average Loss: 1\.5000 Acc@1 50\.000 \(Best 50\.000\) Acc@5 90\.000"),
        index(r"Checkpoint \(epoch\) saved to /runs/x/checkpoints/last\.pt.*"),
        index(r"Epoch\[1\] done in 12\.3s"),
        index(r"Epoch\[2\] starting"),
        index(r"Warning \(bad_images\): 2 unreadable images"),
        index(r"Error \(checkpoint\): No space left on device"),
        index(r"Finished \(completed\).*best Acc@1 50\.000.*"),
    ]
    assert order == sorted(order)
    progress = lines[index(r"\[epoch 1/2 step 5/10 .*")]
    assert "123.4 img/s" in progress and "data-wait 25%" in progress
    assert "ETA epoch 0:01:05, run 1:02:05" in progress
    assert sum(line.startswith("Epoch[1] starting") for line in lines) == 1


def test_printer_on_other_ranks_prints_only_errors():
    out = io.StringIO()
    p = HeadlessPrinter(out, rank=1)
    p(_step(0, 1))
    p(_eval(0, 1, 10.0))
    p(RunError(kind="exception", message="boom"))
    assert out.getvalue().splitlines() == ["[rank 1] Error (exception): boom"]


def test_printer_survives_a_broken_stream():
    class Broken(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    p = HeadlessPrinter(Broken(), rank=0)
    p(_step(0, 1))  # must not raise into the trainer
    p(_eval(0, 1, 10.0))


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(float("nan")) == "?"
    assert format_duration(-1) == "?"
    assert format_duration(2 * 86400 + 3600) == "2d01h00m"


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
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [0, 1]
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
    assert not os.path.exists(os.path.join(out, "checkpoints", "best.pt"))
