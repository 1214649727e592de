"""Helpers shared by the benchmarks: the machine they ran on, tables, timing, a synthetic tree."""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Sequence

import torch


def cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: torch.device | None = None) -> str:
    gpu = ""
    if device is not None and device.type == "cuda":
        gpu = f", GPU {torch.cuda.get_device_name(device)}"
    return (
        f"{cpu_model()}, {cores()} cores{gpu}, torch {torch.__version__}, "
        f"python {platform.python_version()}, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}"
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return device


def set_speed_flags(device: torch.device) -> dict:
    """cudnn.benchmark and TF32 on, as the Trainer sets them, set once before any timed run.

    The Trainer sets these flags process-wide in `prepare()`; without setting them first, a
    model-only run made before the first Trainer would time other kernels than the loop after it.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return speed_flags()


def speed_flags() -> dict:
    """The global flags that choose kernels, read at the start of each timed window."""
    return {"cudnn.benchmark": torch.backends.cudnn.benchmark,
            "matmul.tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.tf32": torch.backends.cudnn.allow_tf32}


def resolve_amp(amp: str, device: torch.device) -> str:
    from core.build import resolve_amp as trainers_resolve_amp  # the benchmarks resolve --amp as the trainer does

    return trainers_resolve_amp(amp, device)


# make_loader's prefetch_factor: batches each worker may hold ready ahead of the loop.
PREFETCH_FACTOR = 4


def drain_steps(workers: int, report_every: int) -> int:
    """Batches to take without computing after warm-up, so that timing starts from an empty queue.

    During warm-up (model start, cudnn autotuning, compilation) the workers fill the loader's
    buffer: workers x prefetch_factor batches, one in the pin-memory thread and one in the
    prefetcher. A window that starts with that buffer full is partly served without waiting,
    so an input-bound loop would look faster than its loader. Taking the buffered batches and one
    more per worker without computing leaves the queue empty (the last takes waited on a worker);
    rounded up to the report cadence, by which the trainer is timed.
    """
    if workers == 0:
        return 0  # batches are made on demand in the loop itself: no queue to drain
    n = workers * (PREFETCH_FACTOR + 1) + 2
    return -(-n // report_every) * report_every


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a timer stopped after it measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable in a terminal, pasteable into RESULTS.md)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [f"### {title}", ""]
    for k, r in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if k == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(c: object) -> str:
    if isinstance(c, float):
        return f"{c:,.1f}" if abs(c) >= 100 else f"{c:.3g}"
    return str(c)


def synthetic_tree(out_dir: str, *, images: int, size: int, classes: int = 5) -> str:
    """A WebVision tree of about `images` train JPEGs whose short side is `size`, made once."""
    from core.synthetic import make_webvision

    if os.path.exists(os.path.join(out_dir, "info", "synsets.txt")):
        return out_dir
    per_query = max(1, images // (classes * 2))
    return make_webvision(
        out_dir, classes=classes, queries_per_class=2, images_per_query=per_query,
        val_per_class=2, size=size, seed=0,
    )


def webvision_index(out_dir: str, *, samples: int, short_side: int, classes: int = 10,
                    files: int = 512):
    """An index of `samples` train entries over at most `files` distinct synthetic JPEGs.

    Decoding still happens per sample; repeating files only saves the time to write them.
    """
    import numpy as np

    from core.webvision import WebVisionIndex

    root = synthetic_tree(out_dir, images=min(samples, files), size=short_side, classes=classes)
    index = WebVisionIndex.load(root, num_classes=classes)
    if len(index.train) < samples:
        index.train = index.train.select(np.resize(np.arange(len(index.train)), samples))
    return index


def trainer_throughput(config, index, *, warmup: int, steps: int, drain: int = 0,
                       model_factory=None) -> dict:
    """Images/s, data-wait, peak memory and the training process's CPU time per step (all its
    threads; workers excluded) of wvtui's Trainer over the `steps` steps after warm-up and drain.

    Steps warmup..warmup+drain take their batch without computing (see `drain_steps`), so the
    timed window starts from an empty loader queue. Timing comes from the trainer's own StepStats
    reports, each preceded by its device sync, so queued GPU work is inside the window; the peak
    memory is reset at the window's first report and read at its last, the same window the
    model-only figure uses. The run is stopped without a save right after.
    `config.report_every` must divide warmup, drain and steps.
    """
    from core.engine import Trainer
    from core.events import Command, RunError, StepStats

    import gc

    start, end = warmup + drain, warmup + drain + steps
    marks: dict[int, float] = {}
    cpu_marks: dict[int, float] = {}
    waits: list[tuple[int, float]] = []
    errors: list[str] = []
    holder = []
    window: dict = {}

    def sink(ev) -> None:
        # Called on the thread that trains, right after the report's device sync.
        if isinstance(ev, StepStats):
            now = time.perf_counter()
            marks[ev.step] = now
            cpu_marks[ev.step] = time.process_time()
            device = holder[0].device
            if ev.step == start:
                window["flags"] = speed_flags()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
            if start < ev.step <= end:
                waits.append((ev.step, ev.data_wait))
            if ev.step == end:
                if device.type == "cuda":
                    window["peak"] = torch.cuda.max_memory_allocated(device) / 2**30
                holder[0].submit(Command.STOP_NO_SAVE)
        elif isinstance(ev, RunError):
            errors.append(ev.message)

    kwargs = {"model_factory": model_factory} if model_factory is not None else {}
    trainer = Trainer(config, sink, index=index, **kwargs)
    holder.append(trainer)
    trainer.prepare()
    if drain:
        _skip_steps(trainer, after=warmup, count=drain)
    finished = trainer.run()
    if errors or start not in marks or end not in marks:
        raise RuntimeError(f"trainer run ended ({finished.reason}) without the timed reports: {errors}")
    seconds = marks[end] - marks[start]
    # Each report's data_wait is a fraction of its own window; windows hold equal step counts.
    data_wait = sum(w for _, w in waits) / max(1, len(waits))
    # The trainer's persistent workers live as long as it does: end them before the next run
    # forks its own (a fork would otherwise inherit this trainer's loader iterators).
    holder.clear()
    del trainer
    gc.collect()
    cpu = cpu_marks[end] - cpu_marks[start]
    return {"img_s": steps * config.batch_size / seconds, "data_wait": data_wait,
            "peak_gib": window.get("peak"), "seconds": seconds, "cpu_ms_per_step": 1000 * cpu / steps,
            "flags": window.get("flags")}


def _skip_steps(trainer, *, after: int, count: int) -> None:
    """Make training steps after+1..after+count take their batch and return a zero loss."""
    real = getattr(trainer, "_train_step", None)
    if real is None:
        raise RuntimeError("Trainer._train_step is gone: bench/common.py drains the queue through it")
    zero = torch.zeros((), device=trainer.device)
    calls = [0]

    def step(images, labels):
        calls[0] += 1
        if after < calls[0] <= after + count:
            return zero
        return real(images, labels)

    trainer._train_step = step


def set_threads(args, device: torch.device) -> None:
    """torch threads for the training process: --threads, else on CPU the cores workers leave."""
    if args.threads is None and device.type == "cpu":
        args.threads = max(1, cores() - args.workers)
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def add_training_args(p, *, repeats_default: int | None, repeats_help: str) -> None:
    """The flags bench/step.py and bench/engine.py share: what is trained, on what, how long."""
    from core.config import default_workers

    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--model", default=None, help="default: inception_resnet_v2 on CUDA, resnet18 on CPU")
    p.add_argument("--image-size", type=int, default=None, help="default: 299 on CUDA, 64 on CPU")
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 on CUDA, 32 on CPU")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps (default: 120 on CUDA, twice the 15 workers x 4 prefetched batches; 15 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 10 on CUDA, 5 on CPU)")
    p.add_argument("--report-every", type=int, default=None,
                   help="trainer's report cadence, and the bare loop's loss reads (default: 10 on CUDA as "
                        "in a real run, 5 on CPU)")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                   help="auto: bf16 on CUDA, off on CPU (as the trainer resolves it)")
    p.add_argument("--repeats", type=int, default=repeats_default, help=repeats_help)
    p.add_argument("--workers", type=int, default=default_workers(), help="DataLoader workers")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the training process (default on CPU: the cores the workers "
                        "leave, as more threads than free cores stall each other; on CUDA: torch's)")
    p.add_argument("--short-side", type=int, default=None,
                   help="JPEG short side (default 256 at 299 px, scaled with --image-size)")


def resolve_training_args(p, args, extra_defaults: dict | None = None) -> torch.device:
    """Fill the device-dependent defaults, check the step counts, set the thread count."""
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    defaults = {"model": "inception_resnet_v2" if cuda else "resnet18", "image_size": 299 if cuda else 64,
                "batch_size": 128 if cuda else 32, "steps": 120 if cuda else 15, "warmup": 10 if cuda else 5,
                "report_every": 10 if cuda else 5, **(extra_defaults or {})}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.short_side is None:
        args.short_side = max(args.image_size, round(args.image_size * 256 / 299))
    if min(args.steps, args.warmup, args.report_every, args.batch_size, args.image_size) < 1 or args.workers < 0:
        p.error("--steps, --warmup, --report-every, --batch-size and --image-size must be positive")
    if args.warmup % args.report_every or args.steps % args.report_every:
        p.error("--warmup and --steps must be multiples of --report-every (the trainer is timed by its reports)")
    set_threads(args, device)
    return device


def print_run_header(args, device: torch.device) -> None:
    """The machine and what the trainer benchmarks run, as their first lines."""
    print(f"machine: {machine_line(device)}")
    print(f"{args.model}, {args.image_size} px, batch {args.batch_size}, "
          f"amp {resolve_amp(args.amp, device)}, {args.workers} workers, "
          f"{torch.get_num_threads()} torch threads, {args.steps} timed steps after {args.warmup} "
          f"and {drain_steps(args.workers, args.report_every)} drained batches\n")
