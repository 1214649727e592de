"""The resolved configuration of one training run.

Defaults are the mini-WebVision reference recipe (InceptionResNetV2, first 50 classes,
SGD 0.1/0.9/5e-4, batch 128, 80 epochs, MultiStepLR at 30 and 60).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any


def default_workers() -> int:
    """One decoding worker per core the process may use, leaving one for the training loop."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    return max(1, min(cores - 1, 16))


@dataclass
class TrainConfig:
    root: str
    num_classes: int = 50
    epochs: int = 80
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (30, 60)
    gamma: float = 0.1
    model: str = "inception_resnet_v2"
    image_size: int = 299
    workers: int = field(default_factory=default_workers)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    seed: int = 0
    out: str | None = None
    resume: str | None = None  # PATH | "auto" | None
    compile: bool = False
    use_flickr: bool = False
    # Step stats are reported every `report_every` steps or `report_interval_s`, whichever is later.
    report_every: int = 10
    report_interval_s: float = 0.5
    # Consecutive non-finite reported losses before the run pauses (headless: stops).
    nonfinite_patience: int = 3
    # Limits for quick runs (demo, tests, benchmarks); None means the whole epoch / val set.
    max_steps_per_epoch: int | None = None
    max_val_batches: int | None = None
    demo: bool = False

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in self.milestones)
        errors = []
        if self.num_classes < 1:
            errors.append("--num-classes must be >= 1")
        if self.epochs < 1:
            errors.append("--epochs must be >= 1")
        if self.batch_size < 1:
            errors.append("--batch-size must be >= 1")
        if self.lr <= 0:
            errors.append("--lr must be > 0")
        if not 0 <= self.momentum < 1:
            errors.append("--momentum must be in [0, 1)")
        if self.weight_decay < 0:
            errors.append("--weight-decay must be >= 0")
        if self.image_size < 32:
            errors.append("--image-size must be >= 32")
        if self.workers < 0:
            errors.append("--workers must be >= 0")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            errors.append("--amp must be one of auto, bf16, fp16, off")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            errors.append("--device must be auto, cpu, cuda or cuda:N")
        if list(self.milestones) != sorted(self.milestones):
            errors.append("--milestones must be increasing")
        if errors:
            raise ValueError("; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
