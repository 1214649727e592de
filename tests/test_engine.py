"""The trainer's story: it learns, it obeys commands within one step, it resumes exactly."""

from __future__ import annotations

import json
import os
import threading

import psutil
import pytest

from core.checkpoint import REQUIRED_KEYS, load_checkpoint
from core.events import (
    CheckpointSaved,
    Command,
    EpochEnd,
    EvalResult,
    RunFinished,
    RunStarted,
    RunState,
    StateChanged,
    StepStats,
)
from core.runlog import read_metrics
from helpers import (
    STEPS_PER_EPOCH,
    Recorder,
    assert_same_weights,
    config,
    entered,
    make_trainer,
    running,
    one_torch_thread,  # noqa: F401 - module fixture
    root,  # noqa: F401 - fixture
    weights,
)


# Every test here trains a model (seconds each on a shared CPU).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(root, tmp_path_factory):
    """An uninterrupted two-epoch run: the yardstick for every interrupted one."""
    out = str(tmp_path_factory.mktemp("reference"))
    rec = Recorder()
    finished = make_trainer(config(root, out), rec).run()
    return out, rec, finished


def final_weights(out: str):
    return weights(os.path.join(out, "checkpoints", "last.pt"))


def test_two_epochs_learn_the_synthetic_classes(reference):
    out, rec, finished = reference
    assert finished.reason == "completed" and finished.step == 2 * STEPS_PER_EPOCH
    evals = rec.of(EvalResult)
    assert [e.epoch for e in evals] == [1, 2] and not any(e.manual for e in evals)
    # Chance is 20% with five classes.
    assert evals[-1].acc1 >= 60.0, evals
    assert finished.best_acc1 == max(e.acc1 for e in evals)
    assert len(evals[-1].per_class_acc1) == 5
    assert evals[-1].images == 50
    assert isinstance(rec.events[0], RunStarted)
    first_state = rec.of(StateChanged)[0]
    assert (first_state.previous, first_state.state) == (RunState.STARTING, RunState.RUNNING)
    assert_one_event_per_state_change(rec)
    assert isinstance(rec.events[-1], RunFinished)
    started = rec.of(RunStarted)[0]
    assert started.steps_per_epoch == STEPS_PER_EPOCH and started.total_steps == 30 and started.amp == "off"
    stats = rec.of(StepStats)
    assert [s.step for s in stats] == list(range(1, 31))  # report_every=1, no time gate
    assert all(0.0 <= s.data_wait <= 1.0 and s.img_per_s > 0 for s in stats)
    assert stats[0].eta_run_s > stats[-2].eta_run_s
    assert stats[-1].lr == pytest.approx(0.025)  # MultiStepLR(milestones=[1], gamma=0.5)
    assert [e.epoch for e in rec.of(EpochEnd)] == [1, 2]


def test_run_directory_formats(reference):
    out, rec, _ = reference
    cfg = json.loads(open(os.path.join(out, "config.json")).read())
    assert cfg["model"] == "resnet18" and cfg["out"] == out and cfg["milestones"] == [1]
    rows = read_metrics(os.path.join(out, "metrics.jsonl"))
    kinds = {r["event"] for r in rows}
    assert {"train", "eval", "epoch", "checkpoint"} <= kinds
    train = [r for r in rows if r["event"] == "train"]
    assert len(train) == 30 and all({"epoch", "step", "loss", "lr", "img_per_s", "data_wait"} <= r.keys() for r in train)
    evals = [r for r in rows if r["event"] == "eval"]
    assert [(r["epoch"], r["step"], r["manual"]) for r in evals] == [(1, 15, False), (2, 30, False)]
    assert {"loss", "acc1", "acc5", "best_acc1", "best_acc5"} <= evals[0].keys()
    ckpts = [(os.path.basename(r["path"]), r["reason"]) for r in rows if r["event"] == "checkpoint"]
    assert ("last.pt", "epoch") in ckpts and ("best.pt", "best") in ckpts
    # One epoch numbering: an epoch's evaluation, its checkpoint and its end all say the same epoch.
    at_epoch_end = {(r["event"], r["epoch"]) for r in rows if r.get("step") == 15 and r["event"] in ("eval", "epoch")} | {
        ("checkpoint", r["epoch"]) for r in rows if r["event"] == "checkpoint" and r["step"] == 15}
    assert at_epoch_end == {("eval", 1), ("epoch", 1), ("checkpoint", 1)}
    assert train[0]["epoch"] == 1 and train[-1]["epoch"] == 2
    assert all(isinstance(r["time"], float) for r in rows)

    last = load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))
    assert set(REQUIRED_KEYS) <= last.keys()
    assert (last["epoch"], last["step"], last["epoch_step"]) == (2, 30, 0)
    assert last["model_name"] == "resnet18" and last["num_classes"] == 5 and last["world_size"] == 1
    assert last["scaler"] is None and last["config"]["lr"] == 0.05
    assert [h["epoch"] for h in last["history"]] == [1, 2]
    assert last["scheduler"]["last_epoch"] == 2
    best = load_checkpoint(os.path.join(out, "checkpoints", "best.pt"))
    assert best["best_acc1"] == max(h["acc1"] for h in last["history"])


@pytest.mark.parametrize(
    "workers, stop_after, resume",
    [(0, 7, "path"), (0, 22, "auto"), (2, 9, "path"), (0, STEPS_PER_EPOCH, "path")],
    ids=["workers0-epoch0", "workers0-epoch1-auto", "workers2-epoch0", "workers0-last-step-of-epoch"],
)
def test_stopped_and_resumed_run_ends_bit_identical(root, reference, tmp_path, workers, stop_after, resume):
    out = str(tmp_path)
    holder = {}

    def stop_at(ev):
        if isinstance(ev, StepStats) and ev.step == stop_after:
            holder["trainer"].submit(Command.STOP)

    first = Recorder(stop_at)
    trainer = holder["trainer"] = make_trainer(config(root, out, workers=workers), first)
    finished = trainer.run()
    assert finished.reason == "stopped" and finished.step == stop_after
    saved = first.of(CheckpointSaved)[-1]
    assert saved.reason == "stop" and saved.step == stop_after
    ck = load_checkpoint(saved.path)
    assert ck["epoch"] * STEPS_PER_EPOCH + ck["epoch_step"] == stop_after
    if stop_after % STEPS_PER_EPOCH == 0:
        # A stop during an epoch's last step does not wait for that epoch's evaluation.
        assert first.of(EvalResult) == [] and ck["epoch_step"] == STEPS_PER_EPOCH

    second = Recorder()
    path = "auto" if resume == "auto" else saved.path
    resumed = make_trainer(config(root, out, workers=workers, resume=path), second)
    finished = resumed.run()
    assert finished.reason == "completed" and finished.step == 30
    started = second.of(RunStarted)[0]
    assert started.resumed_from == saved.path and started.start_step == stop_after
    assert second.of(StepStats)[0].step == stop_after + 1
    assert_same_weights(final_weights(out), final_weights(reference[0]))
    # A finished run leaves no DataLoader worker processes behind.
    assert psutil.Process().children() == []
    # The resumed run appended to the same log: every step appears exactly once.
    train_steps = [r["step"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["event"] == "train"]
    assert train_steps == list(range(1, 31))


def test_commands_take_effect_within_one_step_and_pause_holds_the_place(root, reference, tmp_path):
    """Pause, evaluate and checkpoint (while paused and while running), resume: same final weights."""
    out = str(tmp_path)
    rec = Recorder()
    trainer = make_trainer(config(root, out), rec)
    with running(trainer, rec):
        rec.wait_for(lambda e: isinstance(e, StepStats) and e.step >= 3)
        submitted_at = trainer.step
        trainer.submit(Command.PAUSE)
        paused = rec.wait_for(entered(RunState.PAUSED))
        assert submitted_at <= paused.step <= submitted_at + 1
        assert trainer.state is RunState.PAUSED

        # Paused: nothing moves, but evaluate and checkpoint still work, at the held place.
        stats_before = len(rec.of(StepStats))
        threading.Event().wait(0.4)  # a window in which nothing may happen: no event to wait for
        assert trainer.step == paused.step and len(rec.of(StepStats)) == stats_before
        trainer.submit(Command.EVALUATE)
        manual = rec.wait_for(lambda e: isinstance(e, EvalResult) and e.manual)
        assert (manual.epoch, manual.step) == (1, paused.step)
        trainer.submit(Command.CHECKPOINT)
        ck = rec.wait_for(lambda e: isinstance(e, CheckpointSaved) and e.reason == "manual")
        assert ck.step == paused.step and load_checkpoint(ck.path)["epoch_step"] == paused.step
        rec.wait_for(lambda e: isinstance(e, StateChanged) and e.state is RunState.PAUSED, after=rec.position(ck))
        assert trainer.step == paused.step

        trainer.submit(Command.RESUME)
        resumed = rec.wait_for(entered(RunState.RUNNING, previous=RunState.PAUSED))
        assert resumed.step == paused.step
        next_stats = rec.wait_for(lambda e: isinstance(e, StepStats) and e.step > paused.step)
        assert next_stats.step == paused.step + 1

        # Running: an evaluation and a checkpoint mid-epoch, each within one step.
        rec.wait_for(lambda e: isinstance(e, StepStats) and e.step >= 18)
        submitted_at = trainer.step
        trainer.submit(Command.EVALUATE)
        mid = rec.wait_for(lambda e: isinstance(e, EvalResult) and e.manual and e.step > paused.step)
        assert submitted_at <= mid.step <= submitted_at + 1 and mid.epoch == 2
        submitted_at = trainer.step
        trainer.submit(Command.CHECKPOINT)
        ck2 = rec.wait_for(lambda e: isinstance(e, CheckpointSaved) and e.reason == "manual" and e.step > paused.step)
        assert submitted_at <= ck2.step <= submitted_at + 1
    assert rec.finished.reason == "completed"
    # The manual evaluations are recorded and the run continued with the same next batch.
    rows = read_metrics(os.path.join(out, "metrics.jsonl"))
    manual_rows = [(r["epoch"], r["step"]) for r in rows if r["event"] == "eval" and r["manual"]]
    assert manual_rows == [(1, paused.step), (2, mid.step)]
    assert [r["step"] for r in rows if r["event"] == "train"] == list(range(1, 31))
    assert_same_weights(final_weights(out), final_weights(reference[0]))
    assert trainer.model.training
    assert_one_event_per_state_change(rec)
    pauses = [(e.previous, e.state) for e in rec.of(StateChanged) if RunState.PAUSED in (e.previous, e.state)]
    assert pauses == [(RunState.RUNNING, RunState.PAUSED), (RunState.PAUSED, RunState.EVALUATING),
                      (RunState.EVALUATING, RunState.PAUSED), (RunState.PAUSED, RunState.CHECKPOINTING),
                      (RunState.CHECKPOINTING, RunState.PAUSED), (RunState.PAUSED, RunState.RUNNING)]


def assert_one_event_per_state_change(rec: Recorder) -> None:
    """Each StateChanged names a real change, and its `previous` is the state the one before it set."""
    changes = rec.of(StateChanged)
    assert all(e.state is not e.previous for e in changes)
    assert all(a.state is b.previous for a, b in zip(changes, changes[1:]))


def test_stop_from_another_thread_checkpoints_within_one_step(root, tmp_path):
    rec = Recorder()
    trainer = make_trainer(config(root, str(tmp_path), epochs=1), rec)
    with running(trainer, rec):
        rec.wait_for(lambda e: isinstance(e, StepStats) and e.step >= 4)
        submitted_at = trainer.step
        trainer.submit(Command.STOP)
    assert rec.finished.reason == "stopped"
    assert submitted_at <= rec.finished.step <= submitted_at + 1
    saved = rec.of(CheckpointSaved)
    assert [s.reason for s in saved] == ["stop"] and saved[0].step == rec.finished.step
    states = [e.state for e in rec.of(StateChanged)]
    assert RunState.STOPPING in states and states[-1] is RunState.FINISHED


def test_stop_without_saving_writes_nothing(root, tmp_path):
    holder = {}
    rec = Recorder(lambda e: isinstance(e, StepStats) and e.step == 3 and holder["t"].submit(Command.STOP_NO_SAVE))
    trainer = holder["t"] = make_trainer(config(root, str(tmp_path), epochs=1), rec)
    finished = trainer.run()
    assert finished.reason == "stopped" and finished.step == 3
    assert rec.of(CheckpointSaved) == []
    assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints", "last.pt"))


def test_pause_waits_without_spinning(root, tmp_path):
    """A paused trainer thread sleeps: its CPU time stays near zero while it waits."""
    rec = Recorder()
    trainer = make_trainer(config(root, str(tmp_path), epochs=1, max_steps_per_epoch=4), rec)
    with running(trainer, rec) as runner:
        rec.wait_for(lambda e: isinstance(e, StepStats) and e.step >= 1)
        trainer.submit(Command.PAUSE)
        rec.wait_for(entered(RunState.PAUSED))
        cpu0 = _thread_cpu_seconds(runner.native_id)
        threading.Event().wait(1.0)
        cpu1 = _thread_cpu_seconds(runner.native_id)
        assert cpu1 - cpu0 < 0.05, f"paused thread used {cpu1 - cpu0:.3f}s of CPU in 1s"
        trainer.submit(Command.RESUME)
    assert rec.finished.reason == "completed"


def _thread_cpu_seconds(native_id: int) -> float:
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def test_a_signal_handler_can_resume_a_trainer_paused_on_the_main_thread(root, tmp_path):
    """A trainer run on the main thread (a script calling trainer.run() directly) shares that thread
    with the signal handlers: a handler that submits while the trainer waits must still wake it.
    (wvtui's own front ends run the trainer in a thread of its own, TrainerRunner.)"""
    import signal
    import time

    holder: dict = {}

    def on_alarm(signum, frame):
        holder["alarm_at"] = time.monotonic()
        holder["t"].submit(Command.RESUME)

    def on_event(e):
        if isinstance(e, StepStats) and e.step == 2:
            holder["t"].submit(Command.PAUSE)
        if entered(RunState.PAUSED)(e):
            signal.setitimer(signal.ITIMER_REAL, 0.3)
        if entered(RunState.RUNNING, previous=RunState.PAUSED)(e):
            holder["resumed_at"] = time.monotonic()

    rec = Recorder(on_event)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        trainer = holder["t"] = make_trainer(config(root, str(tmp_path), epochs=1, max_steps_per_epoch=4), rec)
        finished = trainer.run()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert finished.reason == "completed"
    transitions = [(e.previous, e.state, e.step) for e in rec.of(StateChanged)]
    assert (RunState.RUNNING, RunState.PAUSED, 2) in transitions
    assert (RunState.PAUSED, RunState.RUNNING, 2) in transitions
    assert holder["resumed_at"] - holder["alarm_at"] < 2.0
