"""Training throughput: the model alone on device-resident data against wvtui's full training loop.

    python bench/step.py                                   # CPU: resnet18, 64 px, batch 32
    python -m bench.step --device cuda --compile both      # GPU: InceptionResNetV2, 299 px, batch 128, bf16

Model only: one fixed batch already on the device (normalised, channels_last), then forward,
cross-entropy, zero_grad, backward and SGD step under the same autocast, with the loss summed on
the device. Full loop: wvtui's Trainer on a synthetic WebVision tree of JPEGs (short side 256 at
299 px, scaled with --image-size) - workers decoding and cropping, uint8 batches, the prefetcher,
normalisation on the device, the step, the statistics. Both time --steps after --warmup steps.

So that the two figures compare: cudnn.benchmark and TF32 are set once, before either run, to
the values the Trainer uses (the table shows them per window); the loop first takes the batches
its loader buffered during warm-up without computing (workers x (prefetch 4 + 1) + 2, rounded
to the report cadence), so its window starts from an empty queue and data-wait can show an
input-bound loop; the peak memory of both is reset at the start of the timed window and read at
its end. Target on a GPU: the full loop reaches >= 95% of the model-only figure, data-wait under
5%. On this CPU-only path the workers and the model share the same cores, so the ratio there
also counts that competition.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as `python bench/step.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import (  # noqa: E402
    add_training_args,
    drain_steps,
    machine_line,
    resolve_amp,
    resolve_device,
    resolve_training_args,
    set_speed_flags,
    speed_flags,
    sync,
    table,
    trainer_throughput,
    webvision_index,
)
from core.config import TrainConfig  # noqa: E402
from core.data import normalize_on_device  # noqa: E402
from core.model import build_model  # noqa: E402
from core.optim import make_sgd  # noqa: E402

TARGET = 0.95
CLASSES = 10


def model_only(args, device: torch.device, compile_model: bool) -> dict:
    """Images/s of forward + backward + SGD step on one device-resident batch."""
    torch.manual_seed(0)
    amp = resolve_amp(args.amp, device)
    model = build_model(args.model, CLASSES).to(device, memory_format=torch.channels_last)
    opt = make_sgd(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, device=device)
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
    flags = speed_flags()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    total.item()  # the sync that puts every queued step inside the window
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"img_s": args.steps * args.batch_size / seconds, "peak_gib": peak, "flags": flags}


def full_loop(args, device: torch.device, compile_model: bool, index, out: str) -> dict:
    report = args.report_every
    drain = drain_steps(args.workers, report)
    cfg = TrainConfig(
        root=index.root, num_classes=CLASSES, epochs=1, batch_size=args.batch_size, model=args.model,
        image_size=args.image_size, workers=args.workers, device=str(device), amp=args.amp,
        compile=compile_model, out=out, report_every=report, report_interval_s=0.0,
        max_steps_per_epoch=args.warmup + drain + args.steps + report, max_val_batches=1,
    )
    return trainer_throughput(cfg, index, warmup=args.warmup, steps=args.steps, drain=drain)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, torch.device]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(p, repeats_default=None,
                      repeats_help="alternating runs of each, best kept (default: 1 on CUDA, 2 on CPU)")
    p.add_argument("--compile", default="off", choices=["off", "on", "both"], help="torch.compile the model")
    args = p.parse_args(argv)
    device = resolve_training_args(p, args, {"repeats": 1 if resolve_device(args.device).type == "cuda" else 2})
    return args, device


def measure(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """One result per compile mode: the best model-only and full-loop runs of --repeats."""
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    set_speed_flags(device)
    results = []
    with tempfile.TemporaryDirectory(prefix="wvtui-bench-step-") as tmp:
        drain = drain_steps(args.workers, args.report_every)
        samples = args.batch_size * (args.warmup + drain + args.steps + args.report_every + 1)
        index = webvision_index(os.path.join(tmp, "wv"), samples=samples, short_side=args.short_side,
                                classes=CLASSES)
        for k, compiled in enumerate(modes):
            alone, loop = [], []
            for r in range(args.repeats):  # alternating, best kept: a shared machine is noisy
                alone.append(model_only(args, device, compiled))
                loop.append(full_loop(args, device, compiled, index, os.path.join(tmp, f"run{k}-{r}")))
            a = max(alone, key=lambda m: m["img_s"])
            b = max(loop, key=lambda m: m["img_s"])
            results.append({"compile": compiled, "model": a, "loop": b, "alone_runs": alone, "loop_runs": loop,
                            "ratio": b["img_s"] / a["img_s"], "drain": drain,
                            "same_flags": all(m["flags"] == alone[0]["flags"] for m in alone + loop)})
    return results


def met(result: dict) -> bool:
    return result["ratio"] >= TARGET and result["loop"]["data_wait"] < 0.05


def main(argv: list[str] | None = None) -> int:
    args, device = parse_args(argv)
    print(f"machine: {machine_line(device)}")
    amp = resolve_amp(args.amp, device)
    print(f"{args.model}, {args.image_size} px, batch {args.batch_size}, amp {amp}, channels_last, "
          f"{args.workers} workers, {torch.get_num_threads()} torch threads, {args.steps} timed steps after "
          f"{args.warmup} (loop: and after {drain_steps(args.workers, args.report_every)} drained batches); "
          f"flags {set_speed_flags(device)}\n")
    results = measure(args, device)
    peak = (lambda m: "n/a" if m["peak_gib"] is None else f"{m['peak_gib']:.2f}")
    rows = [["on" if r["compile"] else "off", r["model"]["img_s"], r["loop"]["img_s"], f"{r['ratio'] * 100:.1f}%",
             f"{r['loop']['data_wait'] * 100:.1f}%", peak(r["model"]), peak(r["loop"]),
             "same" if r["same_flags"] else "DIFFER",
             " ".join(f"{m['img_s']:.1f}" for m in r["alone_runs"]),
             " ".join(f"{m['img_s']:.1f}" for m in r["loop_runs"])] for r in results]
    print(table("Training throughput (images/s)",
                ["compile", "model only", "wvtui full loop", "loop / model", "data-wait",
                 "peak GiB (model)", "peak GiB (loop)", "flags", "model runs", "loop runs"], rows))
    for r, row in zip(results, rows):
        print(f"compile {row[0]}: full loop at {row[3]} of model-only, data-wait {row[4]} "
              f"(GPU target >= {TARGET * 100:.0f}%, data-wait < 5%): {'MET' if met(r) else 'NOT MET'}"
              + ("" if device.type == "cuda" else " [CPU run: the workers share the model's cores]"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
