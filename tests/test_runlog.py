"""The run log: config.json and metrics.jsonl as DESIGN.md section 2 describes them."""

from __future__ import annotations

import json

from core.events import (
    CheckpointSaved,
    EpochEnd,
    EvalResult,
    Paused,
    RunError,
    RunFinished,
    RunStarted,
    RunWarning,
    StepStats,
)
from core.runlog import RunLog, read_metrics


def started(out: str) -> RunStarted:
    return RunStarted(config={"root": "/data", "lr": 0.1, "milestones": [30, 60]}, summary={}, device="cpu",
                      model="resnet18", num_params=10, steps_per_epoch=5, total_steps=10, start_epoch=0,
                      start_step=0, out_dir=out)


def stats(step: int, loss: float = 1.5) -> StepStats:
    return StepStats(epoch=0, step=step, epoch_step=step, steps_per_epoch=5, total_steps=10, loss=loss,
                     last_loss=loss, lr=0.1, img_per_s=100.0, data_wait=0.25, eta_epoch_s=1.0, eta_run_s=2.0,
                     elapsed_s=3.0, bad_images=0)


def test_records_follow_the_design_and_are_flushed_per_line(tmp_path):
    log = RunLog(tmp_path)
    log(started(str(tmp_path)))
    assert json.loads((tmp_path / "config.json").read_text()) == {"root": "/data", "lr": 0.1, "milestones": [30, 60]}
    log(stats(1))
    # Readable before anything is closed: `tail -f` sees each line as it is written.
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["event"] == "train"
    log(Paused(epoch=0, step=1))  # not a metrics row
    log(EvalResult(epoch=0, step=5, loss=0.5, acc1=80.0, acc5=100.0, best_acc1=80.0, best_acc5=100.0,
                   manual=True, is_best=True, seconds=0.1, images=20, per_class_acc1=(75.0, 85.0)))
    log(EpochEnd(epoch=0, step=5, seconds=2.5, img_per_s=40.0))
    log(CheckpointSaved(path="/o/checkpoints/last.pt", reason="epoch", epoch=1, step=5, seconds=0.1))
    log(RunWarning(kind="bad_images", message="1 bad", paths=("/a.jpg",)))
    log(RunError(kind="checkpoint", message="disk full"))
    log(RunFinished(reason="completed", epoch=1, step=5, best_acc1=80.0, best_acc5=100.0, seconds=3.0))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["event"] for r in rows] == ["train", "eval", "epoch", "checkpoint", "warning", "error", "finished"]
    train, ev, epoch, ck = rows[:4]
    assert {"epoch", "step", "loss", "lr", "img_per_s", "data_wait"} <= train.keys()
    assert train["data_wait"] == 0.25 and train["step"] == 1
    assert {"epoch", "step", "loss", "acc1", "acc5", "best_acc1", "best_acc5", "manual"} <= ev.keys()
    assert ev["manual"] is True and ev["per_class_acc1"] == [75.0, 85.0]
    assert epoch["epoch"] == 0 and epoch["seconds"] == 2.5
    assert ck["path"] == "/o/checkpoints/last.pt" and ck["reason"] == "epoch"


def test_non_finite_numbers_stay_valid_json(tmp_path):
    log = RunLog(tmp_path)
    log(stats(1, loss=float("nan")))
    log(stats(2, loss=float("inf")))
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [None, None]


def test_a_resumed_run_appends(tmp_path):
    first = RunLog(tmp_path)
    first(started(str(tmp_path)))
    first(stats(1))
    first(RunFinished(reason="stopped", epoch=0, step=1, best_acc1=0.0, best_acc5=0.0, seconds=1.0))
    second = RunLog(tmp_path)
    second(started(str(tmp_path)))
    second(stats(2))
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["event"] == "train"]
    assert steps == [1, 2]


def test_a_torn_last_line_is_skipped(tmp_path):
    log = RunLog(tmp_path)
    log(stats(1))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"event": "tra')
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]
