"""The training loop: one `Trainer` object driven by the console, headless mode and tests.

    trainer = Trainer(TrainConfig(root="/data/webvision"), sink=print)
    trainer.prepare()            # builds everything; raises CheckpointError/DatasetError/ValueError
    finished = trainer.run()     # blocking; call it in a thread for a UI
    trainer.submit(Command.PAUSE)   # from any thread; applied at the next step boundary

The trainer talks only through events (`core.events`) given to `sink`, and listens only to
commands. Commands are applied between optimizer steps, so the run is always at a well-defined
place when it pauses, evaluates or checkpoints; a checkpoint taken there resumes to bit-identical
weights on CPU. Under torchrun every rank runs this same loop; rank 0 broadcasts the commands at
each step boundary, decides nothing that needs a clock without telling the others, and is the
only rank that writes files or emits events (other ranks emit errors only).
"""

from __future__ import annotations

import collections
import math
import os
import random
import threading
import time
import traceback
import warnings
from contextlib import nullcontext
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    capture_rng_state,
    find_latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from core.config import TrainConfig
from core.data import (
    DevicePrefetcher,
    ResumableSampler,
    WebVisionDataset,
    make_loader,
    normalize_on_device,
    train_transform,
    val_transform,
)
from core.distributed import DistContext
from core.events import (
    CheckpointSaved,
    Command,
    EpochEnd,
    EvalResult,
    Event,
    Paused,
    Resumed,
    RunError,
    RunFinished,
    RunStarted,
    RunState,
    RunWarning,
    Sink,
    StateChanged,
    StepStats,
)
from core.model import build_model, count_parameters
from core.webvision import WebVisionIndex

__all__ = ["Trainer", "NONFINITE_ACTIONS"]

NONFINITE_ACTIONS = ("pause", "stop")

# While paused, the waiting thread wakes this often when it cannot rely on being notified:
# a signal handler that runs on the trainer's own thread between its check and its wait
# notifies nobody, and under torchrun the other ranks wait in a collective for rank 0's
# (possibly empty) command list.
_PAUSE_POLL_S = 0.5

ModelFactory = Callable[[str, int], nn.Module]


class Trainer:
    """Trains `config.model` on WebVision with the reference recipe; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        sink: Sink,
        *,
        index: WebVisionIndex | None = None,
        nonfinite_action: str = "pause",
        dist: DistContext | None = None,
        model_factory: ModelFactory | None = None,
    ) -> None:
        if nonfinite_action not in NONFINITE_ACTIONS:
            raise ValueError(f"nonfinite_action must be one of {NONFINITE_ACTIONS}, got {nonfinite_action!r}")
        self.config = config
        self.sink = sink
        self.index = index
        self.nonfinite_action = nonfinite_action
        self.model_factory = model_factory or build_model
        self._dist_given = dist
        self.dist: DistContext | None = dist
        self.out_dir = os.path.abspath(config.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))
        self.checkpoint_dir = os.path.join(self.out_dir, "checkpoints")

        self.state = RunState.STARTING
        self.epoch = 0  # epoch in progress (0-based)
        self.epoch_step = 0  # optimizer steps done in that epoch
        self.step = 0  # optimizer steps done in the whole run
        self.steps_per_epoch = 0
        self.total_steps = 0
        self.best_acc1 = 0.0
        self.best_acc5 = 0.0
        self.history: list[dict[str, Any]] = []
        self.resumed_from: str | None = None
        self.bad_images = 0
        self._bad_seen: dict[str, set[int]] = {}

        # Commands wait in a deque until the next step boundary; submit() never waits for the loop.
        self._pending: collections.deque[tuple[Command, str | None]] = collections.deque()
        # Reentrant, so a signal handler that interrupts a submit() on the same thread can submit too.
        self._wake = threading.Condition(threading.RLock())
        self._inbox: collections.deque[tuple[Command, str | None]] = collections.deque()
        self._loop_thread: int | None = None
        self._prepared = False

    # ------------------------------------------------------------------ public surface
    def submit(self, command: Command | str, *, reason: str | None = None) -> None:
        """Queue a command for the next step boundary. `reason` names a checkpoint (e.g. "signal")."""
        command = Command(command)
        with self._wake:
            self._pending.append((command, reason))
            self._wake.notify_all()

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.is_main

    def prepare(self) -> None:
        """Build data, model, optimizer; load --resume. Idempotent. Raises on bad input."""
        if self._prepared:
            return
        cfg = self.config
        if self.dist is None:
            self.dist = DistContext.from_env(cfg.device)
        d = self.dist
        self.device = d.device(cfg.device)
        if d.enabled:
            self.out_dir = d.broadcast_object(self.out_dir)
            self.checkpoint_dir = os.path.join(self.out_dir, "checkpoints")
        self.amp = self._resolve_amp(cfg.amp, self.device)

        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        if self.index is None:
            self.index = WebVisionIndex.load(cfg.root, num_classes=cfg.num_classes, use_flickr=cfg.use_flickr)
        if self.index.num_classes != cfg.num_classes:
            raise ValueError(
                f"the dataset index has {self.index.num_classes} classes but the config asks for {cfg.num_classes}"
            )
        self._build_data()
        self._build_model()
        self._resume_if_asked()
        if self.is_main:
            self._remove_stale_temp_files()

        self.train_model: nn.Module = d.wrap(self.model)
        self.eval_model: nn.Module = self.model
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
            self.eval_model = torch.compile(self.model)
        self._prepared = True

    def run(self) -> RunFinished:
        """Train to the end (or a stop); never raises for faults during training."""
        self._loop_thread = threading.get_ident()
        self._t_start = time.perf_counter()
        reason = "error"
        try:
            self.prepare()
        except Exception as e:
            kind = "checkpoint" if isinstance(e, CheckpointError) else "exception"
            self._emit(RunError(kind=kind, message=_one_line(e), traceback=traceback.format_exc()), always=True)
            return self._finish("error")
        try:
            self._emit_started()
            self._set_state(RunState.RUNNING)
            reason = self._train()
        except torch.OutOfMemoryError:
            reason = "error"
            self._emit(RunError(kind="oom", message=self._oom_message(), traceback=traceback.format_exc()),
                       always=True)
            self._release_memory()
        except Exception as e:
            reason = "error"
            message = (self.dist.explain(e) if self.dist is not None else None) or _one_line(e)
            self._emit(RunError(kind="exception", message=message, traceback=traceback.format_exc()), always=True)
        finally:
            self._batches = None
            self._close_loaders()
        finished = self._finish(reason)
        if self._dist_given is None and self.dist is not None:
            self.dist.shutdown(abort=reason == "error")
        return finished

    # ------------------------------------------------------------------ building
    @staticmethod
    def _resolve_amp(amp: str, device: torch.device) -> str:
        if amp == "auto":
            if device.type != "cuda":
                return "off"
            # GPUs before Ampere emulate bf16 slowly; fp16 with a grad scaler is their fast path.
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("--amp bf16 is not supported by this GPU; use --amp fp16 or off")
        return amp

    def _build_data(self) -> None:
        cfg, d, index = self.config, self.dist, self.index
        self.train_set = WebVisionDataset(index.train, train_transform(cfg.image_size), seed=cfg.seed, train=True)
        self.val_set = WebVisionDataset(index.val, val_transform(cfg.image_size), seed=cfg.seed, train=False)
        self.train_sampler = ResumableSampler(
            len(self.train_set), seed=cfg.seed, shuffle=True, rank=d.rank, world_size=d.world_size
        )
        per_rank = self.train_sampler.per_rank
        steps = per_rank // cfg.batch_size
        if steps == 0:
            where = f" per rank ({d.world_size} ranks)" if d.world_size > 1 else ""
            raise ValueError(
                f"--batch-size {cfg.batch_size} is larger than the {per_rank} training images{where}; "
                f"use --batch-size {max(1, per_rank)} or less"
            )
        if cfg.max_steps_per_epoch is not None:
            steps = min(steps, max(1, cfg.max_steps_per_epoch))
        self.steps_per_epoch = steps
        self.total_steps = steps * cfg.epochs
        pin = self.device.type == "cuda"
        self.train_loader = make_loader(self.train_set, self.train_sampler, cfg.batch_size, cfg.workers,
                                        pin_memory=pin, drop_last=True)
        # Evaluation shards are disjoint and unpadded so that summed counts are exact.
        self.val_indices = list(d.shard(len(self.val_set)))
        self.val_loader = make_loader(self.val_set, self.val_indices, cfg.batch_size, cfg.workers,
                                      pin_memory=pin, drop_last=False)

    def _build_model(self) -> None:
        cfg = self.config
        model = self.model_factory(cfg.model, cfg.num_classes)
        min_size = getattr(model, "min_input_size", 0)
        if cfg.image_size < min_size:
            raise ValueError(f"--image-size {cfg.image_size} is too small for {cfg.model}: use {min_size} or more")
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.num_params = count_parameters(self.model)
        if self.device.type == "cuda":
            # One fused kernel per step instead of a launch per parameter tensor.
            self._opt_impl = {"fused": True, "foreach": None}
        else:
            self._opt_impl = {"fused": None, "foreach": None}
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            **self._opt_impl,
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == "fp16" else None
        self._start_samples = 0

    def _resume_if_asked(self) -> None:
        cfg, d = self.config, self.dist
        if not cfg.resume:
            return
        path: str | None = cfg.resume
        if cfg.resume == "auto":
            path = find_latest_checkpoint(self.out_dir) if d.is_main else None
            if d.enabled:
                path = d.broadcast_object(path)
            if path is None:
                return  # nothing to resume yet: "auto" starts fresh, so a job script can always pass it
        state = load_checkpoint(path, map_location="cpu")
        if state["model_name"] != cfg.model:
            raise CheckpointError(
                f"{path} holds a {state['model_name']!r} model, not {cfg.model!r}: "
                f"pass --model {state['model_name']} or another checkpoint"
            )
        if state["num_classes"] != cfg.num_classes:
            raise CheckpointError(
                f"{path} was trained for {state['num_classes']} classes, not {cfg.num_classes}: "
                f"pass --num-classes {state['num_classes']} or another checkpoint"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path} does not fit this model/optimizer: {_one_line(e)}") from None
        # The checkpoint may come from another device: keep this machine's optimizer kernels.
        for group in self.optimizer.param_groups:
            group.update(self._opt_impl)

        batch, world = cfg.batch_size, d.world_size
        samples = int(state.get("samples_in_epoch", state["epoch_step"] * batch * state["world_size"]))
        if state.get("batch_size") == batch and state["world_size"] == world:
            epoch_step = state["epoch_step"]
        else:
            # Another batch size or rank count: continue from the same share of the epoch.
            epoch_step = samples // (batch * world)
        self.epoch = state["epoch"]
        self.step = state["step"]
        self.epoch_step = min(epoch_step, self.steps_per_epoch)
        self._start_samples = min(self.epoch_step * batch, self.train_sampler.per_rank)
        self.best_acc1 = float(state["best_acc1"])
        self.best_acc5 = float(state["best_acc5"])
        self.history = list(state["history"])
        self.bad_images = int(state.get("bad_images", 0))
        self._bad_seen = {split: set(map(int, seen)) for split, seen in state.get("bad_indices", {}).items()}
        restore_rng_state(state["rng"])
        self.resumed_from = os.path.abspath(path)

    def _remove_stale_temp_files(self) -> None:
        # A process killed during a save leaves its temp file behind; the real files are intact.
        if not os.path.isdir(self.checkpoint_dir):
            return
        for name in os.listdir(self.checkpoint_dir):
            if name.startswith(".") and name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(self.checkpoint_dir, name))
                except OSError:
                    pass

    # ------------------------------------------------------------------ events and state
    def _emit(self, event: Event, *, always: bool = False) -> None:
        if not (self.is_main or always):
            return
        try:
            self.sink(event)
        except Exception:
            # A broken front end must not take the run down with it; the run log still records.
            traceback.print_exc()

    def _set_state(self, state: RunState) -> None:
        if state != self.state:
            self.state = state
            self._emit(StateChanged(state=state, epoch=self.epoch, step=self.step))

    def _emit_started(self) -> None:
        cfg = self.config
        resolved = cfg.to_dict()
        resolved.update(out=self.out_dir, device=str(self.device), amp=self.amp)
        summary = self.index.summary().to_dict()
        if self.device.type == "cuda":
            device = f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        else:
            device = "cpu"
        self._emit(RunStarted(
            config=resolved, summary=summary, device=device, model=cfg.model, num_params=self.num_params,
            steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps, start_epoch=self.epoch,
            start_step=self.step, out_dir=self.out_dir, resumed_from=self.resumed_from, amp=self.amp,
            world_size=self.dist.world_size,
        ))
        if cfg.resume == "auto" and self.resumed_from is None:
            self._emit(RunWarning(kind="resume",
                                  message=f"--resume auto: no usable checkpoint in {self.checkpoint_dir}; starting fresh"))

    def _finish(self, reason: str) -> RunFinished:
        self._set_state(RunState.ERROR if reason == "error" else RunState.FINISHED)
        seconds = time.perf_counter() - getattr(self, "_t_start", time.perf_counter())
        ev = RunFinished(reason=reason, epoch=self.epoch, step=self.step, best_acc1=self.best_acc1,
                         best_acc5=self.best_acc5, seconds=seconds)
        self._emit(ev, always=True)
        return ev

    # ------------------------------------------------------------------ the loop
    def _train(self) -> str:
        cfg = self.config
        self._reset_window()
        self._nonfinite_reads = 0
        self._step_time = None  # smoothed seconds per step, for the ETAs
        self._eval_seconds = 0.0
        while self.epoch < cfg.epochs:
            epoch = self.epoch
            t_epoch = time.perf_counter()
            self._epoch_idle = 0.0
            self._epoch_steps = 0
            self.train_sampler.set_epoch(epoch)
            self.train_sampler.set_start(self._start_samples)
            self._start_samples = 0
            # Creating a loader iterator draws a seed from the global RNG; fork it so the training
            # RNG stream does not depend on where a run was interrupted.
            with torch.random.fork_rng(devices=[]):
                loader_iter = iter(self.train_loader)
            self._batches = iter(DevicePrefetcher(loader_iter, self.device))
            self.model.train()
            while self.epoch_step < self.steps_per_epoch:
                outcome = self._boundary()
                if outcome is not None:
                    return outcome
                try:
                    images, labels, bad, wait_s = next(self._batches)
                except StopIteration:
                    raise RuntimeError(
                        f"the training loader ended after {self.epoch_step} of {self.steps_per_epoch} steps"
                    ) from None
                loss = self._train_step(images, labels)
                self._acc_loss += loss
                self._last_loss = loss
                self._win_wait += wait_s
                if bad is not None:
                    self._bad_batches.append(bad)
                self.epoch_step += 1
                self.step += 1
                self._epoch_steps += 1
                self._unread_steps += 1
                if self._unread_steps >= cfg.report_every:
                    outcome = self._read_stats()
                    if outcome is not None:
                        return outcome
            self._batches = None
            if self._unread_steps:
                outcome = self._read_stats()
                if outcome is not None:
                    return outcome
            # A stop that arrived during the epoch's last step must not wait for the evaluation:
            # a preempted job may have only seconds before it is killed.
            outcome = self._boundary()
            if outcome is not None:
                return outcome
            train_seconds = time.perf_counter() - t_epoch - self._epoch_idle
            with warnings.catch_warnings():
                # A run resumed from a stop at an epoch's very end steps the scheduler before this
                # process has stepped the optimizer; the order across the two processes is right.
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before")
                self.scheduler.step()
            self.epoch += 1
            self.epoch_step = 0
            self._evaluate(manual=False, epoch=epoch, step=self.step)
            self._save("last.pt", "epoch")
            images = self._epoch_steps * cfg.batch_size * self.dist.world_size
            self._emit(EpochEnd(epoch=epoch, step=self.step, seconds=time.perf_counter() - t_epoch,
                                img_per_s=images / train_seconds if train_seconds > 0 else 0.0))
            self._reset_window()
        return "completed"

    def _autocast(self):
        if self.amp == "off":
            return nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = normalize_on_device(images, channels_last=True)
        with self._autocast():
            logits = self.train_model(x)
            loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach().float()

    # ------------------------------------------------------------------ step statistics
    def _reset_window(self) -> None:
        self._acc_loss = torch.zeros((), device=self.device)
        self._last_loss = torch.zeros((), device=self.device)
        self._unread_steps = 0
        self._bad_batches: list[torch.Tensor] = []
        self._win_loss = 0.0
        self._win_steps = 0
        self._win_wait = 0.0
        self._win_idle = 0.0
        self._win_t0 = time.perf_counter()

    def _read_stats(self) -> str | None:
        """Bring the device-side loss sums to the host (the only per-window sync) and maybe report.

        Called on every rank after the same number of steps, so the reduction and the non-finite
        decision are identical everywhere; whether to *emit* also depends on rank 0's clock,
        which only affects rank 0's own output.
        """
        cfg, d = self.config, self.dist
        packed = torch.stack([self._acc_loss, self._last_loss])
        d.all_reduce_sum(packed)
        loss_sum, last_loss = (v / d.world_size for v in packed.tolist())
        n = self._unread_steps
        self._acc_loss = torch.zeros((), device=self.device)
        self._unread_steps = 0
        self._win_loss += loss_sum
        self._win_steps += n
        self._collect_bad(self._bad_batches, self.index.train)
        self._bad_batches = []

        if not math.isfinite(loss_sum):
            self._nonfinite_reads += 1
        else:
            self._nonfinite_reads = 0

        now = time.perf_counter()
        active = now - self._win_t0 - self._win_idle
        due = active >= cfg.report_interval_s or self._nonfinite_reads > 0 or self.epoch_step >= self.steps_per_epoch
        if due and self._win_steps:
            step_time = active / self._win_steps
            self._step_time = step_time if self._step_time is None else 0.7 * self._step_time + 0.3 * step_time
            st = self._step_time
            remaining_epochs = cfg.epochs - self.epoch
            eta_epoch = (self.steps_per_epoch - self.epoch_step) * st
            eta_run = (self.total_steps - self.step) * st + remaining_epochs * self._eval_seconds
            self._emit(StepStats(
                epoch=self.epoch, step=self.step, epoch_step=self.epoch_step,
                steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
                loss=self._win_loss / self._win_steps, last_loss=last_loss,
                lr=float(self.optimizer.param_groups[0]["lr"]),
                img_per_s=self._win_steps * cfg.batch_size * d.world_size / active if active > 0 else 0.0,
                data_wait=min(1.0, max(0.0, self._win_wait / active)) if active > 0 else 0.0,
                eta_epoch_s=eta_epoch, eta_run_s=eta_run,
                elapsed_s=now - self._t_start, bad_images=self.bad_images,
            ))
            self._win_loss = 0.0
            self._win_steps = 0
            self._win_wait = 0.0
            self._win_idle = 0.0
            self._win_t0 = now

        if self._nonfinite_reads >= cfg.nonfinite_patience:
            self._nonfinite_reads = 0
            return self._on_nonfinite()
        return None

    def _collect_bad(self, bads: list[torch.Tensor], samples: Any, split: str = "train") -> None:
        if not bads:
            return
        flat = torch.cat([b.reshape(-1) for b in bads])
        found = flat[flat >= 0].unique().tolist()
        if not found:
            return
        seen = self._bad_seen.setdefault(split, set())
        new = [i for i in found if i not in seen]
        if not new:
            return
        seen.update(new)
        self.bad_images += len(new)
        paths = tuple(samples.path(i) for i in new)
        self._emit(RunWarning(
            kind="bad_images",
            message=f"{len(new)} unreadable {split} image(s) replaced by the next readable one "
                    f"({self.bad_images} so far)",
            paths=paths,
        ))

    def _on_nonfinite(self) -> str | None:
        cfg = self.config
        what = f"the training loss was not finite in {cfg.nonfinite_patience} reports in a row " \
               f"(epoch {self.epoch}, step {self.step}, lr {self.optimizer.param_groups[0]['lr']:g})"
        if self.nonfinite_action == "pause":
            self._emit(RunWarning(kind="nonfinite",
                                  message=f"{what}; paused. Lower --lr or resume from the last checkpoint."))
            return self._pause()
        self._emit(RunWarning(kind="nonfinite", message=what))
        self._emit(RunError(kind="nonfinite",
                            message=f"{what}; stopped without saving. Lower --lr, or --resume from the last "
                                    f"good checkpoint in {self.checkpoint_dir}."), always=True)
        return "nonfinite"

    # ------------------------------------------------------------------ commands
    def _fill_inbox(self, wait: bool) -> None:
        """Move pending commands into the inbox; under DDP every rank gets rank 0's list."""
        d = self.dist
        if wait and self.is_main:
            polled = d.enabled or self._loop_thread == threading.main_thread().ident
            with self._wake:
                if not self._pending:
                    self._wake.wait(_PAUSE_POLL_S if polled else None)
        local: list[tuple[Command, str | None]] = []
        while self._pending:
            local.append(self._pending.popleft())
        if d.enabled:
            commands = d.broadcast_commands([c for c, _ in local])
            reasons = {}
            for c, r in local:
                reasons.setdefault(c, r)
            local = [(c, reasons.get(c)) for c in commands]
        self._inbox.extend(local)

    def _boundary(self) -> str | None:
        """Apply the commands that arrived since the last step; a finish reason ends the run."""
        if self.dist.enabled or self._pending:
            self._fill_inbox(wait=False)
        while self._inbox:
            command, reason = self._inbox.popleft()
            outcome = self._apply(command, reason, paused=False)
            if outcome is not None:
                return outcome
        return None

    def _apply(self, command: Command, reason: str | None, *, paused: bool) -> str | None:
        if command is Command.PAUSE:
            return None if paused else self._pause()
        if command is Command.RESUME:
            return None
        # Time spent on these is not training time; while paused, _pause already counts it.
        idle = (lambda fn: fn()) if paused else self._timed_idle
        if command is Command.CHECKPOINT:
            idle(lambda: self._save("last.pt", reason or "manual"))
            return None
        if command is Command.EVALUATE:
            idle(lambda: self._evaluate(manual=True, epoch=self.epoch, step=self.step))
            return None
        if command is Command.STOP:
            self._set_state(RunState.STOPPING)
            # A failed write means the stop did not keep the progress: report it as an error.
            return "error" if self._save("last.pt", reason or "stop") == "failed" else "stopped"
        if command is Command.STOP_NO_SAVE:
            self._set_state(RunState.STOPPING)
            return "stopped"
        raise ValueError(f"unknown command {command!r}")

    def _timed_idle(self, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        fn()
        spent = time.perf_counter() - t0
        self._win_idle += spent
        self._epoch_idle += spent

    def _pause(self) -> str | None:
        """Hold the run at this step boundary until RESUME or a stop; other commands still apply."""
        t0 = time.perf_counter()
        self._set_state(RunState.PAUSED)
        self._emit(Paused(epoch=self.epoch, step=self.step))
        try:
            while True:
                if not self._inbox:
                    self._fill_inbox(wait=True)
                while self._inbox:
                    command, reason = self._inbox.popleft()
                    if command is Command.RESUME:
                        self._set_state(RunState.RUNNING)
                        self._emit(Resumed(epoch=self.epoch, step=self.step))
                        return None
                    outcome = self._apply(command, reason, paused=True)
                    if outcome is not None:
                        return outcome
                    self._set_state(RunState.PAUSED)
        finally:
            spent = time.perf_counter() - t0
            self._win_idle += spent
            self._epoch_idle += spent

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, *, manual: bool, epoch: int, step: int) -> EvalResult:
        cfg, d = self.config, self.dist
        previous = self.state
        self._set_state(RunState.EVALUATING)
        t0 = time.perf_counter()
        d.sync_buffers(self.model)
        model = self.eval_model
        self.model.eval()
        c = cfg.num_classes
        k = min(5, c)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, top-1, top-5
        per_class = torch.zeros(2, c, dtype=torch.int64, device=self.device)  # images, top-1 hits
        bads: list[torch.Tensor] = []
        with torch.random.fork_rng(devices=[]):
            loader_iter = iter(self.val_loader)
        try:
            with torch.inference_mode():
                for i, (images, labels, bad, _) in enumerate(DevicePrefetcher(loader_iter, self.device)):
                    if cfg.max_val_batches is not None and i >= cfg.max_val_batches:
                        break
                    x = normalize_on_device(images, channels_last=True)
                    with self._autocast():
                        logits = model(x)
                    logits = logits.float()
                    sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
                    hits = logits.topk(k, dim=1).indices.eq(labels[:, None])
                    top1 = hits[:, 0]
                    sums[1] += top1.sum()
                    sums[2] += hits.any(dim=1).sum()
                    per_class[0] += torch.bincount(labels, minlength=c)
                    per_class[1] += torch.bincount(labels[top1], minlength=c)
                    bads.append(bad)
        finally:
            del loader_iter
            self.model.train()
        d.all_reduce_sum(sums)
        d.all_reduce_sum(per_class)
        loss_sum, hit1, hit5 = sums.tolist()
        counts, hits1 = per_class.tolist()
        n = sum(counts)
        self._collect_bad(bads, self.index.val, split="val")
        if n == 0:
            raise RuntimeError("the validation set yielded no images")
        loss, acc1, acc5 = loss_sum / n, 100.0 * hit1 / n, 100.0 * hit5 / n
        per_class_acc1 = tuple(100.0 * h / t if t else float("nan") for h, t in zip(hits1, counts))
        finite = math.isfinite(loss)
        is_best = finite and acc1 > self.best_acc1 and self._model_is_finite()
        if is_best:
            self.best_acc1 = acc1
        if finite:
            self.best_acc5 = max(self.best_acc5, acc5)
        seconds = time.perf_counter() - t0
        if not manual:
            self._eval_seconds = seconds
        ev = EvalResult(epoch=epoch, step=step, loss=loss, acc1=acc1, acc5=acc5, best_acc1=self.best_acc1,
                        best_acc5=self.best_acc5, manual=manual, is_best=is_best, seconds=seconds, images=n,
                        per_class_acc1=per_class_acc1)
        record = ev.to_record()
        record["per_class_acc1"] = list(per_class_acc1)
        self.history.append(record)
        self._emit(ev)
        if is_best:
            self._save("best.pt", "best")
        self._set_state(previous)
        return ev

    # ------------------------------------------------------------------ checkpoints
    def _model_is_finite(self) -> bool:
        tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        if not tensors:
            return True
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly from the current step boundary."""
        cfg, d = self.config, self.dist
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "model_name": cfg.model,
            "num_classes": cfg.num_classes,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "epoch_step": self.epoch_step,  # optimizer steps done in `epoch`
            "samples_in_epoch": self.epoch_step * cfg.batch_size * d.world_size,  # over all ranks
            "batch_size": cfg.batch_size,
            "world_size": d.world_size,
            "rng": capture_rng_state(cuda=self.device.type == "cuda"),
            "best_acc1": self.best_acc1,
            "best_acc5": self.best_acc5,
            "history": list(self.history),
            "bad_images": self.bad_images,
            # So that a resumed run does not count (and warn about) the same files again.
            "bad_indices": {split: sorted(seen) for split, seen in self._bad_seen.items()},
            "config": cfg.to_dict(),
        }

    def _save(self, name: str, reason: str) -> str:
        """Write OUT/checkpoints/<name> (rank 0): "saved", "skipped" (non-finite model) or "failed".

        In the last two cases the previous file is left exactly as it was.
        """
        if not self.is_main:
            return "saved"
        path = os.path.join(self.checkpoint_dir, name)
        previous = self.state
        self._set_state(RunState.CHECKPOINTING)
        try:
            if not self._model_is_finite():
                self._emit(RunWarning(
                    kind="checkpoint",
                    message=f"not writing {path}: the model has non-finite weights; the previous file is kept",
                ))
                return "skipped"
            t0 = time.perf_counter()
            try:
                save_checkpoint(self.checkpoint_state(), path)
            except OSError as e:
                detail = e.strerror or str(e)
                self._emit(RunError(
                    kind="checkpoint",
                    message=f"could not write {path}: {detail}; training goes on and the previous {name} is intact",
                ), always=True)
                return "failed"
            self._emit(CheckpointSaved(path=path, reason=reason, epoch=self.epoch, step=self.step,
                                       seconds=time.perf_counter() - t0))
            return "saved"
        finally:
            if self.state is RunState.CHECKPOINTING:
                self._set_state(previous)

    def _close_loaders(self) -> None:
        # Persistent workers live as long as their DataLoader; a finished run should not leave
        # processes behind while its Trainer object is still referenced (UI, tests). DataLoader
        # has no public close(), so drop its iterator the way its own __del__ path does.
        for loader in (getattr(self, "train_loader", None), getattr(self, "val_loader", None)):
            it = getattr(loader, "_iterator", None)
            if it is not None:
                loader._iterator = None
                shutdown = getattr(it, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()

    # ------------------------------------------------------------------ faults
    def _oom_message(self) -> str:
        bs = self.config.batch_size
        where = f" on {self.device}" if self.device.type == "cuda" else ""
        per = " per GPU" if self.dist is not None and self.dist.world_size > 1 else ""
        last = os.path.join(self.checkpoint_dir, "last.pt")
        keep = f"; {last} is unchanged: add --resume auto to continue from it" if os.path.exists(last) else ""
        return (f"out of GPU memory{where} at batch size {bs}{per} (epoch {self.epoch}, step {self.step}): "
                f"try --batch-size {max(1, bs // 2)}{keep}")

    def _release_memory(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._batches = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
