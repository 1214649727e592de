"""Events as text: the words the console's event log and the headless printer both write.

`describe(event)` gives the lines of one event, each a tuple of (text, Rich style) segments:
the headless printer writes their plain text, the event log pane the same text with the
styles. The lines follow the reference training script where it has one:

    Average Loss: 1.8731 Acc@1 41.200 (Best 41.200) Acc@5 77.480
    Checkpoint (epoch) saved to runs/x/checkpoints/last.pt in 0.21s
    Paused at epoch 2, step 130
    Learning rate set to 0.01 (was 0.1) at epoch 2, step 131

Epochs are numbered from 1, as a person counts them and as every event's `epoch` is: the text
shows it as it is. `duration` and `loss` are the one way the package writes those numbers.
"""

from __future__ import annotations

import math
from typing import Any

from core.events import (ALREADY_PAUSED, NOT_PAUSED, REFUSED, RUN_ENDED, SERVED_BY_EPOCH_EVAL, CheckpointSaved,
                         CommandApplied, ConfigChanged, EpochEnd, EvalResult, Event, LearningRateSet, NoiseEstimate,
                         RunError, RunFinished, RunStarted, RunState, RunWarning, StateChanged)

Segment = tuple[str, str]  # (text, Rich style; "" for none)
Line = tuple[Segment, ...]

# A warning can carry thousands of paths (bad images); a log shows the first few.
MAX_PATHS = 5


def duration(seconds: float | None) -> str:
    """`65` -> "1:05", `3725` -> "1:02:05", two days and an hour -> "2d 1:00:00".

    Minutes:seconds under an hour keeps the status line short; days are spelled out because
    runs last days. None, NaN, infinity or a negative value (no estimate yet) -> "--".
    """
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--"
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    text = f"{hours}:{minutes:02d}:{s:02d}" if hours or days else f"{minutes}:{s:02d}"
    return f"{days}d {text}" if days else text


def loss(value: float | None) -> str:
    """Four decimals; a non-finite loss is written as Python writes it ("nan", "inf")."""
    if value is None:
        return "--"
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def plain(line: Line) -> str:
    return "".join(text for text, _ in line)


def describe(event: Event) -> list[Line]:
    """The lines of an event worth a line; none for ticks and for state changes other than a
    pause and a resume (the status line shows those)."""
    describer = _DESCRIBERS.get(type(event))
    return describer(event) if describer is not None else []


def _started(ev: RunStarted) -> list[Line]:
    demo = " (demo)" if ev.config.get("demo") else ""
    procs = f", {ev.world_size} processes" if ev.world_size > 1 else ""
    lines: list[Line] = [((f"wvtui{demo}: ", "bold green"),
                          (f"{ev.model} ({ev.num_params / 1e6:.1f}M params) on {ev.device}, amp {ev.amp}{procs}", ""))]
    s = ev.summary or {}
    if s:
        lines.append(((f"Dataset {s.get('root', '?')}: {s.get('num_classes', '?')} classes, "
                       f"{s.get('train_images', '?')} train / {s.get('val_images', '?')} val images", ""),))
    epochs = int(ev.config.get("epochs", 0))
    lines.append(((f"Run directory {ev.out_dir}: {epochs} epochs x {ev.steps_per_epoch} steps "
                   f"= {ev.total_steps} steps", ""),))
    if ev.resumed_from:
        # start_epoch counts the epochs done: the run goes on in the next one.
        lines.append(((f"Resumed from {ev.resumed_from} at epoch {ev.start_epoch + 1}, step {ev.start_step}",
                       "green"),))
    return lines


# A checkpoint or an evaluation is a detour: the run comes back to the state it left (a
# checkpoint taken while paused goes paused -> checkpointing -> paused, and is no new pause).
DETOURS = (RunState.EVALUATING, RunState.CHECKPOINTING)


def is_pause(event: Event) -> bool:
    return (isinstance(event, StateChanged) and event.state is RunState.PAUSED
            and event.previous not in DETOURS)


def is_resume(event: Event) -> bool:
    return (isinstance(event, StateChanged) and event.state is RunState.RUNNING
            and event.previous is RunState.PAUSED)


def _state(ev: StateChanged) -> list[Line]:
    if is_pause(ev):
        return [((f"Paused at epoch {ev.epoch}, step {ev.step}", "bold yellow"),)]
    if is_resume(ev):
        return [((f"Resumed at epoch {ev.epoch}, step {ev.step}", "bold green"),)]
    return []


def _setting(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_setting(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _config_changed(ev: ConfigChanged) -> list[Line]:
    changes = ", ".join(f"{name} {_setting(old)} -> {_setting(new)}" for name, (old, new) in ev.changes.items())
    return [(("Settings changed from the checkpoint's: ", "bold cyan"), (changes, ""))]


def _eval(ev: EvalResult) -> list[Line]:
    line: list[Segment] = [
        (f"Average Loss: {loss(ev.loss)} ", ""),
        (f"Acc@1 {ev.acc1:.3f}", "bold magenta"),
        (f" (Best {ev.best_acc1:.3f}) ", "bold green" if ev.is_best else ""),
        (f"Acc@5 {ev.acc5:.3f}", "bold"),
    ]
    if ev.images_total > ev.images:
        # Unreadable val images are not scored: say how many were.
        line.append((f" on {ev.images} of {ev.images_total} images", "yellow"))
    if ev.imagenet_acc1 is not None:
        line.append((f" | ImageNet Acc@1 {ev.imagenet_acc1:.3f} Acc@5 {ev.imagenet_acc5:.3f}", "bold cyan"))
    if ev.manual:
        line.append((f" [manual, epoch {ev.epoch} step {ev.step}]", "dim"))
    return [tuple(line)]


def _epoch_end(ev: EpochEnd) -> list[Line]:
    return [((f"Epoch[{ev.epoch}] done in {ev.seconds:.1f}s", "bold"),)]


def _noise(ev: NoiseEstimate) -> list[Line]:
    return [((f"Noise (epoch {ev.epoch}): ", "bold cyan"),
             (f"clean {100.0 * ev.clean_fraction:.1f}% of {ev.samples:,} samples; "
              f"means {ev.means[0]:.2f} / {ev.means[1]:.2f}", ""))]


def _checkpoint(ev: CheckpointSaved) -> list[Line]:
    return [((f"Checkpoint ({ev.reason}) ", "bold blue"), (f"saved to {ev.path} in {ev.seconds:.2f}s", ""))]


def _warning(ev: RunWarning) -> list[Line]:
    lines: list[Line] = [((f"Warning ({ev.kind}): ", "bold yellow"), (ev.message, ""))]
    lines += [((f"  {p}", "dim"),) for p in ev.paths[:MAX_PATHS]]
    if len(ev.paths) > MAX_PATHS:
        lines.append(((f"  ... and {len(ev.paths) - MAX_PATHS} more", "dim"),))
    return lines


def _error(ev: RunError) -> list[Line]:
    return [((f"Error ({ev.kind}): ", "bold white on red"), (ev.message, "bold red"))]


def _finished(ev: RunFinished) -> list[Line]:
    line: list[Segment] = [
        (f"Finished ({ev.reason}) ", "bold"),
        (f"at epoch {ev.epoch}, step {ev.step} after {duration(ev.seconds)}: "
         f"best Acc@1 {ev.best_acc1:.3f} Acc@5 {ev.best_acc5:.3f}", ""),
    ]
    if ev.checkpoint_failed:
        line.append(("; the latest checkpoint could not be written", "bold red"))
    return [tuple(line)]


def _lr_set(ev: LearningRateSet) -> list[Line]:
    return [(("Learning rate ", "bold cyan"),
             (f"set to {ev.new:g} (was {ev.old:g}) at epoch {ev.epoch}, step {ev.step}", ""))]


# The confirmations that tell something no other event does: a command that did nothing.
_NOTES = (NOT_PAUSED, ALREADY_PAUSED, SERVED_BY_EPOCH_EVAL, RUN_ENDED)


def _command_applied(ev: CommandApplied) -> list[Line]:
    if ev.detail.startswith(REFUSED):
        return [((f"Command {ev.command} ", "bold yellow"), (ev.detail, ""))]
    if ev.detail in _NOTES:
        return [((f"Command {ev.command}: {ev.detail}", "dim"),)]
    return []


_DESCRIBERS = {
    RunStarted: _started,
    StateChanged: _state,
    ConfigChanged: _config_changed,
    EvalResult: _eval,
    EpochEnd: _epoch_end,
    NoiseEstimate: _noise,
    CheckpointSaved: _checkpoint,
    RunWarning: _warning,
    RunError: _error,
    RunFinished: _finished,
    LearningRateSet: _lr_set,
    CommandApplied: _command_applied,
}
