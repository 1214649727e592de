"""Faults during training: each is reported clearly and never costs the last good checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal

import pytest

from core.checkpoint import CheckpointError, load_checkpoint
from core.events import (
    CheckpointSaved,
    Command,
    EvalResult,
    RunError,
    RunFinished,
    RunState,
    RunWarning,
    StateChanged,
    StepStats,
)
from core.runlog import read_metrics
from helpers import Recorder, config, entered, faulty, make_trainer
from helpers import one_torch_thread, root  # noqa: F401 - fixtures

# Every test here trains a model (seconds each on a shared CPU).
pytestmark = pytest.mark.slow

STEPS = 5  # steps per epoch in these tests (max_steps_per_epoch)


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Snapshots(Recorder):
    """Records events and the bytes' digest of each checkpoint at the moment it was saved."""

    def __init__(self, on_event=None) -> None:
        super().__init__(on_event)
        self.digests: dict[str, str] = {}

    def __call__(self, event) -> None:
        if isinstance(event, CheckpointSaved):
            self.digests[os.path.basename(event.path)] = digest(event.path)
        super().__call__(event)


def test_non_finite_loss_pauses_and_never_becomes_best(root, tmp_path):
    holder = {}
    # The model turns the loss into NaN from the third step of the second epoch on; every
    # automatic pause is answered with RESUME so the run reaches its end-of-epoch evaluation.
    rec = Snapshots(lambda e: entered(RunState.PAUSED)(e) and holder["t"].submit(Command.RESUME))
    cfg = config(root, str(tmp_path), epochs=2, max_steps_per_epoch=STEPS, nonfinite_patience=2)
    trainer = holder["t"] = make_trainer(cfg, rec, model_factory=faulty(STEPS + 3, "nan"))
    finished = trainer.run()
    # The loss is still not finite at the run's last report: it never ends "completed".
    assert finished.reason == "nonfinite"
    assert [e.kind for e in rec.of(RunError)] == ["nonfinite"] and "latest" in rec.of(RunError)[0].message
    warnings = [w for w in rec.of(RunWarning) if w.kind == "nonfinite"]
    assert warnings and "not finite" in warnings[0].message
    first_nan = STEPS + 3
    pauses = [e for e in rec.of(StateChanged) if entered(RunState.PAUSED)(e)]
    assert pauses[0].step == first_nan + 1  # two non-finite reports in a row
    evals = rec.of(EvalResult)
    assert evals[0].is_best and not evals[1].is_best
    assert finished.best_acc1 == evals[0].acc1
    # Neither best.pt nor last.pt was overwritten by the non-finite model.
    assert [w for w in rec.of(RunWarning) if w.kind == "checkpoint" and "non-finite" in w.message]
    for name in ("best.pt", "last.pt"):
        path = os.path.join(cfg.out, "checkpoints", name)
        assert digest(path) == rec.digests[name]
        assert load_checkpoint(path)["step"] == STEPS
    # metrics.jsonl stays valid JSON with the NaN losses as null.
    losses = [r["loss"] for r in read_metrics(os.path.join(cfg.out, "metrics.jsonl")) if r["event"] == "train"]
    assert losses[first_nan - 1] is None and all(x is not None for x in losses[: first_nan - 1])


def test_non_finite_loss_in_headless_mode_stops_with_a_clear_error(root, tmp_path):
    rec = Snapshots()
    cfg = config(root, str(tmp_path), epochs=2, max_steps_per_epoch=STEPS, nonfinite_patience=3)
    trainer = make_trainer(cfg, rec, nonfinite_action="stop", model_factory=faulty(STEPS + 2, "nan"))
    finished = trainer.run()
    assert finished.reason == "nonfinite" and finished.step == STEPS + 4
    errors = rec.of(RunError)
    assert [e.kind for e in errors] == ["nonfinite"] and "--lr" in errors[0].message
    assert [e for e in rec.of(StateChanged) if e.state is RunState.PAUSED] == []
    last = os.path.join(cfg.out, "checkpoints", "last.pt")
    assert digest(last) == rec.digests["last.pt"]


def test_out_of_memory_names_the_batch_size_to_try_and_keeps_the_checkpoint(root, tmp_path):
    rec = Snapshots()
    cfg = config(root, str(tmp_path), epochs=2, max_steps_per_epoch=STEPS)
    trainer = make_trainer(cfg, rec, model_factory=faulty(STEPS + 2, "oom"))
    finished = trainer.run()
    assert finished.reason == "error" and finished.step == STEPS + 1
    (error,) = rec.of(RunError)
    assert error.kind == "oom"
    assert "--batch-size 8" in error.message and "batch size 16" in error.message
    assert "--resume auto" in error.message
    assert trainer.state is RunState.ERROR
    last = os.path.join(cfg.out, "checkpoints", "last.pt")
    assert digest(last) == rec.digests["last.pt"] and load_checkpoint(last)["step"] == STEPS


def test_an_unexpected_exception_is_reported_with_its_traceback(root, tmp_path):
    rec = Snapshots()
    cfg = config(root, str(tmp_path), epochs=2, max_steps_per_epoch=STEPS)
    finished = make_trainer(cfg, rec, model_factory=faulty(STEPS + 1, "bug")).run()
    assert finished.reason == "error"
    (error,) = rec.of(RunError)
    assert error.kind == "exception" and "ValueError: shapes do not match" in error.message
    assert ", in forward" in error.traceback and "shapes do not match" in error.traceback
    assert isinstance(rec.events[-1], RunFinished)
    last = os.path.join(cfg.out, "checkpoints", "last.pt")
    assert digest(last) == rec.digests["last.pt"]


def test_a_failing_checkpoint_write_is_reported_and_training_goes_on(root, tmp_path):
    """A real write failure: the file-size limit (RLIMIT_FSIZE) makes the OS refuse the write."""
    limit = 4 * 1024 * 1024  # room for the logs, not for a resnet18 checkpoint (~90 MB)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def limit_after_first_epoch(event):
        if isinstance(event, CheckpointSaved) and event.reason == "epoch":
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

    rec = Snapshots(limit_after_first_epoch)
    cfg = config(root, str(tmp_path), epochs=3, max_steps_per_epoch=3)
    try:
        finished = make_trainer(cfg, rec).run()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert finished.reason == "completed" and finished.step == 9
    assert finished.checkpoint_failed  # the run's latest write failed: its progress is not on disk
    errors = [e for e in rec.of(RunError) if e.kind == "checkpoint"]
    assert len(errors) >= 2  # epochs 1 and 2 could not save last.pt
    assert "training goes on" in errors[0].message and "last.pt" in errors[0].message
    ck = os.path.join(cfg.out, "checkpoints")
    assert digest(os.path.join(ck, "last.pt")) == rec.digests["last.pt"]
    assert load_checkpoint(os.path.join(ck, "last.pt"))["step"] == 3
    assert not [n for n in os.listdir(ck) if n.endswith(".tmp")]
    assert len(rec.of(EvalResult)) == 3


def test_bad_images_are_counted_and_named_once(bad_synthetic_root, tmp_path):
    manifest = json.load(open(os.path.join(bad_synthetic_root, "synthetic.json")))
    bad_train = {b["path"] for b in manifest["bad"] if b["split"] == "train"}
    bad_val = {b["path"] for b in manifest["bad"] if b["split"] == "val"}
    rec = Recorder()
    cfg = config(bad_synthetic_root, str(tmp_path), num_classes=4, epochs=2)
    finished = make_trainer(cfg, rec).run()
    assert finished.reason == "completed"
    warned = [p for w in rec.of(RunWarning) if w.kind == "bad_images" for p in w.paths]
    assert len(warned) == len(bad_train | bad_val)  # each file once, though read every epoch
    for rel in bad_train | bad_val:
        assert any(p.endswith(rel) for p in warned), (rel, warned)
    # Unreadable val images are left out of the evaluation, and the result says "N of M".
    with open(os.path.join(bad_synthetic_root, "info", "val_filelist.txt")) as f:
        val_total = sum(1 for line in f if line.strip())
    assert bad_val and [(e.images, e.images_total) for e in rec.of(EvalResult)] == \
        [(val_total - len(bad_val), val_total)] * 2
    first_epoch = [s for s in rec.of(StepStats) if s.epoch == 1]
    assert first_epoch[-1].bad_images == len(bad_train)
    assert rec.of(StepStats)[-1].bad_images == len(bad_train) + len(bad_val)

    # A resumed run remembers which files it already reported.
    again = Recorder()
    cfg = config(bad_synthetic_root, str(tmp_path), num_classes=4, epochs=3, resume="auto")
    assert make_trainer(cfg, again).run().reason == "completed"
    assert [w for w in again.of(RunWarning) if w.kind == "bad_images"] == []
    assert again.of(StepStats)[-1].bad_images == len(bad_train) + len(bad_val)


@pytest.fixture(scope="module")
def small_checkpoint(root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("small"))
    # --resume auto in an empty run directory starts fresh and says so.
    cfg = config(root, out, epochs=1, max_steps_per_epoch=1, max_val_batches=1, resume="auto")
    rec = Recorder()
    assert make_trainer(cfg, rec).run().reason == "completed"
    assert [w.kind for w in rec.of(RunWarning)] == ["resume"]
    return os.path.join(out, "checkpoints", "last.pt")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(resume="{missing}"), "does not exist"),
        (dict(model="resnet34"), "holds a 'resnet18' model, not 'resnet34'"),
        (dict(num_classes=4), "trained for 5 classes, not 4"),
    ],
    ids=["missing", "other-model", "other-classes"],
)
def test_resume_refuses_what_does_not_fit(root, tmp_path, small_checkpoint, overrides, message):
    overrides = dict(overrides)
    resume = overrides.pop("resume", small_checkpoint).replace("{missing}", str(tmp_path / "nope.pt"))
    cfg = config(root, str(tmp_path), resume=resume, **overrides)
    with pytest.raises(CheckpointError, match=message):
        make_trainer(cfg, Recorder()).prepare()
    # run() reports the same problem as an event instead of raising.
    rec = Recorder()
    finished = make_trainer(cfg, rec).run()
    assert finished.reason == "error"
    assert [e.kind for e in rec.of(RunError)] == ["checkpoint"] and message.split()[0] in rec.of(RunError)[0].message


def test_stop_for_a_signal_names_it_in_the_checkpoint(root, tmp_path):
    holder = {}
    rec = Recorder(lambda e: isinstance(e, StepStats) and e.step == 2
                   and holder["t"].submit(Command.STOP, reason="signal"))
    trainer = holder["t"] = make_trainer(config(root, str(tmp_path), epochs=1, max_steps_per_epoch=STEPS), rec)
    finished = trainer.run()
    assert finished.reason == "stopped"
    assert [(c.reason, c.step) for c in rec.of(CheckpointSaved)] == [("signal", 2)]


def test_after_nonfinite_stops_a_non_finite_loss_stops_instead_of_pausing(root, tmp_path):
    """What the console sends when the terminal hangs up: nobody is left to resume a pause."""
    holder = {}
    rec = Snapshots(lambda e: isinstance(e, StepStats) and e.step == 1 and holder["t"].submit(Command.NONFINITE_STOPS))
    cfg = config(root, str(tmp_path), epochs=1, max_steps_per_epoch=STEPS, nonfinite_patience=2)
    trainer = holder["t"] = make_trainer(cfg, rec, model_factory=faulty(3, "nan"))
    finished = trainer.run()
    assert finished.reason == "nonfinite" and finished.step == 4
    assert [e for e in rec.of(StateChanged) if e.state is RunState.PAUSED] == []
    assert trainer.nonfinite_action == "stop"


def test_a_non_finite_loss_in_the_last_report_never_ends_completed(root, tmp_path):
    rec = Snapshots()
    cfg = config(root, str(tmp_path), epochs=1, max_steps_per_epoch=STEPS, nonfinite_patience=3)
    finished = make_trainer(cfg, rec, model_factory=faulty(STEPS, "nan")).run()  # only the last step
    assert finished.reason == "nonfinite"
    (error,) = rec.of(RunError)
    assert error.kind == "nonfinite" and "latest training loss was not finite" in error.message
    # The non-finite model was never saved, and the message claims no checkpoint that is not there.
    assert not os.path.exists(os.path.join(cfg.out, "checkpoints", "last.pt"))
    assert ".pt" not in error.message and "no checkpoint was written" in error.message
