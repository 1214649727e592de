"""What a run is made of: its device and precision, its data, its model and recipe, its step.

The trainer calls these once, in `prepare()`; the benchmarks call them to build the same parts.
"""

from __future__ import annotations

import gc
import random
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.config import TrainConfig
from core.data import (DevicePrefetcher, ResumableSampler, WebVisionDataset, make_loader, normalize_on_device, train_transform,
                       val_transform)
from core.distributed import DistContext
from core.imagenet_val import load_imagenet_val
from core.model import check_input_size
from core.optim import make_sgd
from core.webvision import WebVisionIndex

__all__ = ["RunData", "RunModel", "StepOutput", "TrainStep", "autocast_for", "build_data", "build_model_parts",
           "load_index", "resolve_amp", "seed_and_tune", "use_device"]

ModelFactory = Callable[[str, int], nn.Module]


def resolve_amp(amp: str, device: torch.device) -> str:
    """The autocast mode a `--amp` value means on `device`; ValueError for one it cannot run."""
    if device.type != "cuda":
        return "off" if amp == "auto" else amp
    # The trainer's device, not the current one; bf16 only where the GPU has it natively
    # (before Ampere it is emulated, and slowly): fp16 with a grad scaler is their fast path.
    native_bf16 = bool(torch.version.hip) or torch.cuda.get_device_capability(device) >= (8, 0)
    if amp == "auto":
        return "bf16" if native_bf16 else "fp16"
    if amp == "bf16" and not native_bf16:
        raise ValueError(f"--amp bf16 is not supported natively by {device} "
                         f"({torch.cuda.get_device_name(device)}); use --amp fp16 or off")
    return amp


def autocast_for(amp: str, device: torch.device) -> AbstractContextManager:
    """The autocast context of a resolved amp mode ("off" is a no-op context)."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def use_device(device: torch.device) -> None:
    """Make `device` current on the calling thread.

    The current CUDA device is per thread: without this, work on a thread (stream contexts,
    `cuda` without an index) opens a context on GPU 0 whatever device the run uses.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)


def load_index(cfg: TrainConfig, index: WebVisionIndex | None) -> WebVisionIndex:
    """The dataset index (loaded unless given); ValueError when its class count is not the config's."""
    if index is None:
        index = WebVisionIndex.load(cfg.root, num_classes=cfg.num_classes, use_flickr=cfg.use_flickr)
    if index.num_classes != cfg.num_classes:
        raise ValueError(f"the dataset index has {index.num_classes} classes but the config asks for {cfg.num_classes}")
    return index


def seed_and_tune(seed: int, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@dataclass
class RunData:
    train_set: WebVisionDataset
    val_set: WebVisionDataset
    train_sampler: ResumableSampler
    train_loader: Any
    val_loader: Any
    steps_per_epoch: int
    # --imagenet-val: the ILSVRC2012 val images of the trained classes, sharded like val.
    imagenet_set: WebVisionDataset | None = None
    imagenet_loader: Any = None
    imagenet_warnings: tuple[str, ...] = ()

    def epoch_batches(self, epoch: int, start_samples: int, device: torch.device, *, steps: int) -> Iterator:
        """`steps` device batches of `epoch` for this rank, from `start_samples` on (a resumed
        epoch); RuntimeError if the loader ends before."""
        self.train_sampler.set_epoch(epoch)
        self.train_sampler.set_start(start_samples)
        # Creating a loader iterator draws a seed from the global RNG; fork it so the training
        # RNG stream does not depend on where a run was interrupted.
        with torch.random.fork_rng(devices=[]):
            loader_iter = iter(self.train_loader)
        batches = iter(DevicePrefetcher(loader_iter, device))
        for done in range(steps):
            try:
                yield next(batches)
            except StopIteration:
                raise RuntimeError(f"the training loader ended after {done} of {steps} remaining steps") from None

    def close(self) -> None:
        """End the loaders' worker processes now, not when the trainer object goes away.

        Persistent workers live as long as their DataLoader's iterator, and a finished trainer
        may stay referenced (UI, tests). DataLoader has no public close(); this drops the
        iterator the way its own __del__ path does.
        """
        for loader in (self.train_loader, self.val_loader, self.imagenet_loader):
            it = getattr(loader, "_iterator", None)
            if it is not None:
                loader._iterator = None
                it._shutdown_workers()


def build_data(cfg: TrainConfig, dist: DistContext, index: WebVisionIndex, device: torch.device) -> RunData:
    """Datasets, this rank's sampler and loaders; ValueError when a batch does not fit the data."""
    train_set = WebVisionDataset(index.train, train_transform(cfg.image_size), seed=cfg.seed, train=True)
    val_set = WebVisionDataset(index.val, val_transform(cfg.image_size), seed=cfg.seed, train=False)
    sampler = ResumableSampler(len(train_set), seed=cfg.seed, shuffle=True, rank=dist.rank,
                               world_size=dist.world_size)
    per_rank = sampler.per_rank
    steps = per_rank // cfg.batch_size
    if steps == 0:
        where = f" per rank ({dist.world_size} ranks)" if dist.world_size > 1 else ""
        raise ValueError(
            f"--batch-size {cfg.batch_size} is larger than the {per_rank} training images{where}; "
            f"use --batch-size {max(1, per_rank)} or less"
        )
    if cfg.max_steps_per_epoch is not None:
        steps = min(steps, max(1, cfg.max_steps_per_epoch))
    pin = device.type == "cuda"
    train_loader = make_loader(train_set, sampler, cfg.batch_size, cfg.workers, pin_memory=pin, drop_last=True)
    # Evaluation shards are disjoint and unpadded so that summed counts are exact.
    val_loader = make_loader(val_set, list(dist.shard(len(val_set))), cfg.batch_size, cfg.workers,
                             pin_memory=pin, drop_last=False)
    data = RunData(train_set, val_set, sampler, train_loader, val_loader, steps)
    if cfg.imagenet_val:
        imagenet = load_imagenet_val(cfg.imagenet_val, index.wnids)  # DatasetError: one line, exit 2
        data.imagenet_set = WebVisionDataset(imagenet.samples, val_transform(cfg.image_size), seed=cfg.seed,
                                             train=False)
        data.imagenet_loader = make_loader(data.imagenet_set, list(dist.shard(len(data.imagenet_set))),
                                           cfg.batch_size, cfg.workers, pin_memory=pin, drop_last=False)
        data.imagenet_warnings = imagenet.warnings
    return data


@dataclass
class RunModel:
    model: nn.Module
    optimizer: torch.optim.SGD
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    scaler: torch.amp.GradScaler | None


def build_model_parts(cfg: TrainConfig, factory: ModelFactory, device: torch.device, amp: str) -> RunModel:
    """The model on `device` (channels_last) and the recipe: SGD, MultiStepLR, a scaler for fp16."""
    model = factory(cfg.model, cfg.num_classes)
    check_input_size(cfg.model, model, cfg.image_size)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = make_sgd(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                         device=device)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return RunModel(model, optimizer, scheduler, scaler)


class StepOutput(NamedTuple):
    """What one step leaves on the device (nothing is read back): the batch's mean loss, and
    each sample's loss and argmax prediction for the per-sample record."""

    loss: torch.Tensor  # 0-d float32
    losses: torch.Tensor  # (batch,) float32
    preds: torch.Tensor  # (batch,) int64


class TrainStep:
    """One optimizer step on a device batch: its StepOutput, detached, on the device (no sync)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                 amp: str, device: torch.device, *, grads_in_buckets: bool = False,
                 eval_model: nn.Module | None = None) -> None:
        self.model = model  # what trains: DDP and/or compiled wrapper of the plain module
        self.eval_model = eval_model if eval_model is not None else model  # never DDP (see DistContext.unwrap)
        self.optimizer = optimizer
        self.scaler = scaler
        self.amp = amp
        self.device = device
        # DDP's gradient buckets are the .grad tensors: zero them in place rather than drop them,
        # or DDP copies every gradient into its bucket again at each step.
        self.set_to_none = not grads_in_buckets

    @classmethod
    def build(cls, parts: RunModel, dist: DistContext, amp: str, device: torch.device, *,
              compile: bool = False) -> TrainStep:
        """The step of a built model: DDP-wrapped under torchrun, compiled on request."""
        train_model, eval_model = dist.wrap(parts.model), parts.model
        if compile:
            train_model, eval_model = torch.compile(train_model), torch.compile(parts.model)
        return cls(train_model, parts.optimizer, parts.scaler, amp, device,
                   grads_in_buckets=dist.grads_are_bucket_views, eval_model=eval_model)

    def release_memory(self) -> None:
        """After an out-of-memory error (outside its handler): drop the gradients, collect, and
        give the allocator's cache back, so the memory is not left reserved."""
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        # Before the forward, so the previous step's gradients are not kept alive through it.
        self.optimizer.zero_grad(set_to_none=self.set_to_none)
        x = normalize_on_device(images, channels_last=True)
        with autocast_for(self.amp, self.device):
            logits = self.model(x)
            if not isinstance(logits, torch.Tensor):  # auxiliary outputs in training: the main logits
                logits = logits[0]
            losses = F.cross_entropy(logits, labels, reduction="none")
            loss = losses.mean()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return StepOutput(loss.detach().float(), losses.detach().float(), logits.detach().argmax(1))
