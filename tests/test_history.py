"""RunHistory: what a console that attaches in the middle of a run (or after a resume) is shown."""

from __future__ import annotations

import os

from core.events import (CheckpointSaved, ConfigChanged, EpochEnd, EvalResult, NoiseDetails, RunStarted, RunState,
                         StateChanged, StepStats)
from core.history import RunHistory
from core.runlog import RunLog


def started(out: str, start_step: int = 0, lr: float = 0.1) -> RunStarted:
    return RunStarted(config={"lr": lr, "epochs": 3}, summary={}, device="cpu", model="resnet18", num_params=1,
                      steps_per_epoch=10, total_steps=30, start_epoch=start_step // 10, start_step=start_step,
                      out_dir=out)


def step(n: int, loss: float = 1.0) -> StepStats:
    return StepStats(epoch=n // 10 + 1, step=n, epoch_step=n % 10, steps_per_epoch=10, total_steps=30, loss=loss,
                     last_loss=loss, lr=0.1, img_per_s=100.0, data_wait=0.0, eta_epoch_s=1.0, eta_run_s=2.0,
                     elapsed_s=float(n), bad_images=0)


def evaluation(n: int, acc1: float) -> EvalResult:
    return EvalResult(epoch=n // 10, step=n, loss=1.0, acc1=acc1, acc5=90.0, best_acc1=acc1, best_acc5=90.0,
                      manual=False, is_best=True, seconds=1.0, images=40)


def first_segment(out: str) -> None:
    """What an earlier process wrote to OUT/metrics.jsonl: 25 steps, two epochs, a checkpoint at 20."""
    log = RunLog(out, warn=lambda m: None)
    log(started(out))
    log(StateChanged(RunState.RUNNING, 1, 0, RunState.STARTING))
    for n in range(1, 26):
        log(step(n))
        if n in (10, 20):
            log(evaluation(n, acc1=float(n)))
            log(EpochEnd(epoch=n // 10, step=n, seconds=1.0, img_per_s=10.0))
            log(CheckpointSaved(path=f"{out}/checkpoints/last.pt", reason="epoch", epoch=n // 10, step=n, seconds=0.1))
    log.close()


def kinds(records) -> list[tuple[str, int | None]]:
    return [(r["event"], r.get("step")) for r in records]


def test_a_new_run_starts_empty(tmp_path):
    snap = RunHistory(str(tmp_path / "new")).snapshot()
    assert snap["records"] == [] and snap["config"] is None and snap["noise_details"] is None
    assert snap["state"] == "starting"


def test_the_earlier_segments_are_loaded_with_their_times_and_a_torn_line_is_skipped(tmp_path):
    out = str(tmp_path)
    first_segment(out)
    with open(os.path.join(out, "metrics.jsonl"), "ab") as f:
        f.write(b"garbage \xff\n")
        f.write(b'{"event": "train", "step": 26, "lo')  # a crash mid-write
    history = RunHistory(out)
    records = history.snapshot()["records"]
    assert [s for e, s in kinds(records) if e == "train"] == list(range(1, 26))
    assert [r["acc1"] for r in records if r["event"] == "eval"] == [10.0, 20.0]
    assert history.snapshot()["config"] == {"lr": 0.1, "epochs": 3}
    assert history.skipped_lines == 2
    # This process has not started yet, whatever the earlier one's last state was.
    assert history.snapshot()["state"] == "starting"


def test_a_resume_drops_the_steps_it_goes_back_over(tmp_path):
    out = str(tmp_path)
    first_segment(out)  # ended at step 25; its last checkpoint is at step 20
    history = RunHistory(out)
    history(started(out, start_step=20, lr=0.05))
    history(ConfigChanged(epoch=2, step=20, changes={"epochs": [3, 5]}))
    history(StateChanged(RunState.RUNNING, 3, 20, RunState.STARTING))
    history(step(21, loss=0.5))
    snap = history.snapshot()
    trains = [r for r in snap["records"] if r["event"] == "train"]
    assert [r["step"] for r in trains] == list(range(1, 22))
    assert trains[-1]["loss"] == 0.5  # step 21 of the new segment, not the old one's
    assert "time" in trains[-1]  # live records carry when they came, as the run log's do
    # Everything up to the checkpoint it resumed from stays, with both "started" records.
    assert ("checkpoint", 20) in kinds(snap["records"]) and ("eval", 20) in kinds(snap["records"])
    assert [r["start_step"] for r in snap["records"] if r["event"] == "started"] == [0, 20]
    assert snap["config"] == {"lr": 0.05, "epochs": 5}
    assert snap["state"] == "running"


def test_noise_details_are_kept_though_not_logged_and_step_ticks_count_as_seen(tmp_path):
    history = RunHistory(str(tmp_path))
    for epoch in (1, 2):
        history(NoiseDetails(epoch=epoch, histogram=(1, 2), classes=(), queries=(), worst=()))
    snap = history.snapshot()
    assert snap["noise_details"]["epoch"] == 2 and snap["noise_details"]["histogram"] == [1, 2]
    assert snap["records"] == [] and snap["seen"] == 2


def test_memory_stays_bounded_keeping_every_evaluation_and_the_newest_steps_exact(tmp_path):
    history = RunHistory(str(tmp_path), max_train=400)
    for n in range(1, 3001):
        history(step(n))
        if n % 100 == 0:
            history(evaluation(n, acc1=n / 100))
    records = history.snapshot()["records"]
    trains = [r["step"] for r in records if r["event"] == "train"]
    assert len(trains) <= 400
    assert trains[0] == 1 and trains[-100:] == list(range(2901, 3001))  # the chart's right end: every step
    gaps = {b - a for a, b in zip(trains, trains[1:])}
    assert max(gaps) <= 32  # thinned evenly, not cut off
    assert [r["step"] for r in records if r["event"] == "eval"] == list(range(100, 3001, 100))
    assert trains == sorted(trains)


def test_a_new_run_in_an_old_directory_shows_only_its_own_history(tmp_path):
    out = str(tmp_path)
    first_segment(out)
    history = RunHistory(out)
    assert history.snapshot()["records"]  # until this run says it starts afresh
    history(started(out, start_step=0, lr=0.2))
    assert kinds(history.snapshot()["records"]) == [("started", None)]
    assert history.snapshot()["config"]["lr"] == 0.2
