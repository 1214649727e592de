"""Training throughput: the model alone on device-resident data against wvtui's full training loop.

    python -m bench.step                                   # CPU: resnet18, 64 px, batch 32
    python -m bench.step --device cuda --compile both      # GPU: InceptionResNetV2, 299 px, batch 128, bf16

Model only: one fixed batch already on the device (normalised, channels_last), then forward,
cross-entropy, zero_grad, backward and SGD step under the same autocast, with the loss summed on
the device. Full loop: wvtui's Trainer on a synthetic WebVision tree of JPEGs (short side 256 at
299 px, scaled with --image-size) - workers decoding and cropping, uint8 batches, the prefetcher,
normalisation on the device, the step, the statistics. Both time --steps after --warmup steps.
Target on a GPU: the full loop reaches >= 95% of the model-only figure, data-wait under 5%. On
this CPU-only path the workers and the model share the same cores, so the ratio there also
counts that competition.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from bench.common import (
    add_training_args,
    resolve_training_args,
    machine_line,
    resolve_device,
    sync,
    table,
    trainer_throughput,
    webvision_index,
)
from core.config import TrainConfig
from core.data import normalize_on_device
from core.engine import Trainer
from core.model import build_model

TARGET = 0.95
CLASSES = 10



def model_only(args, device: torch.device, compile_model: bool) -> dict:
    """Images/s of forward + backward + SGD step on one device-resident batch."""
    torch.manual_seed(0)
    amp = Trainer._resolve_amp(args.amp, device)
    model = build_model(args.model, CLASSES).to(device, memory_format=torch.channels_last)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, **fused)
    run = torch.compile(model) if compile_model else model
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    images = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size),
                           dtype=torch.uint8, device=device)
    x = normalize_on_device(images, channels_last=True)
    y = torch.randint(0, CLASSES, (args.batch_size,), device=device)
    total = torch.zeros((), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(run(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        total.add_(loss.detach().float())

    model.train()
    for _ in range(args.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    total.item()  # the sync that puts every queued step inside the window
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model, opt, run
    return {"img_s": args.steps * args.batch_size / seconds, "peak_gib": peak}


def full_loop(args, device: torch.device, compile_model: bool, index, out: str) -> dict:
    report = args.report_every
    cfg = TrainConfig(
        root=index.root, num_classes=CLASSES, epochs=1, batch_size=args.batch_size, model=args.model,
        image_size=args.image_size, workers=args.workers, device=str(device), amp=args.amp,
        compile=compile_model, out=out, report_every=report, report_interval_s=0.0,
        max_steps_per_epoch=args.warmup + args.steps + report, max_val_batches=1,
    )
    return trainer_throughput(cfg, index, warmup=args.warmup, steps=args.steps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(p, repeats_default=None,
                      repeats_help="alternating runs of each, best kept (default: 1 on CUDA, 2 on CPU)")
    p.add_argument("--compile", default="off", choices=["off", "on", "both"], help="torch.compile the model")
    args = p.parse_args(argv)
    device = resolve_training_args(p, args, {"repeats": 1 if resolve_device(args.device).type == "cuda" else 2})
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]

    print(f"machine: {machine_line(device)}")
    amp = Trainer._resolve_amp(args.amp, device)
    print(f"{args.model}, {args.image_size} px, batch {args.batch_size}, amp {amp}, channels_last, "
          f"{args.workers} workers, {torch.get_num_threads()} torch threads, "
          f"{args.steps} timed steps after {args.warmup}\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="wvtui-bench-step-") as tmp:
        samples = args.batch_size * (args.warmup + args.steps + args.report_every + 1)
        index = webvision_index(os.path.join(tmp, "wv"), samples=samples, short_side=args.short_side,
                                classes=CLASSES)
        for k, compiled in enumerate(modes):
            alone, loop = [], []
            for r in range(args.repeats):  # alternating, best kept: a shared machine is noisy
                alone.append(model_only(args, device, compiled))
                loop.append(full_loop(args, device, compiled, index, os.path.join(tmp, f"run{k}-{r}")))
            a = max(alone, key=lambda m: m["img_s"])
            b = max(loop, key=lambda m: m["img_s"])
            peak = (lambda m: "n/a" if m["peak_gib"] is None else f"{m['peak_gib']:.2f}")
            rows.append(["on" if compiled else "off", a["img_s"], b["img_s"],
                         f"{b['img_s'] / a['img_s'] * 100:.1f}%", f"{b['data_wait'] * 100:.1f}%",
                         peak(a), peak(b), " ".join(f"{m['img_s']:.1f}" for m in alone),
                         " ".join(f"{m['img_s']:.1f}" for m in loop)])
    print(table("Training throughput (images/s)",
                ["compile", "model only", "wvtui full loop", "loop / model", "data-wait",
                 "peak GiB (model)", "peak GiB (loop)", "model runs", "loop runs"], rows))
    for r in rows:
        ok = float(r[3].rstrip("%")) >= TARGET * 100 and float(r[4].rstrip("%")) < 5
        print(f"compile {r[0]}: full loop at {r[3]} of model-only, data-wait {r[4]} "
              f"(GPU target >= {TARGET * 100:.0f}%, data-wait < 5%): {'MET' if ok else 'NOT MET'}"
              + ("" if device.type == "cuda" else " [CPU run: the workers share the model's cores]"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
