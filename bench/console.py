"""What the console costs the trainer: steps/s of the same short run with and without the app.

    python bench/console.py [--steps 40] [--repeats 3] [--model resnet18] [--image-size 64]
                            [--batch-size 16] [--workers 2] [--device auto] [--report-every 10]

Both runs happen in this process on the same synthetic dataset (made once in a temp dir) with
the same configuration: "headless" sends the events to the run log and a headless printer;
"console" sends the same events to `TrainingApp` as well, running under `App.run_test` (a real
Textual app with a headless driver, redraw timer and telemetry sampling on). Throughput is
measured between the first and the last step report, so start-up and the end-of-epoch
evaluation are left out of both. Runs alternate to spread drift; the medians are compared.
Target: the console costs under 3% of the steps/s.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.config import TrainConfig  # noqa: E402
from core.engine import Trainer  # noqa: E402
from core.events import StepStats, fanout  # noqa: E402
from core.runlog import RunLog  # noqa: E402
from core.synthetic import make_webvision  # noqa: E402
from core.webvision import WebVisionIndex  # noqa: E402
from wvtui.app import TrainingApp  # noqa: E402
from wvtui.headless import HeadlessPrinter  # noqa: E402
from wvtui.runner import Relay, TrainerRunner  # noqa: E402


class StepClock:
    """Sink noting when each step report arrives; steps/s between the first and the last."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []
        self._lock = threading.Lock()

    def __call__(self, event) -> None:
        if isinstance(event, StepStats):
            with self._lock:
                self.marks.append((time.perf_counter(), event.step))

    def steps_per_s(self) -> float:
        if len(self.marks) < 2:
            raise SystemExit("too few step reports to time: raise --steps or lower --report-every")
        (t0, s0), (t1, s1) = self.marks[0], self.marks[-1]
        return (s1 - s0) / (t1 - t0)


def make_trainer(args, root: str, index: WebVisionIndex, out: str, extra_sink) -> tuple[Trainer, StepClock]:
    cfg = TrainConfig(root=root, num_classes=args.classes, epochs=1, batch_size=args.batch_size,
                      model=args.model, image_size=args.image_size, workers=args.workers, device=args.device,
                      report_every=args.report_every, report_interval_s=args.report_interval_s,
                      max_steps_per_epoch=args.steps, max_val_batches=1, out=out, seed=0)
    clock = StepClock()
    trainer = Trainer(cfg, fanout(RunLog(out), clock, extra_sink), index=index)
    trainer.prepare()
    return trainer, clock


def run_headless(args, root, index, out) -> float:
    trainer, clock = make_trainer(args, root, index, out, HeadlessPrinter(io.StringIO()))
    # The same thread arrangement as the console run, so that only the app differs.
    runner = TrainerRunner(trainer)
    runner.start()
    runner.join()
    if runner.result is None or runner.result.reason != "completed":
        raise SystemExit(f"headless run ended with {runner.result or runner.crash}")
    return clock.steps_per_s()


def run_console(args, root, index, out) -> tuple[float, float]:
    """(steps/s, CPU seconds the UI thread used per wall second)."""
    relay = Relay()
    trainer, clock = make_trainer(args, root, index, out, fanout(HeadlessPrinter(io.StringIO()), relay))
    runner = TrainerRunner(trainer, on_crash=relay)
    app = TrainingApp(trainer=trainer, runner=runner, relay=relay, index=index)

    ui_cpu = 0.0

    async def drive() -> None:
        nonlocal ui_cpu
        async with app.run_test(headless=True, size=(120, 40)):
            # The app's event loop runs in this thread: its CPU time is what the UI itself used.
            t0 = time.thread_time()
            while runner.is_alive():
                await asyncio.sleep(0.05)
            ui_cpu = time.thread_time() - t0

    t_wall = time.perf_counter()
    asyncio.run(drive())
    t_wall = time.perf_counter() - t_wall
    runner.join()
    if runner.result is None or runner.result.reason != "completed":
        raise SystemExit(f"console run ended with {runner.result or runner.crash}")
    return clock.steps_per_s(), ui_cpu / t_wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--report-every", type=int, default=TrainConfig.report_every)
    p.add_argument("--report-interval-s", type=float, default=TrainConfig.report_interval_s)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="wvtui-bench-") as tmp:
        per_class = max(8, (args.steps * args.batch_size) // args.classes + args.batch_size)
        root = make_webvision(os.path.join(tmp, "data"), classes=args.classes, queries_per_class=2,
                              images_per_query=(per_class + 1) // 2, val_per_class=4,
                              size=max(args.image_size + 8, 48), seed=0)
        index = WebVisionIndex.load(root, num_classes=args.classes)
        print(f"{args.model} {args.image_size}px batch {args.batch_size}, {args.steps} steps, "
              f"{args.workers} workers, device {args.device}, report every {args.report_every} steps / "
              f"{args.report_interval_s}s; {len(index.train):,} train images", flush=True)
        run_headless(args, root, index, os.path.join(tmp, "warmup"))  # first-touch costs, caches
        headless, console, ui_load = [], [], []
        for i in range(args.repeats):
            headless.append(run_headless(args, root, index, os.path.join(tmp, f"headless{i}")))
            steps, load = run_console(args, root, index, os.path.join(tmp, f"console{i}"))
            console.append(steps)
            ui_load.append(load)
            print(f"  round {i + 1}: headless {headless[-1]:8.2f} steps/s   console {console[-1]:8.2f} steps/s"
                  f"   UI thread {100 * load:.1f}% of a core", flush=True)

    h, c = statistics.median(headless), statistics.median(console)
    # Each console run is paired with the headless run just before it, so slow drift in the
    # machine's load cancels in the ratio.
    ratio = statistics.median(ci / hi for ci, hi in zip(console, headless))
    cost = 100.0 * (1.0 - ratio)
    print(f"headless {h:8.2f} steps/s (median of {args.repeats})")
    print(f"console  {c:8.2f} steps/s (median of {args.repeats})")
    print(f"console/headless = {ratio:.3f} (median of paired rounds)  -> console costs {cost:+.1f}% "
          f"throughput ({'within' if cost < 3.0 else 'OVER'} the 3% target)")
    print(f"UI thread CPU: {100 * statistics.median(ui_load):.1f}% of one core (median), the upper bound of "
          f"what the console can take from a CPU-bound trainer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
