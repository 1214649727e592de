"""Events as text: the headless printer's reference lines, and the formatter it shares with the
console's event log (the app side of that sharing is in test_app.py)."""

from __future__ import annotations

import io
import re

import pytest

from core.events import (CheckpointSaved, CommandApplied, ConfigChanged, EpochEnd, EvalResult, LearningRateSet,
                         RunError, RunFinished, RunStarted, RunState, RunWarning, StateChanged, StepStats)
from wvtui.eventtext import describe, duration, plain
from wvtui.headless import HeadlessPrinter


def _step(epoch, step, loss=2.0):
    return StepStats(epoch=epoch, step=step, epoch_step=step % 10, steps_per_epoch=10, total_steps=20, loss=loss,
                     last_loss=loss, lr=0.1, img_per_s=123.4, data_wait=0.25, eta_epoch_s=65, eta_run_s=3725,
                     elapsed_s=1.0, bad_images=0)


def _eval(epoch, step, acc1, manual=False, images=16, images_total=0):
    return EvalResult(epoch=epoch, step=step, loss=1.5, acc1=acc1, acc5=90.0, best_acc1=max(acc1, 40.0),
                      best_acc5=90.0, manual=manual, is_best=acc1 > 40, seconds=1.0, images=images,
                      images_total=images_total)


def lines_of(*events) -> list[str]:
    return [plain(line) for ev in events for line in describe(ev)]


def test_printer_writes_the_reference_lines_in_order():
    out = io.StringIO()
    p = HeadlessPrinter(out, rank=0, progress_interval_s=0)
    p(RunStarted(config={"epochs": 2, "demo": False}, summary={"root": "/d", "num_classes": 4, "train_images": 64,
                 "val_images": 16}, device="cpu", model="resnet18", num_params=11_000_000, steps_per_epoch=10,
                 total_steps=20, start_epoch=0, start_step=0, out_dir="/runs/x"))
    p(StateChanged(state=RunState.RUNNING, epoch=1, step=0, previous=RunState.STARTING))
    p(_step(1, 5, loss=2.25))
    p(StateChanged(state=RunState.PAUSED, epoch=1, step=5, previous=RunState.RUNNING))
    p(StateChanged(state=RunState.RUNNING, epoch=1, step=5, previous=RunState.PAUSED))
    p(_eval(1, 7, 12.5, manual=True))
    p(_eval(1, 10, 50.0))
    # The trainer's order at an epoch end: evaluation, checkpoint, EpochEnd; all say the epoch done.
    p(CheckpointSaved(path="/runs/x/checkpoints/last.pt", reason="epoch", epoch=1, step=10, seconds=0.1))
    p(StateChanged(state=RunState.RUNNING, epoch=1, step=10, previous=RunState.CHECKPOINTING))
    p(EpochEnd(epoch=1, step=10, seconds=12.34, img_per_s=50.0))
    p(_step(2, 15))
    p(RunWarning(kind="bad_images", message="2 unreadable images", paths=("a.jpg", "b.jpg")))
    p(RunError(kind="checkpoint", message="No space left on device"))
    p(RunFinished(reason="completed", epoch=2, step=20, best_acc1=50.0, best_acc5=90.0, seconds=30.0))
    lines = out.getvalue().splitlines()

    def index(pattern):
        hits = [i for i, line in enumerate(lines) if re.fullmatch(pattern, line)]
        assert len(hits) == 1, f"{len(hits)} lines match {pattern!r} in:\n" + "\n".join(lines)
        return hits[0]

    order = [
        index(r"wvtui: resnet18 \(11\.0M params\) on cpu, amp off"),
        index(r"Dataset /d: 4 classes, 64 train / 16 val images"),
        index(r"Run directory /runs/x: 2 epochs x 10 steps = 20 steps"),
        index(r"Epoch\[1\] starting"),
        index(r"Loss: 2\.2500"),
        index(r"Paused at epoch 1, step 5"),
        index(r"Resumed at epoch 1, step 5"),
        index(r"Average Loss: 1\.5000 Acc@1 12\.500 \(Best 40\.000\) Acc@5 90\.000 \[manual, epoch 1 step 7\]"),
        index(r"Average Loss: 1\.5000 Acc@1 50\.000 \(Best 50\.000\) Acc@5 90\.000"),
        index(r"Checkpoint \(epoch\) saved to /runs/x/checkpoints/last\.pt in 0\.10s"),
        index(r"Epoch\[1\] done in 12\.3s"),
        index(r"Epoch\[2\] starting"),
        index(r"Warning \(bad_images\): 2 unreadable images"),
        index(r"  a\.jpg"),
        index(r"Error \(checkpoint\): No space left on device"),
        index(r"Finished \(completed\) at epoch 2, step 20 after 0:30: best Acc@1 50\.000 Acc@5 90\.000"),
    ]
    assert order == sorted(order)
    progress = lines[index(r"\[epoch 1/2 step 5/10 .*")]
    assert progress == ("[epoch 1/2 step 5/10 | run 5/20] 123.4 img/s | data-wait 25% "
                        "| ETA epoch 1:05, run 1:02:05 | lr 0.1")
    # Transitions other than pause and resume (starting, checkpointing -> running) print nothing.
    assert not [line for line in lines if "running" in line.lower()]


def test_one_line_per_pause_and_resume_and_none_for_other_state_changes():
    def change(state, previous):
        return StateChanged(state=state, epoch=2, step=42, previous=previous)

    assert lines_of(change(RunState.PAUSED, RunState.RUNNING)) == ["Paused at epoch 2, step 42"]
    assert lines_of(change(RunState.RUNNING, RunState.PAUSED)) == ["Resumed at epoch 2, step 42"]
    for state, previous in [(RunState.EVALUATING, RunState.RUNNING), (RunState.RUNNING, RunState.EVALUATING),
                            (RunState.STOPPING, RunState.PAUSED), (RunState.RUNNING, None),
                            # a checkpoint taken while paused: no new pause, no resume
                            (RunState.CHECKPOINTING, RunState.PAUSED), (RunState.PAUSED, RunState.CHECKPOINTING)]:
        assert lines_of(change(state, previous)) == [], (state, previous)


def test_an_evaluation_of_fewer_images_than_the_val_set_says_n_of_m():
    assert lines_of(_eval(1, 10, 50.0, images=14, images_total=16)) == [
        "Average Loss: 1.5000 Acc@1 50.000 (Best 50.000) Acc@5 90.000 on 14 of 16 images"]
    assert lines_of(_eval(1, 7, 12.5, manual=True, images=14, images_total=16)) == [
        "Average Loss: 1.5000 Acc@1 12.500 (Best 40.000) Acc@5 90.000 on 14 of 16 images [manual, epoch 1 step 7]"]
    # Every image scored (or an older record without the total): no count in the line.
    for total in (16, 0):
        assert "of" not in lines_of(_eval(0, 10, 50.0, images=16, images_total=total))[0]


def test_a_config_change_names_each_setting_with_old_and_new_value():
    ev = ConfigChanged(epoch=2, step=30, changes={"lr": [0.1, 0.05], "milestones": [[30, 60], [20, 40]]})
    assert lines_of(ev) == ["Settings changed from the checkpoint's: lr 0.1 -> 0.05, milestones [30, 60] -> [20, 40]"]


def test_a_set_learning_rate_and_the_confirmations_that_tell_something():
    assert lines_of(LearningRateSet(epoch=2, step=131, old=0.1, new=0.01)) == [
        "Learning rate set to 0.01 (was 0.1) at epoch 2, step 131"]

    def applied(command, detail):
        return lines_of(CommandApplied(command=command, epoch=2, step=131, token="t", detail=detail))

    assert applied("lr", "refused: the learning rate must be a finite number > 0, got nan") == [
        "Command lr refused: the learning rate must be a finite number > 0, got nan"]
    assert applied("resume", "not paused") == ["Command resume: not paused"]
    assert applied("evaluate", "served by the end-of-epoch evaluation") == [
        "Command evaluate: served by the end-of-epoch evaluation"]
    assert applied("pause", "the run ended before it was applied") == [
        "Command pause: the run ended before it was applied"]
    # Whatever another event already says (the pause, the checkpoint, the evaluation): no second line.
    assert applied("pause", "") == applied("checkpoint", "/runs/x/checkpoints/last.pt") == []
    assert applied("lr", "lr 0.1 -> 0.01") == []


def test_a_warning_lists_five_paths_and_counts_the_rest():
    paths = tuple(f"google/q0001/{i:06d}.jpg" for i in range(7))
    lines = lines_of(RunWarning(kind="bad_images", message="7 unreadable images", paths=paths))
    assert lines == ["Warning (bad_images): 7 unreadable images", *(f"  {p}" for p in paths[:5]), "  ... and 2 more"]
    assert len(lines_of(RunWarning(kind="bad_images", message="5", paths=paths[:5]))) == 6


def test_a_finished_run_whose_checkpoint_failed_says_so():
    ok = RunFinished(reason="stopped", epoch=1, step=7, best_acc1=0.0, best_acc5=0.0, seconds=3725.0)
    assert lines_of(ok) == ["Finished (stopped) at epoch 1, step 7 after 1:02:05: best Acc@1 0.000 Acc@5 0.000"]
    failed = RunFinished(reason="completed", epoch=2, step=20, best_acc1=1.0, best_acc5=2.0, seconds=5.0,
                         checkpoint_failed=True)
    assert lines_of(failed)[0].endswith("; the latest checkpoint could not be written")


@pytest.mark.parametrize("seconds, text", [
    (0, "0:00"), (65, "1:05"), (3599.6, "1:00:00"), (3725, "1:02:05"), (2 * 86400 + 3600, "2d 1:00:00"),
    (None, "--"), (float("nan"), "--"), (float("inf"), "--"), (-1, "--"),
])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_printer_on_other_ranks_prints_only_errors():
    out = io.StringIO()
    p = HeadlessPrinter(out, rank=1)
    p(_step(0, 1))
    p(_eval(0, 1, 10.0))
    p(StateChanged(state=RunState.PAUSED, epoch=0, step=1, previous=RunState.RUNNING))
    p(RunError(kind="exception", message="boom"))
    assert out.getvalue().splitlines() == ["[rank 1] Error (exception): boom"]


def test_printer_survives_a_broken_stream():
    class Broken(io.StringIO):
        writes = 0

        def write(self, s):
            Broken.writes += 1
            raise BrokenPipeError(32, "Broken pipe")

    p = HeadlessPrinter(Broken(), rank=0)
    p(_step(0, 1))  # must not raise into the trainer
    p(_eval(0, 1, 10.0))
    assert Broken.writes == 1, "a broken stream was written to again"


def test_a_command_is_confirmed_by_its_command_applied_alone():
    from core.events import Command
    from wvtui.pending import FEEDBACK, confirms

    done = CommandApplied(command="checkpoint", epoch=1, step=5, token="7", detail="/runs/x/checkpoints/last.pt")
    assert confirms(Command.CHECKPOINT, done) and confirms(Command.CHECKPOINT, done, token="7")
    assert not confirms(Command.CHECKPOINT, done, token="8")  # another client's checkpoint
    assert not confirms(Command.EVALUATE, done)
    # The events a command causes are not its confirmation (a pause of the non-finite policy, say).
    assert not confirms(Command.PAUSE, StateChanged(state=RunState.PAUSED, epoch=1, step=5, previous=RunState.RUNNING))
    assert set(FEEDBACK) == set(Command) - {Command.NONFINITE_STOPS}
