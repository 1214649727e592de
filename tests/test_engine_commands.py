"""Every command is confirmed once it took effect (CommandApplied), set-lr, one evaluation at an
epoch's end, and the run's elapsed time across segments."""

from __future__ import annotations

import math
import os

import pytest

from core.checkpoint import load_checkpoint
from core.events import (CheckpointSaved, Command, CommandApplied, EvalResult, Event, LearningRateSet, RunFinished,
                         RunStarted, RunState, StateChanged, StepStats)
from core.runlog import read_metrics
from helpers import (Recorder, config, make_trainer, one_torch_thread,  # noqa: F401 - module fixture
                     root)  # noqa: F401 - fixture

# Every test here trains a model (seconds each on a shared CPU).
pytestmark = pytest.mark.slow

QUICK = dict(max_val_batches=1, tensorboard=False, record_samples=False)


def scripted(holder: dict, script: dict) -> Recorder:
    """A recorder that submits script[(event class, step)] = [(command, value, token), ...] on the
    trainer's own thread when that event comes: each lands at a known step boundary."""

    def on_event(e: Event) -> None:
        for c, value, token in script.pop((type(e), getattr(e, "step", None)), []):
            holder["t"].submit(c, value=value, token=token)

    return Recorder(on_event)


def position(rec: Recorder, predicate) -> int:
    return next(i for i, e in enumerate(rec.events) if predicate(e))


def applied(rec: Recorder, token: str) -> tuple[int, CommandApplied]:
    (i, ev), = [(i, e) for i, e in enumerate(rec.events) if isinstance(e, CommandApplied) and e.token == token]
    return i, ev


def test_every_command_is_confirmed_once_after_it_took_effect(root, tmp_path):
    holder: dict = {}
    rec = scripted(holder, {
        (StepStats, 1): [(Command.RESUME, None, "r1"), (Command.PAUSE, None, "p1"), (Command.PAUSE, None, "p2"),
                         (Command.EVALUATE, None, "e1"), (Command.CHECKPOINT, None, "c1"),
                         (Command.RESUME, None, "r2")],
        (StepStats, 3): [(Command.STOP, None, "s1"), (Command.CHECKPOINT, None, "c2")],
    })
    trainer = holder["t"] = make_trainer(config(root, str(tmp_path), epochs=1, max_steps_per_epoch=6, **QUICK), rec)
    finished = trainer.run()
    assert finished.reason == "stopped" and finished.step == 3
    confirmations = [(e.token, e.command, e.step, e.epoch) for e in rec.of(CommandApplied)]
    assert confirmations == [("r1", "resume", 1, 1), ("p1", "pause", 1, 1), ("p2", "pause", 1, 1),
                             ("e1", "evaluate", 1, 1), ("c1", "checkpoint", 1, 1), ("r2", "resume", 1, 1),
                             ("s1", "stop", 3, 1), ("c2", "checkpoint", 3, 1)]
    # Each after what it asked for, with what happened in `detail`.
    i, ev = applied(rec, "r1")
    assert ev.detail == "not paused" and i < position(rec, lambda e: isinstance(e, StateChanged)
                                                      and e.state is RunState.PAUSED)
    i, _ = applied(rec, "p1")
    assert i > position(rec, lambda e: isinstance(e, StateChanged) and e.state is RunState.PAUSED)
    assert applied(rec, "p2")[1].detail == "already paused"
    assert applied(rec, "e1")[0] > position(rec, lambda e: isinstance(e, EvalResult) and e.manual)
    i, ev = applied(rec, "c1")
    (manual,) = [e for e in rec.of(CheckpointSaved) if e.reason == "manual"]
    assert i > rec.position(manual) and ev.detail == manual.path
    assert applied(rec, "r2")[0] > position(rec, lambda e: isinstance(e, StateChanged) and e.state is RunState.RUNNING
                                            and e.previous is RunState.PAUSED)
    i, ev = applied(rec, "s1")
    (stop,) = [e for e in rec.of(CheckpointSaved) if e.reason == "stop"]
    assert rec.position(stop) < i < rec.position(finished) and ev.detail == stop.path
    # A command still queued when the run ended is answered too: nobody waits forever.
    i, ev = applied(rec, "c2")
    assert ev.detail == "the run ended before it was applied" and i < rec.position(finished)
    logged = [(r["command"], r["token"]) for r in read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
              if r["event"] == "command"]
    assert logged == [(e.command, e.token) for e in rec.of(CommandApplied)]


def test_set_lr_applies_at_the_next_step_and_a_checkpoint_and_a_resume_keep_it(root, tmp_path):
    out = str(tmp_path)
    holder: dict = {}
    rec = scripted(holder, {
        (StepStats, 2): [(Command.SET_LR, 0.02, "lr"), (Command.SET_LR, float("nan"), "nan"),
                         (Command.SET_LR, 0.0, "zero"), (Command.SET_LR, -1.0, "negative"),
                         (Command.SET_LR, None, "none")],
        (StepStats, 3): [(Command.CHECKPOINT, None, "c"), (Command.STOP_NO_SAVE, None, "s")],
    })
    # lr 0.05, halved at the end of epoch 1; 4 steps an epoch.
    cfg = dict(epochs=2, max_steps_per_epoch=4, **QUICK)
    trainer = holder["t"] = make_trainer(config(root, out, **cfg), rec)
    first = trainer.run()
    assert first.reason == "stopped"
    (lr_set,) = rec.of(LearningRateSet)
    assert (lr_set.epoch, lr_set.step, lr_set.old, lr_set.new) == (1, 2, 0.05, 0.02)
    assert applied(rec, "lr")[0] > rec.position(lr_set)
    for token in ("nan", "zero", "negative", "none"):
        assert applied(rec, token)[1].detail.startswith("refused: the learning rate must be a finite number > 0")
    assert [(e.step, e.lr) for e in rec.of(StepStats)] == [(1, 0.05), (2, 0.05), (3, 0.02)]
    saved = load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))
    assert [g["lr"] for g in saved["optimizer"]["param_groups"]] == [0.02]
    assert applied(rec, "s")[1].detail == "without a checkpoint"

    # Resumed with the same flags: the set lr stays, and MultiStepLR halves it at the milestone.
    again = Recorder()
    resumed = make_trainer(config(root, out, resume="auto", **cfg), again)
    resumed.prepare()
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [0.02]
    assert resumed.run().reason == "completed"
    assert [(e.epoch, e.lr) for e in again.of(StepStats)] == [(1, 0.02), (2, 0.01), (2, 0.01), (2, 0.01), (2, 0.01)]

    # The elapsed time goes on from the earlier segment's.
    (started,) = again.of(RunStarted)
    assert started.elapsed_s == saved["elapsed_s"] > 0
    assert all(e.elapsed_s > started.elapsed_s for e in again.of(StepStats))
    assert first.seconds >= saved["elapsed_s"] - 1e-6


def test_evaluate_in_an_epochs_last_steps_is_served_by_its_own_evaluation(root, tmp_path):
    holder: dict = {}
    rec = scripted(holder, {
        (StepStats, 2): [(Command.EVALUATE, None, "mid")],  # 4 steps left: evaluated at once
        (StepStats, 5): [(Command.EVALUATE, None, "last-step")],  # 1 step left: the epoch's evaluation
        (StepStats, 6): [(Command.EVALUATE, None, "at-end")],  # the epoch's end boundary
        (EvalResult, 6): [(Command.EVALUATE, None, "during-eval")],  # pressed while it evaluates
        (EvalResult, 12): [(Command.PAUSE, None, "too-late")],  # no step boundary left in the run
    })
    trainer = holder["t"] = make_trainer(config(root, str(tmp_path), epochs=2, max_steps_per_epoch=6, **QUICK), rec)
    finished = trainer.run()
    assert finished.reason == "completed"
    # One evaluation per step: the epoch's own serves every request of its last steps.
    assert [(e.step, e.manual) for e in rec.of(EvalResult)] == [(2, True), (6, False), (12, False)]
    epoch_eval = [e for e in rec.of(EvalResult) if not e.manual][0]
    assert applied(rec, "mid")[1].detail == ""
    for token in ("last-step", "at-end", "during-eval"):
        i, ev = applied(rec, token)
        assert i > rec.position(epoch_eval) and ev.detail == "served by the end-of-epoch evaluation"
        assert (ev.epoch, ev.step) == (1, 6)
    i, ev = applied(rec, "too-late")
    assert ev.detail == "the run ended before it was applied" and i < rec.position(finished)
    assert rec.events[-1] is finished and isinstance(finished, RunFinished)


def test_epoch_numbers_are_one_based_and_an_epochs_evaluation_and_checkpoint_agree(root, tmp_path):
    rec = Recorder()
    trainer = make_trainer(config(root, str(tmp_path), epochs=2, max_steps_per_epoch=3, **QUICK), rec)
    assert trainer.run().reason == "completed"
    assert [(e.epoch, e.epoch_step) for e in rec.of(StepStats)] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert [(e.epoch, e.step) for e in rec.of(EvalResult)] == [(1, 3), (2, 6)]
    assert [(e.epoch, e.step) for e in rec.of(CheckpointSaved) if e.reason == "epoch"] == [(1, 3), (2, 6)]
    assert rec.of(StateChanged)[0].epoch == 1 and rec.of(RunFinished)[0].epoch == 2
    assert math.isfinite(rec.of(StepStats)[-1].elapsed_s)
