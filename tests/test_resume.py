"""Resuming: a new recipe applies (and says so), and --resume auto never starts over checkpoints."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from torch import nn

from core.checkpoint import CheckpointError, load_checkpoint
from core.config import TrainConfig
from core.events import Command, ConfigChanged, RunStarted, StepStats
from core.optim import make_sgd
from core.resume import apply_recipe, recipe_changes
from core.runlog import read_metrics
from helpers import Recorder, config, make_trainer
from helpers import one_torch_thread, root  # noqa: F401 - fixtures


def _recipe(lr=0.05, momentum=0.9, weight_decay=5e-4, milestones=(1,), gamma=0.5) -> TrainConfig:
    return TrainConfig(root="unused", lr=lr, momentum=momentum, weight_decay=weight_decay,
                       milestones=milestones, gamma=gamma, workers=0)


def _at_epoch(cfg: TrainConfig, epoch: int):
    model = nn.Linear(3, 2)
    opt = make_sgd(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                   device=torch.device("cpu"))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    for _ in range(epoch):
        opt.step()
        sched.step()
    return model, opt, sched


def test_a_new_recipe_gives_the_lr_it_would_have_at_this_epoch():
    old = _recipe()
    _, opt, sched = _at_epoch(old, 2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    new = _recipe(lr=0.2, momentum=0.8, weight_decay=1e-4, milestones=(3,), gamma=0.1)
    changes = recipe_changes(old.to_dict(), new)
    assert changes == {"lr": [0.05, 0.2], "momentum": [0.9, 0.8], "weight_decay": [5e-4, 1e-4],
                       "milestones": [[1], [3]], "gamma": [0.5, 0.1]}

    _, opt2, sched2 = _at_epoch(old, 0)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    apply_recipe(opt2, sched2, new, changes)
    group = opt2.param_groups[0]
    assert (group["lr"], group["initial_lr"], group["momentum"], group["weight_decay"]) == (0.2, 0.2, 0.8, 1e-4)
    assert sched2.get_last_lr() == [0.2]
    opt2.step()
    sched2.step()  # epoch 3: the new milestone
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.02)


def test_an_unchanged_recipe_changes_nothing():
    cfg = _recipe()
    _, opt, sched = _at_epoch(cfg, 2)
    lr = opt.param_groups[0]["lr"]
    assert recipe_changes(cfg.to_dict(), cfg) == {}
    apply_recipe(opt, sched, cfg, {})
    assert opt.param_groups[0]["lr"] == lr and sched.get_last_lr() == [lr]


@pytest.mark.slow
def test_resuming_with_other_hyperparameters_applies_them_and_records_the_change(root, tmp_path):
    out = str(tmp_path)
    holder = {}
    first = Recorder(lambda e: isinstance(e, StepStats) and e.step == 4 and holder["t"].submit(Command.STOP))
    holder["t"] = make_trainer(config(root, out, epochs=1, max_steps_per_epoch=6, max_val_batches=1), first)
    assert holder["t"].run().reason == "stopped"

    again = Recorder()
    cfg = config(root, out, epochs=1, max_steps_per_epoch=6, max_val_batches=1, resume="auto", lr=0.1,
                 momentum=0.8)
    assert make_trainer(cfg, again).run().reason == "completed"
    (changed,) = again.of(ConfigChanged)
    assert changed.changes == {"lr": [0.05, 0.1], "momentum": [0.9, 0.8]} and changed.step == 4
    assert again.events.index(changed) == again.events.index(again.of(RunStarted)[0]) + 1
    assert [s.lr for s in again.of(StepStats)] == [0.1, 0.1]  # epoch 1: before the milestone
    last = load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))
    assert (last["config"]["lr"], last["config"]["momentum"]) == (0.1, 0.8)
    groups = last["optimizer"]["param_groups"]
    assert all(g["initial_lr"] == 0.1 and g["momentum"] == 0.8 for g in groups)
    records = read_metrics(os.path.join(out, "metrics.jsonl"))
    assert [r["changes"] for r in records if r["event"] == "config_change"] == [changed.changes]


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_resume_auto_over_checkpoints_it_cannot_use_is_an_error_that_names_them(root, tmp_path):
    ckdir = tmp_path / "checkpoints"
    ckdir.mkdir()
    last = ckdir / "last.pt"
    last.write_bytes(b"not a checkpoint at all")
    before = _digest(str(last))
    cfg = config(root, str(tmp_path), resume="auto")
    with pytest.raises(CheckpointError, match="last.pt") as err:
        make_trainer(cfg, Recorder()).prepare()
    assert "best.pt" not in str(err.value)  # no claim about a file that is not there
    assert _digest(str(last)) == before and sorted(os.listdir(ckdir)) == ["last.pt"]
