"""The run log: config.json and metrics.jsonl write what the events say, and survive a full disk,
a crash mid-write and a resume."""

from __future__ import annotations

import json
import os
import stat
import time

from core.events import (
    CheckpointSaved,
    ConfigChanged,
    EpochEnd,
    EvalResult,
    RunError,
    RunFinished,
    RunStarted,
    RunState,
    RunWarning,
    StateChanged,
    StepStats,
    event_from_record,
)
from core.runlog import RunLog, read_metrics, repair_torn_tail


def started(out: str, **config) -> RunStarted:
    return RunStarted(config={"root": "/data", "lr": 0.1, "milestones": [30, 60], **config}, summary={},
                      device="cpu", model="resnet18", num_params=10, steps_per_epoch=5, total_steps=10,
                      start_epoch=0, start_step=0, out_dir=out)


def stats(step: int, loss: float = 1.5) -> StepStats:
    return StepStats(epoch=0, step=step, epoch_step=step, steps_per_epoch=5, total_steps=10, loss=loss,
                     last_loss=loss, lr=0.1, img_per_s=100.0, data_wait=0.25, eta_epoch_s=1.0, eta_run_s=2.0,
                     elapsed_s=3.0, bad_images=0)


def lines(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def test_each_logged_event_is_one_line_of_its_own_record(tmp_path):
    log = RunLog(tmp_path)
    events = [
        started(str(tmp_path)),
        StateChanged(state=RunState.RUNNING, epoch=0, step=0, previous=RunState.STARTING),
        stats(1),
        StateChanged(state=RunState.PAUSED, epoch=0, step=1, previous=RunState.RUNNING),
        EvalResult(epoch=0, step=5, loss=0.5, acc1=80.0, acc5=100.0, best_acc1=80.0, best_acc5=100.0,
                   manual=True, is_best=True, seconds=0.1, images=19, per_class_acc1=(75.0, 85.0), images_total=20),
        EpochEnd(epoch=0, step=5, seconds=2.5, img_per_s=40.0),
        CheckpointSaved(path="/o/checkpoints/last.pt", reason="epoch", epoch=1, step=5, seconds=0.1),
        RunWarning(kind="bad_images", message="1 bad", paths=("/a.jpg",)),
        RunError(kind="checkpoint", message="disk full"),
        RunFinished(reason="completed", epoch=1, step=5, best_acc1=80.0, best_acc5=100.0, seconds=3.0,
                    checkpoint_failed=True),
    ]
    for i, event in enumerate(events):
        log(event)
        # Readable at once, before anything is closed: `tail -f` sees each line as it is written.
        assert len(lines(tmp_path / "metrics.jsonl")) == i + 1
    before = time.time()
    written = [json.loads(line) for line in lines(tmp_path / "metrics.jsonl")]
    # Each line carries the unix time it was written; readers ignore the key.
    stamps = [r.pop("time") for r in written]
    # Wall-clock time (it may step under NTP): near now, not ordered to the microsecond.
    assert all(isinstance(t, float) and abs(t - before) < 60 for t in stamps)
    assert written == [e.to_record() for e in events]
    assert [event_from_record({**r, "time": t}) for r, t in zip(written, stamps)] == events
    assert [r["event"] for r in written] == ["started", "state", "train", "state", "eval", "epoch", "checkpoint",
                                            "warning", "error", "finished"]
    # DESIGN.md's fields of the main records.
    train, ev = written[2], written[4]
    assert {"epoch", "step", "loss", "lr", "img_per_s", "data_wait"} <= train.keys()
    assert {"epoch", "step", "loss", "acc1", "acc5", "best_acc1", "best_acc5", "manual"} <= ev.keys()
    assert json.loads((tmp_path / "config.json").read_text()) == {"root": "/data", "lr": 0.1, "milestones": [30, 60]}


def test_config_json_follows_a_config_change(tmp_path):
    log = RunLog(tmp_path)
    log(started(str(tmp_path)))
    log(ConfigChanged(epoch=3, step=30, changes={"lr": [0.1, 0.01], "milestones": [[30, 60], [40]]}))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["lr"] == 0.01 and config["milestones"] == [40] and config["root"] == "/data"
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["event"] == "config_change"


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


def test_a_torn_last_line_is_cut_before_a_resumed_run_appends(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = RunLog(tmp_path)
    first(stats(1))
    first(stats(2))
    first.close()
    # A crash inside a write: the process died after part of a record reached the file.
    torn = json.dumps(stats(3).to_record())[:37]
    with open(path, "a") as f:
        f.write(torn)
    warnings: list[str] = []
    second = RunLog(tmp_path, warn=warnings.append)
    second(stats(4))
    text = lines(path)
    assert [json.loads(line)["step"] for line in text] == [1, 2, 4]  # every line is valid JSON
    assert len(warnings) == 1 and "torn line" in warnings[0] and str(path) in warnings[0]


def test_repair_torn_tail_of_a_file_that_is_all_one_torn_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"event": "tr')
    assert repair_torn_tail(path) == 13 and path.read_bytes() == b""
    path.write_bytes(b'{"a": 1}\n')
    assert repair_torn_tail(path) == 0 and path.read_bytes() == b'{"a": 1}\n'
    assert repair_torn_tail(tmp_path / "missing.jsonl") == 0


def test_files_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        log = RunLog(tmp_path / "run")
        log(started(str(tmp_path)))
        log(stats(1))
    finally:
        os.umask(old)
    for name in ("config.json", "metrics.jsonl"):
        assert stat.S_IMODE(os.stat(tmp_path / "run" / name).st_mode) == 0o640, name


def test_an_injected_enospc_gives_one_warning_and_the_run_log_goes_on(tmp_path, monkeypatch, capsys):
    log = RunLog(tmp_path)
    log(stats(1))
    real_write = os.write
    full = {"on": True}

    def write(fd, data):
        if fd == log._fd and full["on"]:
            # As a filling disk does: part of the line lands, then the error.
            real_write(fd, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    for step in range(2, 12):
        log(stats(step))  # never raises into the trainer
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("wvtui: warning: cannot write ") and "No space left on device" in err[0]
    assert log.failed_writes == 10
    full["on"] = False  # space came back
    log(stats(12))
    assert [json.loads(line)["step"] for line in lines(tmp_path / "metrics.jsonl")] == [1, 12]


def test_a_real_full_disk_gives_one_warning_and_every_line_stays_valid(small_disk):
    small_disk = small_disk("64k")
    warnings: list[str] = []
    log = RunLog(small_disk / "run", warn=warnings.append)
    log(started(str(small_disk)))
    filler = small_disk / "filler"
    # Fill the disk to within a few records.
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"x" * 4096) == 4096:
            pass
    except OSError:
        pass
    os.close(fd)
    os.truncate(filler, os.path.getsize(filler) - 3000)
    for step in range(1, 200):
        log(stats(step))
    assert log.failed_writes > 0, "the disk never filled up"
    assert len(warnings) == 1 and "No space left on device" in warnings[0], warnings
    written = [json.loads(line) for line in lines(small_disk / "run" / "metrics.jsonl")]
    steps = [r["step"] for r in written if r["event"] == "train"]
    assert steps == list(range(1, len(steps) + 1))
    os.unlink(filler)
    log(stats(500))
    assert json.loads(lines(small_disk / "run" / "metrics.jsonl")[-1])["step"] == 500
    assert len(warnings) == 1


def test_epoch_of_a_record_is_one_based_whoever_wrote_it():
    from core.runlog import epoch_of

    # Written now (every line has "time"): as it is.
    assert epoch_of({"event": "train", "epoch": 1, "time": 1.0}) == 1
    assert epoch_of({"event": "checkpoint", "reason": "manual", "epoch": 2, "time": 1.0}) == 2
    # Written by an older wvtui (no "time"): counted from 0, except its ends of epochs and runs.
    assert epoch_of({"event": "train", "epoch": 0}) == 1
    assert epoch_of({"event": "eval", "epoch": 1}) == 2
    assert epoch_of({"event": "checkpoint", "reason": "epoch", "epoch": 2}) == 2
    assert epoch_of({"event": "finished", "reason": "completed", "epoch": 3}) == 3
    assert epoch_of({"event": "finished", "reason": "stopped", "epoch": 0}) == 1
    assert epoch_of({"event": "started", "start_epoch": 2}) is None
    assert epoch_of({"event": "train", "epoch": "1"}) is None
