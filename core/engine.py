"""The training loop: one `Trainer` object driven by the console, headless mode and tests.

    trainer = Trainer(TrainConfig(root="/data/webvision"), sink=print)
    trainer.prepare()            # builds everything; raises CheckpointError/DatasetError/ValueError
    finished = trainer.run()     # blocking; call it in a thread for a UI
    trainer.submit(Command.PAUSE)   # from any thread; applied at the next step boundary

The trainer talks only through events (`core.events`) given to `sink` and listens only to
commands (`core.commands`), applied between optimizer steps and each confirmed by a
CommandApplied once done: the run is always at a well-defined place when it pauses, evaluates
or checkpoints, and a checkpoint taken there resumes to bit-identical weights on CPU. Under torchrun every rank runs this loop on the same agreed
commands; only rank 0 writes files and emits events (other ranks: errors and their end).
`_train` reads top to bottom: epochs, `train_one_epoch`, `_evaluate`, the per-sample split
(core.sample_record, core.noise), `_save`. Other rooms: core.build (parts and the step),
core.meters, core.evaluate, core.commands, core.checkpoint, core.resume, core.bad_images, core.faults.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import traceback
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import nn

from core.bad_images import BadImages
from core.build import (RunData, RunModel, TrainStep, autocast_for, build_data, build_model_parts, load_index,
                        resolve_amp, seed_and_tune, use_device)
from core.checkpoint import CheckpointError, CheckpointSaver
from core.commands import CommandInbox, Submitted
from core.config import TrainConfig
from core.distributed import DistContext
from core.evaluate import EvalTotals, Scores, evaluate
from core.events import (ALREADY_PAUSED, NOT_PAUSED, REFUSED, RUN_ENDED, SERVED_BY_EPOCH_EVAL, CheckpointSaved,
                         Command, CommandApplied, EvalResult, Event, LearningRateSet, RunError, RunFinished,
                         RunStarted, RunState, RunWarning, Sink, StateChanged)
from core.faults import nonfinite_error, nonfinite_message, one_line, oom_message, save_problem
from core.meters import StepMeter
from core.model import build_model, count_parameters
from core.noise import drop_epoch_files_from, record_epoch
from core.sample_record import SampleRecord
from core.resume import open_checkpoint, restore_training_state, training_state
from core.webvision import WebVisionIndex

__all__ = ["Trainer", "NONFINITE_ACTIONS"]

NONFINITE_ACTIONS = ("pause", "stop")

# The commands a front end submits and waits to see applied (CommandApplied); NONFINITE_STOPS
# is the front end's own policy switch, not something a user asked for.
_CONFIRMED = frozenset(Command) - {Command.NONFINITE_STOPS}

ModelFactory = Callable[[str, int], nn.Module]


class Trainer:
    """Trains `config.model` on WebVision with the reference recipe; see the module docstring."""

    def __init__(self, config: TrainConfig, sink: Sink, *, index: WebVisionIndex | None = None,
                 nonfinite_action: str = "pause", dist: DistContext | None = None,
                 model_factory: ModelFactory | None = None) -> None:
        if nonfinite_action not in NONFINITE_ACTIONS:
            raise ValueError(f"nonfinite_action must be one of {NONFINITE_ACTIONS}, got {nonfinite_action!r}")
        self.config = config
        self.sink, self.index = sink, index
        self.nonfinite_action = nonfinite_action  # changed later only by Command.NONFINITE_STOPS
        self.model_factory = model_factory or build_model
        self.owns_dist = dist is None  # a context made here is shut down here
        self.dist: DistContext | None = dist
        self.out_dir = os.path.abspath(config.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))
        self.checkpoint_dir = os.path.join(self.out_dir, "checkpoints")
        self.commands = CommandInbox(dist)

        self.state = RunState.STARTING
        self.epoch = 0  # epochs completed = the 0-based epoch in progress (events say `epoch_no`)
        self.epoch_step = 0  # optimizer steps done in that epoch
        self.step = 0  # optimizer steps done in the whole run
        self.steps_per_epoch = self.total_steps = 0
        self.scores = Scores()  # best Acc@1/Acc@5 and every evaluation so far
        self.resumed_from: str | None = None
        self.elapsed_before = 0.0  # seconds spent in earlier segments of a resumed run
        self._due_evals: list[Submitted] = []  # EVALUATEs the epoch's own evaluation serves
        self._epoch_eval_step: int | None = None  # the step of this process's latest end-of-epoch evaluation
        self._resumed_by: Submitted | None = None  # the RESUME that ended the latest pause
        self._save_detail = ""  # the latest write: its path, or what went wrong
        self.start_events: list[Event] = []  # told right after RunStarted (resume, data warnings)
        self.bad = BadImages()
        # Built by prepare().
        self.device, self.amp = torch.device("cpu"), "off"
        self.data: RunData | None = None  # datasets, sampler, loaders
        self.model: nn.Module | None = None
        self.num_params = 0
        self.optimizer = self.scheduler = self.scaler = None  # SGD, MultiStepLR, the fp16 GradScaler
        self.train_step: TrainStep | None = None  # the step (DDP/compiled model) and the eval model
        self.saver = CheckpointSaver(self.checkpoint_dir, enabled=False)
        self.meter = StepMeter(self.device, images_per_step=config.batch_size)
        self.resume_samples = 0  # samples of the resumed epoch already trained on (this rank)
        self.record = SampleRecord.for_run(False)  # the epoch's per-sample losses (record_samples)
        self._nonfinite_reads = 0  # consecutive reads with a non-finite loss
        self._batches: Any = None  # the epoch's device batch iterator (dropped after an OOM)
        self._prepared = False

    # ------------------------------------------------------------------ public surface
    def submit(self, command: Command | str, *, reason: str | None = None, value: float | None = None,
               token: str | None = None) -> None:
        """Queue a command for the next step boundary. `reason` names a checkpoint (e.g. "signal"),
        `value` is SET_LR's learning rate; the command's CommandApplied carries `token`."""
        self.commands.submit(command, reason, value=value, token=token)

    @property
    def epoch_no(self) -> int:
        """The 1-based epoch of the latest step (1 before any): what every event's `epoch` says.

        Between epochs (the epoch's evaluation, checkpoint, a pause before the next epoch's first
        step) that is the epoch just finished, so its evaluation and its checkpoint agree.
        """
        return self.epoch + 1 if self.epoch_step > 0 or self.epoch == 0 else self.epoch

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
        d = self.commands.dist = self.dist
        self.device = d.device(cfg.device)
        use_device(self.device)
        if d.enabled:
            self.out_dir = d.broadcast_object(self.out_dir)
            self.checkpoint_dir = os.path.join(self.out_dir, "checkpoints")
        self.amp = resolve_amp(cfg.amp, self.device)
        seed_and_tune(cfg.seed, self.device)
        self.index = load_index(cfg, self.index)
        self.data = build_data(cfg, d, self.index, self.device)
        self.steps_per_epoch = self.data.steps_per_epoch
        self.total_steps = self.steps_per_epoch * cfg.epochs
        parts = build_model_parts(cfg, self.model_factory, self.device, self.amp)
        self.model, self.optimizer, self.scheduler, self.scaler = (
            parts.model, parts.optimizer, parts.scheduler, parts.scaler)
        self.num_params = count_parameters(self.model)
        self.saver = CheckpointSaver(self.checkpoint_dir, enabled=d.is_main)
        self.meter = StepMeter(self.device, images_per_step=cfg.batch_size * d.world_size)
        self.record = SampleRecord.for_run(cfg.record_samples, self.data.train_sampler, cfg.batch_size, self.device)
        self._resume_if_asked(parts)
        self.start_events += [RunWarning(kind="imagenet_val", message=w) for w in self.data.imagenet_warnings]
        self.saver.remove_stale_temp_files()
        if cfg.record_samples and d.is_main:
            drop_epoch_files_from(self.out_dir, self.epoch + 1)  # the files of the epochs redone
        self.train_step = TrainStep.build(parts, d, self.amp, self.device, compile=cfg.compile)
        self._prepared = True

    def run(self) -> RunFinished:
        """Train to the end (or a stop); never raises for faults during training."""
        t0 = time.perf_counter()
        failure: RunError | None = None
        reason = "error"
        try:
            self.prepare()
            use_device(self.device)  # on this thread, which may not be the one that prepared
            self.meter.start_run(t0, before=self.elapsed_before)
            self._emit_started()
            self._set_state(RunState.RUNNING)
            reason = self._train()
        except torch.OutOfMemoryError:
            failure = RunError(kind="oom", message=oom_message(self), traceback=traceback.format_exc())
        except Exception as e:
            kind = "checkpoint" if isinstance(e, CheckpointError) else "exception"
            message = (self.dist.explain(e) if self.dist is not None else None) or one_line(e)
            failure = RunError(kind=kind, message=message, traceback=traceback.format_exc())
        finally:
            self._batches = None
            if self.data is not None:
                self.data.close()
        if failure is not None:
            if failure.kind == "oom":
                # Out of the handler: its traceback no longer holds the failed step's tensors.
                self._release_memory()
            self._emit(failure, always=True)
        elif reason in ("completed", "stopped") and not self.meter.latest_loss_is_finite:
            reason = self._on_nonfinite(latest=True)
        finished = self._finish(reason)
        if self.owns_dist and self.dist is not None:
            self.dist.shutdown(abort=reason == "error")
        return finished

    def _resume_if_asked(self, parts: RunModel) -> None:
        opened = open_checkpoint(self.config, self.dist, self.out_dir)
        if opened is not None:
            self.start_events = restore_training_state(self, parts, *opened)
        elif self.config.resume == "auto":
            self.start_events = [RunWarning(kind="resume", message=f"--resume auto: no checkpoint in "
                                                                    f"{self.checkpoint_dir}; starting fresh")]

    # ------------------------------------------------------------------ events and state
    def _emit(self, event: Event | None, *, always: bool = False) -> None:
        if event is None or not (self.is_main or always):
            return
        try:
            self.sink(event)
        except Exception:
            # A broken front end must not take the run down with it; the run log still records.
            traceback.print_exc()

    def _set_state(self, state: RunState) -> None:
        if state != self.state:
            previous, self.state = self.state, state
            self._emit(StateChanged(state=state, epoch=self.epoch_no, step=self.step, previous=previous))

    def _emit_started(self) -> None:
        cfg = self.config
        resolved = {**cfg.to_dict(), "out": self.out_dir, "device": str(self.device), "amp": self.amp}
        device = f"{self.device} ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else "cpu"
        self._emit(RunStarted(
            config=resolved, summary=self.index.summary().to_dict(), device=device, model=cfg.model,
            num_params=self.num_params, steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
            start_epoch=self.epoch, start_step=self.step, out_dir=self.out_dir, resumed_from=self.resumed_from,
            amp=self.amp, world_size=self.dist.world_size, elapsed_s=self.elapsed_before,
        ))
        for event in self.start_events:  # the recipe changes of the resume, warnings
            self._emit(event)

    def _finish(self, reason: str) -> RunFinished:
        self._set_state(RunState.ERROR if reason == "error" else RunState.FINISHED)
        # Whoever waits for a command's CommandApplied must not wait forever.
        for item in self._due_evals + self.commands.drain():
            self._applied(item, RUN_ENDED)
        self._due_evals = []
        ev = RunFinished(reason=reason, epoch=self.epoch_no, step=self.step, best_acc1=self.scores.best_acc1,
                         best_acc5=self.scores.best_acc5, seconds=time.perf_counter() - self.meter.run_t0,
                         checkpoint_failed=self.saver.last_failed)
        self._emit(ev, always=True)
        return ev

    # ------------------------------------------------------------------ the loop
    def _train(self) -> str:
        cfg = self.config
        while self.epoch < cfg.epochs:
            outcome = self.train_one_epoch()
            if outcome is not None:
                return outcome
            with warnings.catch_warnings():
                # A run resumed from a stop at an epoch's very end steps the scheduler before this
                # process has stepped the optimizer; the order across the two processes is right.
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before")
                self.scheduler.step()
            self.epoch += 1  # now the 1-based number of the epoch just finished
            self.epoch_step = 0
            self._evaluate(manual=False, epoch=self.epoch, step=self.step)
            self._epoch_eval_step = self.step
            for item in self._due_evals:
                self._applied(item, SERVED_BY_EPOCH_EVAL)
            self._due_evals = []
            for event in record_epoch(self.record, self.dist, self.index, self.epoch, self.step, self.out_dir):
                self._emit(event)  # the epoch's per-sample split (NoiseEstimate, NoiseDetails)
            self._save("last.pt", "epoch")
            self._emit(self.meter.epoch_end(self.epoch, self.step))
        return "completed"

    def train_one_epoch(self) -> str | None:
        """Train to the end of the epoch in progress; a finish reason when the run must end."""
        cfg = self.config
        self.meter.start_epoch()
        self._batches = self.data.epoch_batches(self.epoch, self.resume_samples, self.device,
                                                steps=self.steps_per_epoch - self.epoch_step)
        self.resume_samples = 0
        self.record.start_epoch(self.epoch, self.epoch_step, self.steps_per_epoch)
        self.model.train()
        while self.epoch_step < self.steps_per_epoch:
            outcome = self._apply_commands()
            if outcome is not None:
                return outcome
            images, labels, bad, wait_s = next(self._batches)
            self.meter.add_step(self._train_step(images, labels), wait_s)
            self.bad.add(bad)
            self.epoch_step += 1
            self.step += 1
            if self.meter.unread >= cfg.report_every or self.epoch_step == self.steps_per_epoch:
                self._read_stats()
                if self._nonfinite_reads >= cfg.nonfinite_patience:
                    self._nonfinite_reads = 0
                    outcome = self._on_nonfinite()
                    if outcome is not None:
                        return outcome
        self._batches = None
        self.meter.end_epoch_training()
        # A stop that arrived during the epoch's last step must not wait for the evaluation:
        # a preempted job may have only seconds before it is killed.
        return self._apply_commands()

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = self.train_step(images, labels)
        self.record.add(self.epoch_step, out.losses, out.preds)  # device copies: no sync
        return out.loss

    def _read_stats(self) -> None:
        """Read the window's loss (every rank, same steps), count a non-finite one, maybe report."""
        cfg = self.config
        self.meter.read(self.dist)
        self._emit(self.bad.collect_pending(self.index.train))
        self._nonfinite_reads = 0 if self.meter.latest_loss_is_finite else self._nonfinite_reads + 1
        end_of_epoch = self.epoch_step >= self.steps_per_epoch
        if self.meter.due(0.0 if self._nonfinite_reads or end_of_epoch else cfg.report_interval_s):
            self._emit(self.meter.report(
                epoch=self.epoch_no, step=self.step, epoch_step=self.epoch_step, steps_per_epoch=self.steps_per_epoch,
                total_steps=self.total_steps, epochs_left=cfg.epochs - self.epoch,
                lr=float(self.optimizer.param_groups[0]["lr"]), bad_images=self.bad.count,
            ))

    def _on_nonfinite(self, *, latest: bool = False) -> str | None:
        """After `nonfinite_patience` non-finite reads: pause or stop, as the policy says. A run
        whose latest read was not finite (latest=True) ends failed, however it ended."""
        what = nonfinite_message(reads=None if latest else self.config.nonfinite_patience, epoch=self.epoch_no,
                                 step=self.step, lr=self.optimizer.param_groups[0]["lr"])
        if not latest and self.nonfinite_action == "pause":
            self._emit(RunWarning(kind="nonfinite", message=f"{what}; paused. Lower --lr or resume from the last checkpoint."))
            return self._pause()
        self._emit(RunWarning(kind="nonfinite", message=what))
        self._emit(nonfinite_error(what, latest=latest, checkpoint_dir=self.checkpoint_dir), always=True)
        return "nonfinite"

    # ------------------------------------------------------------------ commands
    def _apply_commands(self) -> str | None:
        """Apply the commands agreed at this step boundary; a finish reason ends the run."""
        return self.commands.apply_at_boundary(lambda item: self._apply(item, paused=False))

    def _applied(self, item: Submitted, detail: str = "") -> None:
        if item.command in _CONFIRMED:
            self._emit(CommandApplied(command=item.command.value, epoch=self.epoch_no, step=self.step,
                                      token=item.token, detail=detail))

    def _apply(self, item: Submitted, *, paused: bool) -> str | None:
        command, reason = item.command, item.reason
        if command is Command.PAUSE:
            if paused:
                self._applied(item, ALREADY_PAUSED)
                return None
            return self._pause(item)
        if command is Command.RESUME:
            self._applied(item, NOT_PAUSED)  # a RESUME that ends a pause is told by _pause
            return None
        if command is Command.NONFINITE_STOPS:
            self.nonfinite_action = "stop"
            return None
        if command is Command.SET_LR:
            self._set_lr(item)
            return None
        if command in (Command.STOP, Command.STOP_NO_SAVE):
            self._set_state(RunState.STOPPING)
            # A failed final write means the stop did not keep the progress: that is an error.
            saved = command is Command.STOP_NO_SAVE or self._save("last.pt", reason or "stop") != "failed"
            self._applied(item, "without a checkpoint" if command is Command.STOP_NO_SAVE else self._save_detail)
            return "stopped" if saved else "error"
        if command is Command.EVALUATE and self._epoch_eval_was_here():
            # Pressed while the epoch's own evaluation ran: it scored these very weights.
            self._applied(item, SERVED_BY_EPOCH_EVAL)
            return None
        if command is Command.EVALUATE and self._epoch_eval_is_near():
            # The epoch's own evaluation comes within a report window: one evaluation serves both.
            self._due_evals.append(item)
            return None
        t0 = time.perf_counter()
        if command is Command.CHECKPOINT:
            self._save("last.pt", reason or "manual")
            self._applied(item, self._save_detail)
        elif command is Command.EVALUATE:
            self._evaluate(manual=True, epoch=self.epoch_no, step=self.step)
            self._applied(item)
        else:
            raise ValueError(f"unknown command {command!r}")
        if not paused:  # while paused, _pause counts the whole pause as idle
            self.meter.add_idle(time.perf_counter() - t0)
        return None

    def _epoch_eval_was_here(self) -> bool:
        """Whether this process's latest end-of-epoch evaluation scored the weights of this step.
        (A resumed run evaluates when asked: the user may want the checkpoint's weights scored.)"""
        return self._epoch_eval_step == self.step

    def _epoch_eval_is_near(self) -> bool:
        """Whether the epoch's own evaluation is at most a report window of steps away."""
        return self.steps_per_epoch - self.epoch_step <= max(1, self.config.report_every)

    def _set_lr(self, item: Submitted) -> None:
        """Every parameter group's lr becomes the value, from the next step on. MultiStepLR is
        chainable (it multiplies the lr in effect by gamma at each milestone), so later milestones
        scale the new value; a checkpoint keeps it, and so does a resume with unchanged --lr."""
        new = item.value
        if new is None or not math.isfinite(new) or new <= 0:
            self._applied(item, f"{REFUSED}the learning rate must be a finite number > 0, got {new!r}")
            return
        old = float(self.optimizer.param_groups[0]["lr"])
        for group in self.optimizer.param_groups:
            group["lr"] = new
        self.scheduler._last_lr = [new for _ in self.optimizer.param_groups]  # what get_last_lr() says
        self._emit(LearningRateSet(epoch=self.epoch_no, step=self.step, old=old, new=new))
        self._applied(item, f"lr {old:g} -> {new:g}")

    def _pause(self, item: Submitted | None = None) -> str | None:
        """Hold the run at this step boundary until RESUME or a stop; other commands still apply."""
        t0 = time.perf_counter()
        self._set_state(RunState.PAUSED)
        if item is not None:
            self._applied(item)
        self._resumed_by = None
        try:
            outcome = self.commands.hold(self._apply_while_paused, self._on_resume)
        finally:
            self.meter.add_idle(time.perf_counter() - t0)
        if outcome is None:
            self._set_state(RunState.RUNNING)
            if self._resumed_by is not None:
                self._applied(self._resumed_by)
                self._resumed_by = None
        return outcome

    def _on_resume(self, item: Submitted) -> None:
        self._resumed_by = item

    def _apply_while_paused(self, item: Submitted) -> str | None:
        outcome = self._apply(item, paused=True)
        if outcome is None:
            self._set_state(RunState.PAUSED)  # back from evaluating or checkpointing
        return outcome

    # ------------------------------------------------------------------ evaluation and saving
    @contextlib.contextmanager
    def _in_state(self, state: RunState) -> Iterator[None]:
        """Evaluating or checkpointing, then back to the state the run was in."""
        previous = self.state
        self._set_state(state)
        try:
            yield
        finally:
            self._set_state(previous)

    def _evaluate(self, *, manual: bool, epoch: int, step: int) -> EvalResult:
        with self._in_state(RunState.EVALUATING):
            t0 = time.perf_counter()
            totals = self._score(self.data.val_loader, self.index.val, "val")
            if totals.images == 0:
                raise RuntimeError(f"the validation set yielded no readable images (of {totals.images_total})")
            imagenet = None  # --imagenet-val: scored alongside, never picks the best
            if self.data.imagenet_set is not None:
                imagenet = self._score(self.data.imagenet_loader, self.data.imagenet_set.samples, "imagenet_val")
            seconds = time.perf_counter() - t0
            if not manual:
                self.meter.eval_seconds = seconds
            ev = self.scores.record(totals, epoch=epoch, step=step, manual=manual, seconds=seconds, model=self.model,
                                    imagenet=imagenet)
            self._emit(ev)
            if ev.is_best:
                self._save("best.pt", "best")
        return ev

    def _score(self, loader: Any, samples: Any, split: str) -> EvalTotals:
        totals = evaluate(self.train_step.eval_model, loader, self.device, self.config.num_classes, dist=self.dist,
                          autocast=lambda: autocast_for(self.amp, self.device), max_batches=self.config.max_val_batches)
        self._emit(self.bad.collect(totals.bad, samples, split))
        return totals

    def _save(self, name: str, reason: str) -> str:
        """Write OUT/checkpoints/<name> (rank 0): "saved", "skipped" (non-finite model) or "failed"
        (both leave the previous file exactly as it was). Every rank calls it at the same boundary:
        the CUDA generator states and the epoch's per-sample record are gathered."""
        cuda = self.device.type == "cuda"
        cuda_rng = self.dist.all_gather_object(torch.cuda.get_rng_state(self.device)) if cuda else None
        samples = self.record.state(self.dist, self.epoch)  # the epoch's record so far (all ranks)
        if not self.is_main:
            return "saved"
        with self._in_state(RunState.CHECKPOINTING):
            outcome = self.saver.save(name, lambda: training_state(self, cuda_rng, samples), self.model)
            problem = save_problem(outcome, name, previous_kept=self.saver.exists(name))
            self._emit(problem or CheckpointSaved(path=outcome.path, reason=reason, epoch=self.epoch_no, step=self.step,
                                                  seconds=outcome.seconds), always=isinstance(problem, RunError))
            self._save_detail = outcome.path if problem is None else problem.message
        return outcome.status

    # ------------------------------------------------------------------ faults
    def _release_memory(self) -> None:
        """Drop every device tensor the failed step left behind, then give the cache back."""
        self._batches = None
        self.bad.pending = []
        self.meter.start_epoch()
        self.train_step.release_memory()

