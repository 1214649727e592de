"""The correctness probes of bench/gpu_check.py: each runs wvtui's Trainer briefly and reports one fact.

    sync_counts(...)     host-device syncs per training step and per evaluation batch (issue 14 item 3)
    fp16_overflow(...)   an fp16 run whose first steps overflow: momentum stays finite, loss falls (item 1)
    context_probe(...)   in a fresh process: which GPUs hold a CUDA context after a run on cuda:N (item 2),
                         and what core.telemetry shows of it on the real NVML (item 7)

    python -m bench.gpu_probes context cuda:0 ROOT OUT     # what gpu_check runs in a subprocess

Each takes a synthetic WebVision root (`make_root`) and works on CPU as well, where what only CUDA
can show (syncs, contexts) is left out and said so by the caller.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections import Counter

if __package__ in (None, ""):  # run as `python bench/gpu_probes.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

CLASSES = 4


def make_root(out_dir: str, *, train_images: int, val_images: int, size: int) -> str:
    """A synthetic tree with at least `train_images` train and `val_images` val JPEGs (4 classes)."""
    from core.synthetic import make_webvision

    if os.path.exists(os.path.join(out_dir, "info", "synsets.txt")):
        return out_dir
    return make_webvision(out_dir, classes=CLASSES, queries_per_class=2,
                          images_per_query=-(-train_images // (CLASSES * 2)),
                          val_per_class=-(-val_images // CLASSES), size=size, seed=0)


def _config(root: str, out: str, s, **kw):
    from core.config import TrainConfig

    values = dict(root=root, num_classes=CLASSES, epochs=1, batch_size=s.probe_batch, model=s.probe_model,
                  image_size=s.probe_image_size, workers=s.workers, device=s.device, amp=s.amp, seed=0,
                  out=out, report_interval_s=0.0)
    values.update(kw)
    return TrainConfig(**values)


def _trainer(cfg, sink=None):
    from core.engine import Trainer

    trainer = Trainer(cfg, sink or (lambda ev: None))
    trainer.prepare()
    return trainer


def sync_counts(root: str, out: str, s, *, steps: int = 12, val_batches: int = 6) -> dict:
    """Syncs between consecutive training forwards (steps 2..N) and between evaluation forwards.

    With CUDA's sync debug mode on "warn", every synchronizing operation warns; the warnings are
    counted at each forward call of the model, so the counts cover whole steps (loader, prefetcher,
    step, statistics) and whole evaluation batches, but not the first step (lazy start-up) nor the
    reads after the last batch. The report cadence is set past the epoch, so no window read falls
    inside. On CPU the mode does not exist: the same run counts nothing.
    """
    cfg = _config(root, out, s, max_steps_per_epoch=steps, max_val_batches=val_batches, report_every=steps + 1)
    trainer = _trainer(cfg)
    cuda = trainer.device.type == "cuda"
    marks: list[tuple[bool, int]] = []
    caught: list[warnings.WarningMessage] = []

    def note(module, args) -> None:
        marks.append((module.training, len(caught)))

    hook = trainer.model.register_forward_pre_hook(note)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")  # every sync, not only the first at each line
        caught = got
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            finished = trainer.run()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
            hook.remove()
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    train = [n for training, n in marks if training]
    evals = [n for training, n in marks if not training]
    # Warnings that are not syncs (deprecations) also grow the list: count syncs only, by index.
    sync_at = [i for i, w in enumerate(caught) if "synchroniz" in str(w.message)]

    def between(a: int, b: int) -> int:
        return sum(1 for i in sync_at if a <= i < b)

    per_step = between(train[1], train[-1]) / (len(train) - 2) if len(train) > 2 else math.nan
    per_batch = between(evals[0], evals[-1]) / (len(evals) - 1) if len(evals) > 1 else math.nan
    where = Counter(f"{os.path.relpath(w.filename)}:{w.lineno}" for w in syncs).most_common(3)
    return {"reason": finished.reason, "steps": len(train), "eval_batches": len(evals), "per_step": per_step,
            "per_eval_batch": per_batch, "total": len(syncs), "where": where, "counted": cuda}


def fp16_overflow(root: str, out: str, s, *, steps: int = 30, report_every: int = 5,
                  init_scale: float = 2.0**24, backoff: float = 2.0**-8) -> dict:
    """An fp16 run whose GradScaler starts so high that the first steps overflow and are skipped.

    Each overflow divides the scale by 256 (not 2), so after a step or two the run trains and
    the loss can be seen to fall within a few steps.

    Fused SGD (CUDA) used to create its momentum buffers with `empty_like` on the skipped first
    step and keep them, so the next step read garbage; `core.optim.make_sgd` pre-fills zeros.
    """
    from core.events import StepStats

    losses: list[float] = []

    def sink(ev) -> None:
        if isinstance(ev, StepStats):
            losses.append(ev.loss)

    cfg = _config(root, out, s, amp="fp16", max_steps_per_epoch=steps, max_val_batches=1,
                  report_every=report_every, lr=s.probe_lr)
    trainer = _trainer(cfg, sink)
    if trainer.scaler is None:
        raise RuntimeError("the trainer built no GradScaler for --amp fp16")
    # The trainer's own scaler, re-set through its public state (its step holds the same object).
    state = trainer.scaler.state_dict() or {"growth_factor": 2.0, "growth_interval": 2000, "_growth_tracker": 0}
    trainer.scaler.load_state_dict({**state, "scale": init_scale, "backoff_factor": backoff})
    finished = trainer.run()
    scale = trainer.scaler.get_scale()
    # No growth within a run this short (growth_interval 2000): every halving-by-256 was a skip.
    skipped = round(math.log(init_scale / scale, 1 / backoff)) if scale > 0 else -1
    buffers = [st.get("momentum_buffer") for st in trainer.optimizer.state.values()]
    finite = bool(buffers) and all(b is not None and bool(torch.isfinite(b).all()) for b in buffers)
    finite_losses = len(losses) >= 2 and all(math.isfinite(x) for x in losses)
    # On the synthetic classes the loss can reach ~0 and then jump for a window: "falls" means a
    # window in the second half is below the first window (which holds the skipped steps).
    falling = finite_losses and min(losses[len(losses) // 2:]) < losses[0]
    return {"reason": finished.reason, "skipped": skipped, "buffers_finite": finite, "losses": losses,
            "finite_losses": finite_losses, "falling": falling, "fused": any(g.get("fused") for g in trainer.optimizer.param_groups)}


def context_probe(device: str, root: str, out: str) -> dict:
    """Run a few steps on `device` wired as the CLI wires it (prepare here, train on the runner
    thread), then list the GPUs on which this process holds a CUDA context or allocator memory."""
    from types import SimpleNamespace

    from wvtui.session import Session

    s = SimpleNamespace(probe_batch=8, probe_model="resnet18", probe_image_size=32, workers=1, device=device, amp="auto")
    session = Session(_config(root, out, s, max_steps_per_epoch=4, max_val_batches=1, report_every=2),
                      nonfinite_action="stop")
    session.prepare()
    result = session.run()
    has_context = getattr(torch._C, "_cuda_hasPrimaryContext", None)
    n = torch.cuda.device_count()
    return {"device": device, "reason": None if result is None else result.reason,
            "contexts": [bool(has_context(i)) if has_context else None for i in range(n)],
            "reserved": [torch.cuda.memory_reserved(i) for i in range(n)],
            "telemetry": telemetry_probe(torch.device(device))}


def telemetry_probe(device: torch.device) -> dict:
    """core.telemetry on the real NVML, in a process that has used `device` (issue 14 item 7):
    which NVML GPUs get torch figures, which one NVML itself says `device` is (looked up by its
    UUID with another NVML call than the sampler's), and the peak over two windows."""
    import pynvml

    from core.telemetry import TelemetrySampler

    with TelemetrySampler() as sampler:
        spike = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)  # 256 MiB, freed at once
        del spike
        first = sampler.sample()
        second = sampler.sample()
    if first.gpu_unavailable_reason is not None:
        return {"reason": first.gpu_unavailable_reason}
    pynvml.nvmlInit()
    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else "GPU-" + uuid)
        expected = pynvml.nvmlDeviceGetIndex(handle)
    except pynvml.NVMLError as exc:  # e.g. a MIG slice, whose UUID names no whole GPU
        expected = f"not found ({exc})"
    finally:
        pynvml.nvmlShutdown()
    return {"reason": None, "expected": expected,
            "with_torch": [g.index for g in first.gpus if g.torch_reserved_bytes is not None],
            "peaks": [[g.torch_peak_bytes for g in t.gpus if g.torch_peak_bytes is not None] for t in (first, second)]}


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "context":
        print("usage: python -m bench.gpu_probes context DEVICE ROOT OUT", file=sys.stderr)
        return 2
    print(json.dumps(context_probe(*argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
