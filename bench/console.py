"""What the console costs the trainer: steps/s of the same short run with and without the app,
and with 0 and with N consoles attached over the run's control socket.

    python bench/console.py [--steps 40] [--repeats 3] [--model resnet18] [--image-size 64]
                            [--batch-size 16] [--workers 2] [--device auto] [--report-every 10]
                            [--attached 3]
    python -m bench.console --device cuda --model inception_resnet_v2 --image-size 299 --batch-size 128

Both runs happen in this process on the same synthetic dataset (made once in a temp dir) with
the same configuration, each wired by `wvtui.session.Session` as the CLI wires it: "headless"
attaches a headless printer to the run's relay; "console" attaches `TrainingApp` instead,
running under `App.run_test` (a real
Textual app with a headless driver, redraw timer and telemetry sampling on). Throughput is
measured between the first and the last step report, so start-up and the end-of-epoch
evaluation are left out of both. Runs alternate to spread drift; the medians are compared.
Target: the console costs under 3% of the steps/s.

Attached: the run is headless and serves its control endpoint, as every run does; "0 attached"
trains with nobody connected, "N attached" starts N real `wvtui attach OUT` processes, each on
its own pseudo-terminal (120x40, its output drained), waits until the endpoint counts N clients,
then trains; "N socket readers" attaches N clients that read every message and draw nothing
(the endpoint's own cost, apart from the consoles' drawing). Each is paired with the 0-attached
run of its round. Target: N=3 consoles cost under 1% of the steps/s. The consoles' own CPU (other processes) is printed too:
on a machine with fewer spare cores than consoles, that CPU is taken from the trainer's workers.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import io
import os
import pty
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

import psutil

if __package__ in (None, ""):  # run as `python bench/console.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bench.common import cores, webvision_index  # noqa: E402
from core.config import TrainConfig  # noqa: E402
from core.events import StepStats  # noqa: E402
from core.webvision import WebVisionIndex  # noqa: E402
from wvtui.app import TrainingApp  # noqa: E402
from wvtui.headless import HeadlessPrinter  # noqa: E402
from wvtui.session import Session  # noqa: E402
from wvtui.transport import LocalTransport  # noqa: E402


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


def make_session(args, root: str, index: WebVisionIndex, out: str, *, headless: bool) -> tuple[Session, StepClock]:
    """A run wired as the CLI wires it (run log, relay, runner thread), with a step clock as an extra sink."""
    cfg = TrainConfig(root=root, num_classes=args.classes, epochs=1, batch_size=args.batch_size,
                      model=args.model, image_size=args.image_size, workers=args.workers, device=args.device,
                      amp=args.amp, report_every=args.report_every, report_interval_s=args.report_interval_s,
                      max_steps_per_epoch=args.steps, max_val_batches=1, out=out, seed=0)
    clock = StepClock()
    session = Session(cfg, sinks=(clock,), index=index, nonfinite_action="stop" if headless else "pause")
    session.prepare()
    return session, clock


def _completed(session: Session, what: str) -> None:
    result = session.runner.result
    if result is None or result.reason != "completed":
        raise SystemExit(f"{what} run ended with {result or session.runner.crash}")


def run_headless(args, root, index, out) -> float:
    session, clock = make_session(args, root, index, out, headless=True)
    session.relay.attach(HeadlessPrinter(io.StringIO()))
    session.run()
    _completed(session, "headless")
    return clock.steps_per_s()


def run_console(args, root, index, out) -> tuple[float, float]:
    """(steps/s, CPU seconds the UI thread used per wall second)."""
    session, clock = make_session(args, root, index, out, headless=False)
    app = TrainingApp(transport=LocalTransport(session), index=session.index)
    ui_cpu = 0.0

    async def drive() -> None:
        nonlocal ui_cpu
        async with app.run_test(headless=True, size=(120, 40)):
            # The app's event loop runs in this thread: its CPU time is what the UI itself used.
            t0 = time.thread_time()
            while session.runner.is_alive() or session.runner.result is None and session.runner.crash is None:
                await asyncio.sleep(0.05)
            ui_cpu = time.thread_time() - t0

    t_wall = time.perf_counter()
    asyncio.run(drive())
    t_wall = time.perf_counter() - t_wall
    session.runner.join()
    _completed(session, "console")
    return clock.steps_per_s(), ui_cpu / t_wall


def _spawn_console(out: str, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """`wvtui attach OUT` on its own pseudo-terminal (120x40); the caller drains the master fd."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "wvtui", "attach", out], stdin=slave, stdout=slave,
                            stderr=slave, env=env, start_new_session=True, close_fds=True)
    os.close(slave)
    return proc, master


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:  # EIO once the console has exited
        pass


# A client that reads every message and draws nothing: what the endpoint itself costs the run.
READER = ("import sys\nfrom core.client import ControlClient\nc = ControlClient(sys.argv[1])\n"
          "while c.recv(None) is not None:\n    pass\n")


def run_attached(args, root, index, out, consoles: int, kind: str = "console") -> tuple[float, float]:
    """(steps/s with `consoles` attached, their CPU seconds per wall second, all together).
    kind: "console" (`wvtui attach` on a pty) or "reader" (a socket client that only reads)."""
    session, clock = make_session(args, root, index, out, headless=True)
    session.relay.attach(HeadlessPrinter(io.StringIO()))
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": REPO}
    try:
        for _ in range(consoles):
            if kind == "console":
                proc, master = _spawn_console(out, env)
                threading.Thread(target=_drain, args=(master,), daemon=True).start()
            else:
                proc = subprocess.Popen([sys.executable, "-c", READER, out], env=env, stdout=subprocess.DEVNULL)
            procs.append(proc)
        deadline = time.monotonic() + 120
        while session.endpoint.clients < consoles:
            dead = [p.pid for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise SystemExit(f"only {session.endpoint.clients} of {consoles} consoles attached "
                                 f"(exited: {dead or 'none'})")
            time.sleep(0.05)
        cpu0 = sum(_cpu(p.pid) for p in procs)
        t0 = time.perf_counter()
        session.run()
        wall = time.perf_counter() - t0
        cpu = sum(_cpu(p.pid) for p in procs) - cpu0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        session.close()
    _completed(session, f"{consoles}-attached")
    return clock.steps_per_s(), cpu / wall


def sink_cost(clients: int, events: int = 3000) -> float:
    """Seconds the trainer's thread spends per step report in the history and the endpoint
    (their share of the run's sink), with `clients` socket readers attached in other processes."""
    from core.endpoint import ControlEndpoint
    from core.history import RunHistory

    with tempfile.TemporaryDirectory(prefix="wvtui-sink-") as out:
        history = RunHistory(out)
        endpoint = ControlEndpoint(out, history, lambda *a: None)
        endpoint.start()
        env = {**os.environ, "PYTHONPATH": REPO}
        procs = [subprocess.Popen([sys.executable, "-c", READER, out], env=env, stdout=subprocess.DEVNULL)
                 for _ in range(clients)]
        try:
            deadline = time.monotonic() + 60
            while endpoint.clients < clients and time.monotonic() < deadline:
                time.sleep(0.05)
            ticks = [StepStats(epoch=1, step=i, epoch_step=i, steps_per_epoch=events, total_steps=events,
                               loss=1.0, last_loss=1.0, lr=0.1, img_per_s=350.0, data_wait=0.01, eta_epoch_s=1.0,
                               eta_run_s=1.0, elapsed_s=float(i), bad_images=0) for i in range(events)]
            t0 = time.perf_counter()
            for tick in ticks:
                history(tick)
                endpoint(tick)
            return (time.perf_counter() - t0) / events
        finally:
            endpoint.close()
            for p in procs:
                p.wait(10)


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--report-every", type=int, default=TrainConfig.report_every)
    p.add_argument("--report-interval-s", type=float, default=TrainConfig.report_interval_s)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--attached", type=int, default=3, help="consoles attached over the socket (0: skip)")
    args = p.parse_args(argv)
    if min(args.steps, args.repeats, args.batch_size, args.report_every, args.classes) < 1:
        p.error("--steps, --repeats, --batch-size, --report-every and --classes must be positive")
    if args.steps < 2 * args.report_every:
        p.error("--steps must be at least twice --report-every: the run is timed between step reports")
    return args


def measure(args: argparse.Namespace, log=print) -> dict:
    """Paired rounds of headless and console runs: steps/s of each and the UI thread's CPU load."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="wvtui-bench-") as tmp:
        # Files repeat in the index: decoding still happens per sample, only writing is saved.
        index = webvision_index(os.path.join(tmp, "data"), samples=(args.steps + 1) * args.batch_size,
                                short_side=max(args.image_size + 8, 48), classes=args.classes,
                                files=min(512, (args.steps + 1) * args.batch_size))
        root = index.root
        log(f"{args.model} {args.image_size}px batch {args.batch_size}, {args.steps} steps, "
            f"{args.workers} workers, device {args.device}, amp {args.amp}, report every {args.report_every} "
            f"steps / {args.report_interval_s}s; {len(index.train):,} train images")
        run_headless(args, root, index, os.path.join(tmp, "warmup"))  # first-touch costs, caches
        headless, console, ui_load, served, attached, attached_cpu, readers = [], [], [], [], [], [], []
        for i in range(args.repeats):
            if args.attached:
                served.append(run_attached(args, root, index, os.path.join(tmp, f"served{i}"), 0)[0])
                steps, cpu = run_attached(args, root, index, os.path.join(tmp, f"attached{i}"), args.attached)
                attached.append(steps)
                attached_cpu.append(cpu)
                readers.append(run_attached(args, root, index, os.path.join(tmp, f"readers{i}"), args.attached,
                                            kind="reader")[0])
                log(f"  round {i + 1}: 0 attached {served[-1]:8.2f} steps/s   {args.attached} consoles "
                    f"{attached[-1]:8.2f} steps/s (their CPU {100 * cpu:.1f}% of a core)   {args.attached} "
                    f"socket readers {readers[-1]:8.2f} steps/s")
            headless.append(run_headless(args, root, index, os.path.join(tmp, f"headless{i}")))
            steps, load = run_console(args, root, index, os.path.join(tmp, f"console{i}"))
            console.append(steps)
            ui_load.append(load)
            log(f"  round {i + 1}: headless {headless[-1]:8.2f} steps/s   console {console[-1]:8.2f} steps/s"
                f"   UI thread {100 * load:.1f}% of a core")
    # Each console run is paired with the headless run just before it, so slow drift in the
    # machine's load cancels in the ratio.
    ratio = statistics.median(ci / hi for ci, hi in zip(console, headless))
    m = {"headless": statistics.median(headless), "console": statistics.median(console), "ratio": ratio,
         "cost_pct": 100.0 * (1.0 - ratio), "ui_load": statistics.median(ui_load), "repeats": args.repeats}
    if args.attached:
        a_ratio = statistics.median(a / s for a, s in zip(attached, served))
        r_ratio = statistics.median(r / s for r, s in zip(readers, served))
        m.update(served=statistics.median(served), attached=statistics.median(attached), attached_ratio=a_ratio,
                 attached_cost_pct=100.0 * (1.0 - a_ratio), attached_cpu=statistics.median(attached_cpu),
                 readers=statistics.median(readers), readers_ratio=r_ratio, readers_cost_pct=100.0 * (1.0 - r_ratio),
                 consoles=args.attached)
    return m


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    m = measure(args, log=lambda line: print(line, flush=True))
    cost = m["cost_pct"]
    print(f"headless {m['headless']:8.2f} steps/s (median of {args.repeats})")
    print(f"console  {m['console']:8.2f} steps/s (median of {args.repeats})")
    print(f"console/headless = {m['ratio']:.3f} (median of paired rounds)  -> console costs {cost:+.1f}% "
          f"throughput ({'within' if cost < 3.0 else 'OVER'} the 3% target)")
    print(f"UI thread CPU: {100 * m['ui_load']:.1f}% of one core (median), the upper bound of "
          f"what the console can take from a CPU-bound trainer")
    if args.attached:
        idle, served = sink_cost(0), sink_cost(args.attached)
        print(f"history + endpoint per step report, on the trainer's thread: {1e6 * idle:.0f} µs with no client, "
              f"{1e6 * served:.0f} µs with {args.attached} socket readers; at InceptionResNetV2's ~3 steps/s and a "
              f"report every {args.report_every} steps that is {100 * served * 3 / args.report_every:.4f}% of the "
              f"trainer's time")
        n, a_cost = m["consoles"], m["attached_cost_pct"]
        print(f"0 attached {m['served']:8.2f} steps/s, {n} attached {m['attached']:8.2f} steps/s (medians)")
        print(f"{n} attached / 0 attached = {m['attached_ratio']:.3f} (median of paired rounds)  -> {n} consoles "
              f"cost {a_cost:+.1f}% throughput ({'within' if a_cost < 1.0 else 'OVER'} the 1% target); "
              f"the {n} console processes used {100 * m['attached_cpu']:.1f}% of a core together")
        r_cost = m["readers_cost_pct"]
        print(f"{n} socket readers / 0 attached = {m['readers_ratio']:.3f}  -> the endpoint serving {n} clients "
              f"costs {r_cost:+.1f}% throughput ({'within' if r_cost < 1.0 else 'OVER'} the 1% target); the rest of "
              f"the consoles' cost is their drawing, on this machine's {cores()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
