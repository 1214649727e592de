"""What the trainer tells its front ends: one vocabulary for the console, headless printer,
run log, tests and (later) the attach socket.

Events are small immutable dataclasses. The trainer calls `sink(event)` from its own thread;
a sink must return quickly and never block on a UI. Each event class names its record
(`RECORD`, the `"event"` value of a `metrics.jsonl` line) and serialises itself:
`to_record()` gives a plain JSON-ready dict and `event_from_record()` rebuilds the event, so
whatever writes or carries events (run log, socket) needs no table of fields of its own.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar


class Command(str, enum.Enum):
    """Commands a front end submits; the trainer applies them at the next step boundary."""

    PAUSE = "pause"
    RESUME = "resume"
    CHECKPOINT = "checkpoint"
    EVALUATE = "evaluate"
    STOP = "stop"  # checkpoint, then end the run
    STOP_NO_SAVE = "stop_no_save"  # end the run without a final checkpoint
    SET_LR = "lr"  # value = the new learning rate of every parameter group
    # Nobody is left to resume a pause (the terminal hung up): a non-finite loss now stops.
    NONFINITE_STOPS = "nonfinite_stops"


class RunState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    EVALUATING = "evaluating"
    CHECKPOINTING = "checkpointing"
    STOPPING = "stopping"
    FINISHED = "finished"
    ERROR = "error"


def _plain(value: Any) -> Any:
    """JSON-ready: enums by value, tuples as lists, non-finite floats as null (JSON has no NaN)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


_REGISTRY: dict[str, type[Event]] = {}


@dataclass(frozen=True)
class Event:
    RECORD: ClassVar[str] = ""  # the "event" value of this event's record
    LOGGED: ClassVar[bool] = True  # whether the run log writes it to metrics.jsonl

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only a class that names its own record: a subclass (a test's variant) never takes
        # over its parent's record for every reader in the process.
        if cls.__dict__.get("RECORD"):
            _REGISTRY[cls.RECORD] = cls

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"event": self.RECORD}
        for f in dataclasses.fields(self):
            record[f.name] = _plain(getattr(self, f.name))
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Event:
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in record:
                continue  # an older record without a newer field: the field's default applies
            v = record[f.name]
            if v is None and f.type in ("float", float):
                v = float("nan")
            elif isinstance(v, list) and str(f.type).startswith("tuple"):
                v = tuple(tuple(x) if isinstance(x, list) else
                          float("nan") if x is None and "float" in str(f.type) else x for x in v)
            elif f.name in ("state", "previous") and v is not None:
                v = RunState(v)
            values[f.name] = v
        return cls(**values)


def event_from_record(record: dict[str, Any]) -> Event:
    """The event a record was made from; ValueError for an unknown or malformed record."""
    name = record.get("event") if isinstance(record, dict) else None
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"not an event record: {record!r:.80}")
    try:
        return cls.from_record(record)
    except (TypeError, ValueError) as e:
        raise ValueError(f"malformed {name!r} record: {e}") from None


@dataclass(frozen=True)
class RunStarted(Event):
    RECORD: ClassVar[str] = "started"
    config: dict[str, Any]
    summary: dict[str, Any]  # WebVisionIndex.summary() as a dict
    device: str  # e.g. "cuda:0 (NVIDIA H200)" or "cpu"
    model: str
    num_params: int
    steps_per_epoch: int
    total_steps: int
    start_epoch: int  # epochs completed before this segment (0 for a fresh run)
    start_step: int
    out_dir: str
    resumed_from: str | None = None
    amp: str = "off"
    world_size: int = 1
    elapsed_s: float = 0.0  # time spent in earlier segments of a resumed run


@dataclass(frozen=True)
class StateChanged(Event):
    """The one event of a state transition (running -> paused is "paused", and so on)."""

    RECORD: ClassVar[str] = "state"
    state: RunState
    epoch: int  # 1-based: the epoch of the latest step (1 before any)
    step: int
    previous: RunState | None = None


@dataclass(frozen=True)
class ConfigChanged(Event):
    """Settings that differ from the resumed checkpoint's and now apply: {name: [old, new]}."""

    RECORD: ClassVar[str] = "config_change"
    epoch: int
    step: int
    changes: dict[str, Any]


@dataclass(frozen=True)
class StepStats(Event):
    RECORD: ClassVar[str] = "train"
    epoch: int  # 1-based: the epoch in progress (the first epoch is 1)
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
    elapsed_s: float  # the whole run's, earlier segments of a resumed run included
    bad_images: int  # total so far


@dataclass(frozen=True)
class EvalResult(Event):
    RECORD: ClassVar[str] = "eval"
    epoch: int  # 1-based: the epoch just finished (end of epoch) or in progress (manual)
    step: int
    loss: float
    acc1: float  # percent
    acc5: float
    best_acc1: float
    best_acc5: float
    manual: bool
    is_best: bool
    seconds: float
    images: int  # images scored (readable ones)
    per_class_acc1: tuple[float, ...] = field(default=())
    images_total: int = 0  # images in the val set, readable or not (0: same as `images`)
    # The most frequent mistakes, ((true label, predicted label, count), ...), most frequent first.
    confusions: tuple[tuple[int, int, int], ...] = field(default=())
    # The ILSVRC2012 val images of the same classes (--imagenet-val); None when not evaluated.
    imagenet_loss: float | None = None
    imagenet_acc1: float | None = None
    imagenet_acc5: float | None = None
    imagenet_images: int = 0
    imagenet_per_class_acc1: tuple[float, ...] = field(default=())
    imagenet_confusions: tuple[tuple[int, int, int], ...] = field(default=())


@dataclass(frozen=True)
class EpochEnd(Event):
    RECORD: ClassVar[str] = "epoch"
    epoch: int  # 1-based: the epoch just finished
    step: int
    seconds: float
    img_per_s: float


@dataclass(frozen=True)
class CheckpointSaved(Event):
    RECORD: ClassVar[str] = "checkpoint"
    path: str
    reason: str  # epoch | manual | stop | signal | hangup | best
    epoch: int  # 1-based: the epoch just finished (reason "epoch") or the one in progress
    step: int
    seconds: float


@dataclass(frozen=True)
class RunWarning(Event):
    RECORD: ClassVar[str] = "warning"
    kind: str  # bad_images | nonfinite | checkpoint | resume | ...
    message: str
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunError(Event):
    RECORD: ClassVar[str] = "error"
    kind: str  # oom | checkpoint | exception | nonfinite
    message: str
    traceback: str = ""


@dataclass(frozen=True)
class RunFinished(Event):
    RECORD: ClassVar[str] = "finished"
    reason: str  # completed | stopped | error | nonfinite
    epoch: int
    step: int
    best_acc1: float
    best_acc5: float
    seconds: float
    # Whether the latest checkpoint write of the run failed (disk full, ...): such a run did
    # not keep its progress, whatever the reason it ended for.
    checkpoint_failed: bool = False


@dataclass(frozen=True)
class NoiseEstimate(Event):
    """After each epoch: the clean/noisy split of the epoch's per-sample training losses
    (DivideMix's two-component Gaussian mixture on min-max normalised losses)."""

    RECORD: ClassVar[str] = "noise"
    epoch: int  # 1-based, the epoch the losses come from
    step: int
    samples: int  # training samples recorded in the epoch (all ranks)
    clean_fraction: float  # mean clean probability
    means: tuple[float, ...]  # (clean, noisy) component means, on normalised loss
    variances: tuple[float, ...]
    weights: tuple[float, ...]
    path: str  # OUT/samples/epoch_NNN.npz (NNN: the 1-based epoch)


@dataclass(frozen=True)
class NoiseDetails(Event):
    """What the console's noise pane shows of one epoch's split; too big for metrics.jsonl.

    histogram: counts of normalised losses in equal bins over [0, 1].
    classes: (label, images, clean_fraction, mean_loss, most often predicted other label or -1).
    queries: (query_id, query text, label, images, clean_fraction, mean_loss, other label or -1).
    worst: the highest-loss samples of every class and query:
           (index, path, label, query_id, predicted, loss, clean_prob).
    """

    RECORD: ClassVar[str] = "noise_details"
    LOGGED: ClassVar[bool] = False
    epoch: int
    histogram: tuple[int, ...]
    classes: tuple[tuple[Any, ...], ...]
    queries: tuple[tuple[Any, ...], ...]
    worst: tuple[tuple[Any, ...], ...]


# CommandApplied.detail of a command that did nothing, or not by itself ("refused: why" too).
NOT_PAUSED = "not paused"
ALREADY_PAUSED = "already paused"
SERVED_BY_EPOCH_EVAL = "served by the end-of-epoch evaluation"
RUN_ENDED = "the run ended before it was applied"
REFUSED = "refused: "


@dataclass(frozen=True)
class CommandApplied(Event):
    """One per submitted command once the trainer applied it (an audit trail of who did what).

    pause: once paused; checkpoint: after the write (detail: the path or the failure); evaluate:
    after its EvalResult; stop: after the final checkpoint, before RunFinished; a no-op (resume
    while running) or a refusal says so in `detail`.
    """

    RECORD: ClassVar[str] = "command"
    command: str  # a Command value: "pause", "checkpoint", "lr", ...
    epoch: int
    step: int
    token: str | None = None  # what submit() was given: whoever submitted matches on it
    detail: str = ""


@dataclass(frozen=True)
class LearningRateSet(Event):
    """Every parameter group's lr was set by a command (Command.SET_LR)."""

    RECORD: ClassVar[str] = "lr_set"
    epoch: int
    step: int
    old: float
    new: float


Sink = Callable[[Event], None]


def fanout(*sinks: Sink) -> Sink:
    """One sink that forwards each event to every given sink, in order."""

    def sink(event: Event) -> None:
        for s in sinks:
            s(event)

    return sink
