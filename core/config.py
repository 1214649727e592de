"""The resolved configuration of one training run.

Defaults are the mini-WebVision reference recipe (InceptionResNetV2, first 50 classes,
SGD 0.1/0.9/5e-4, batch 128, 80 epochs, MultiStepLR at 30 and 60).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any


def default_workers() -> int:
    """One decoding worker per core this process's share of the machine holds, leaving one for
    the training loop. Under torchrun every local rank starts its own workers, so the cores are
    shared out by LOCAL_WORLD_SIZE first (8 ranks on 64 cores: 7 workers each, not 16)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    try:
        local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_ranks = 1
    return max(1, min(cores // local_ranks - 1, 16))


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
    # The ILSVRC2012 val images of the trained synsets (--imagenet-val); scored at every evaluation.
    imagenet_val: str | None = None
    tensorboard: bool = True  # OUT/tb/ (--no-tb turns it off)
    # Per-sample training losses, the clean/noisy split and OUT/samples/ (--no-samples turns it off).
    record_samples: bool = True
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
        # `x <= 0` is False for NaN, so finiteness is checked first: `--lr nan` must not start.
        if not math.isfinite(self.lr) or self.lr <= 0:
            errors.append(f"--lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            errors.append(f"--momentum must be in [0, 1), got {self.momentum}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            errors.append(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if not math.isfinite(self.gamma) or self.gamma <= 0:
            errors.append(f"--gamma must be a finite number > 0, got {self.gamma}")
        if any(m < 1 for m in self.milestones):
            errors.append(f"--milestones must be epochs >= 1, got {' '.join(map(str, self.milestones))}")
        if not math.isfinite(self.report_interval_s) or self.report_interval_s < 0:
            errors.append("report_interval_s must be a finite number >= 0")
        if self.nonfinite_patience < 1:
            errors.append("nonfinite_patience must be >= 1")
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
