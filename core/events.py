"""What the trainer tells its front ends (console, headless printer, run log, tests).

Events are small immutable dataclasses. The trainer calls `sink(event)` from its own thread;
a sink must return quickly and never block on a UI. `to_record()` gives the plain dict that
`metrics.jsonl` and tests use.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Callable


class Command(str, enum.Enum):
    """Commands a front end submits; the trainer applies them at the next step boundary."""

    PAUSE = "pause"
    RESUME = "resume"
    CHECKPOINT = "checkpoint"
    EVALUATE = "evaluate"
    STOP = "stop"  # checkpoint, then end the run
    STOP_NO_SAVE = "stop_no_save"  # end the run without a final checkpoint


class RunState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    EVALUATING = "evaluating"
    CHECKPOINTING = "checkpointing"
    STOPPING = "stopping"
    FINISHED = "finished"
    ERROR = "error"


@dataclass(frozen=True)
class Event:
    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunStarted(Event):
    config: dict[str, Any]
    summary: dict[str, Any]  # WebVisionIndex.summary() as a dict
    device: str  # e.g. "cuda:0 (NVIDIA H200)" or "cpu"
    model: str
    num_params: int
    steps_per_epoch: int
    total_steps: int
    start_epoch: int
    start_step: int
    out_dir: str
    resumed_from: str | None = None
    amp: str = "off"
    world_size: int = 1


@dataclass(frozen=True)
class StateChanged(Event):
    state: RunState
    epoch: int
    step: int


@dataclass(frozen=True)
class StepStats(Event):
    epoch: int  # 0-based
    step: int  # global optimizer steps done
    epoch_step: int  # steps done in this epoch
    steps_per_epoch: int
    total_steps: int
    loss: float  # mean over the reporting window (the chart's smoothed line uses this)
    last_loss: float  # the loss of the last step of the window
    lr: float
    img_per_s: float
    data_wait: float  # fraction of the window's wall time spent waiting for input, 0..1
    eta_epoch_s: float
    eta_run_s: float
    elapsed_s: float
    bad_images: int  # total so far


@dataclass(frozen=True)
class EvalResult(Event):
    epoch: int
    step: int
    loss: float
    acc1: float  # percent
    acc5: float
    best_acc1: float
    best_acc5: float
    manual: bool
    is_best: bool
    seconds: float
    images: int
    per_class_acc1: tuple[float, ...] = field(default=())


@dataclass(frozen=True)
class EpochEnd(Event):
    epoch: int
    step: int
    seconds: float
    img_per_s: float


@dataclass(frozen=True)
class CheckpointSaved(Event):
    path: str
    reason: str  # epoch | manual | stop | signal | best | error
    epoch: int
    step: int
    seconds: float


@dataclass(frozen=True)
class Paused(Event):
    epoch: int
    step: int


@dataclass(frozen=True)
class Resumed(Event):
    epoch: int
    step: int


@dataclass(frozen=True)
class RunWarning(Event):
    kind: str  # bad_images | nonfinite | checkpoint | ...
    message: str
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunError(Event):
    kind: str  # oom | checkpoint | exception | nonfinite
    message: str
    traceback: str = ""


@dataclass(frozen=True)
class RunFinished(Event):
    reason: str  # completed | stopped | error | nonfinite
    epoch: int
    step: int
    best_acc1: float
    best_acc5: float
    seconds: float


Sink = Callable[[Event], None]


def fanout(*sinks: Sink) -> Sink:
    """One sink that forwards each event to every given sink, in order."""

    def sink(event: Event) -> None:
        for s in sinks:
            s(event)

    return sink
