"""Continuing a run from a checkpoint: where in the epoch it was, and the recipe it now follows.

A resumed run follows the command line it was started with. Hyperparameters that differ from
the checkpoint's are applied (not silently replaced by the saved ones) and reported as
`{name: [old, new]}`, so `config.json` and every later checkpoint describe what is in effect.
"""

from __future__ import annotations

import bisect
import os
import collections
from typing import TYPE_CHECKING, Any

import torch

from core.build import RunModel
from core.checkpoint import FORMAT_VERSION, CheckpointError, find_resumable, load_checkpoint
from core.config import TrainConfig
from core.distributed import DistContext
from core.evaluate import Scores
from core.events import ConfigChanged, Event, RunWarning
from core.rng import capture_rng_state, restore_rng_state

if TYPE_CHECKING:
    from core.engine import Trainer

__all__ = ["RECIPE", "open_checkpoint", "restore_training_state", "training_state", "recipe_changes",
           "apply_recipe", "resume_position", "own_cuda_rng"]

# The settings a resumed run may change; batch size also moves the position in the epoch.
RECIPE = ("lr", "momentum", "weight_decay", "milestones", "gamma", "batch_size")


def open_checkpoint(cfg: TrainConfig, dist: DistContext, out_dir: str) -> tuple[str, dict[str, Any]] | None:
    """The checkpoint `--resume` names, loaded and checked against this run's model, or None.

    `--resume auto` with no checkpoint in OUT starts fresh (job scripts always pass it); with
    checkpoints there that cannot be used it is an error on every rank, never a fresh start
    that would later overwrite them.
    """
    if not cfg.resume:
        return None
    path: str | None = cfg.resume
    if cfg.resume == "auto":
        found: tuple[str | None, str | None] = (None, None)
        if dist.is_main:
            try:
                found = (find_resumable(out_dir), None)
            except CheckpointError as e:
                found = (None, str(e))
        path, error = dist.broadcast_object(found)
        if error is not None:
            raise CheckpointError(error)
        if path is None:
            return None
    state = load_checkpoint(path, map_location="cpu")
    if state["model_name"] != cfg.model:
        raise CheckpointError(f"{path} holds a {state['model_name']!r} model, not {cfg.model!r}: "
                              f"pass --model {state['model_name']} or another checkpoint")
    if state["num_classes"] != cfg.num_classes:
        raise CheckpointError(f"{path} was trained for {state['num_classes']} classes, not {cfg.num_classes}: "
                              f"pass --num-classes {state['num_classes']} or another checkpoint")
    return path, state


def training_state(t: Trainer, cuda_rng: list[torch.Tensor] | None,
                   samples: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint holds: enough to continue exactly from the trainer's step boundary.

    `cuda_rng` is every rank's CUDA generator state, indexed by rank (None on the CPU);
    `samples` the per-sample record of the epoch so far (SampleRecord.state), if any.
    """
    cfg, d = t.config, t.dist
    rng = capture_rng_state(t.device)
    rng["cuda"] = cuda_rng
    return {
        "format_version": FORMAT_VERSION, "model": t.model.state_dict(), "model_name": cfg.model,
        "num_classes": cfg.num_classes, "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict() if t.scaler is not None else None,
        "epoch": t.epoch, "step": t.step,
        "epoch_step": t.epoch_step,  # optimizer steps done in `epoch`
        "samples_in_epoch": t.epoch_step * cfg.batch_size * d.world_size,  # over all ranks
        "batch_size": cfg.batch_size, "world_size": d.world_size, "rng": rng,
        "elapsed_s": t.meter.elapsed(),  # the run's time so far, earlier segments included
        "best_acc1": t.scores.best_acc1, "best_acc5": t.scores.best_acc5, "history": list(t.scores.history),
        # So that a resumed run does not count (and warn about) the same files again.
        **t.bad.state(),
        "config": cfg.to_dict(),  # the recipe in effect: a resumed run applies its own settings
        **({"samples": samples} if samples is not None else {}),
    }


def restore_training_state(t: Trainer, parts: RunModel, path: str, state: dict[str, Any]) -> list[Event]:
    """Put the trainer where the checkpoint left off, on this run's recipe; the events to tell
    (ConfigChanged for settings that differ from the checkpoint's, warnings)."""
    cfg, d = t.config, t.dist
    changes = load_training_state(path, state, parts, cfg, t.device)
    t.epoch, t.step, t.epoch_step = resume_position(state, cfg.batch_size, d.world_size, t.steps_per_epoch)
    t.resume_samples = min(t.epoch_step * cfg.batch_size, t.data.train_sampler.per_rank)
    t.scores = Scores(float(state["best_acc1"]), float(state["best_acc5"]), state["history"])
    t.elapsed_before = float(state.get("elapsed_s", 0.0))  # older checkpoints did not keep it
    t.bad.load(state)
    t.record.restore(state.get("samples"), t.epoch, path)
    rng = dict(state["rng"])
    rng["cuda"], warning = own_cuda_rng(rng.get("cuda"), d.rank, d.world_size)
    restore_rng_state(rng, t.device)
    t.resumed_from = os.path.abspath(path)
    events: list[Event] = [ConfigChanged(epoch=t.epoch_no, step=t.step, changes=changes)] if changes else []
    if warning is not None and t.device.type == "cuda":
        events.append(RunWarning(kind="resume", message=warning))
    return events


def load_training_state(path: str, state: dict[str, Any], parts: RunModel, cfg: TrainConfig,
                        device: torch.device) -> dict[str, list[Any]]:
    """Weights, optimizer, scheduler and scaler from `state`, then this run's recipe; the changes."""
    try:
        parts.model.load_state_dict(state["model"])
        parts.optimizer.load_state_dict(state["optimizer"])
        parts.scheduler.load_state_dict(state["scheduler"])
        if parts.scaler is not None and state["scaler"]:
            parts.scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path} does not fit this model/optimizer: {type(e).__name__}: {first}") from None
    # The checkpoint may come from another device: keep this machine's optimizer kernels.
    fused = True if device.type == "cuda" else None
    for group in parts.optimizer.param_groups:
        group.update(fused=fused, foreach=None)
    changes = recipe_changes(state["config"], cfg)
    apply_recipe(parts.optimizer, parts.scheduler, cfg, changes)
    return changes


def recipe_changes(saved: dict[str, Any], cfg: TrainConfig) -> dict[str, list[Any]]:
    """{name: [checkpoint's value, this run's value]} for every recipe setting that differs."""
    now = cfg.to_dict()
    changes = {}
    for name in RECIPE:
        old = saved.get(name)
        if old is None:
            continue  # a checkpoint that did not record it: nothing to compare with
        if isinstance(old, (list, tuple)):
            old = list(old)
        if old != now[name]:
            changes[name] = [old, now[name]]
    return changes


def apply_recipe(optimizer: torch.optim.Optimizer, scheduler: Any, cfg: TrainConfig,
                 changes: dict[str, list[Any]]) -> None:
    """Make a loaded optimizer and MultiStepLR follow `cfg` from the scheduler's current epoch.

    The lr becomes what the new recipe gives at this epoch (base lr x gamma per milestone
    passed), not the saved lr rescaled. Nothing is touched when no lr setting changed, so an
    unchanged resume stays bit-identical.
    """
    for group in optimizer.param_groups:
        group["momentum"] = cfg.momentum
        group["weight_decay"] = cfg.weight_decay
    if not {"lr", "milestones", "gamma"} & changes.keys():
        return
    scheduler.milestones = collections.Counter(cfg.milestones)
    scheduler.gamma = cfg.gamma
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    passed = bisect.bisect_right(sorted(cfg.milestones), scheduler.last_epoch)
    lr = cfg.lr * cfg.gamma ** passed
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.lr
        group["lr"] = lr
    scheduler._last_lr = [lr for _ in optimizer.param_groups]


def resume_position(state: dict[str, Any], batch_size: int, world_size: int,
                    steps_per_epoch: int) -> tuple[int, int, int]:
    """(epoch, global step, steps done in the epoch) for this run's batch size and rank count."""
    saved_world = state["world_size"]
    samples = int(state.get("samples_in_epoch", state["epoch_step"] * batch_size * saved_world))
    if state.get("batch_size") == batch_size and saved_world == world_size:
        epoch_step = state["epoch_step"]
    else:
        # Another batch size or rank count: continue from the same share of the epoch.
        epoch_step = samples // (batch_size * world_size)
    return state["epoch"], state["step"], min(epoch_step, steps_per_epoch)


def own_cuda_rng(saved: Any, rank: int, world_size: int) -> tuple[torch.Tensor | None, str | None]:
    """This rank's CUDA generator state from a checkpoint's per-rank list, and a warning if none fits.

    Checkpoints hold one state per rank (index = rank). Another rank count cannot be matched
    state for state: each rank then keeps its fresh seeded generator, and the caller says so.
    """
    if saved is None:
        return None, None
    if isinstance(saved, torch.Tensor):
        saved = [saved]
    if len(saved) != world_size:
        return None, (f"the checkpoint holds the CUDA random state of {len(saved)} rank(s), this run has "
                      f"{world_size}: the GPU random streams restart from the seed (results still valid, "
                      "not bit-identical to an uninterrupted run)")
    return saved[rank], None
