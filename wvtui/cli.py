"""The `wvtui` command: parse flags, check the dataset and checkpoint, then train in the console
(a terminal on stdout) or headless (`--headless`, or stdout is a file or pipe).

Exit codes: 0 the run finished (completed, or stopped by a command); 1 the run failed (error,
non-finite loss); 2 bad arguments, dataset or checkpoint (one line on stderr, no traceback);
128+N stopped by signal N once the checkpoint is on disk.

Signals: SIGINT, SIGTERM and SIGHUP stop the run after a checkpoint (a second SIGINT while
stopping exits at once); SIGUSR1 saves a checkpoint and goes on. In the console, SIGHUP (the
SSH connection dropped) is not a stop: the app closes and the same run continues headless,
logging to OUT/console.log.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import queue
import signal
import sys
import threading
import time
from typing import Any, Sequence

from core.config import TrainConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class UsageError(Exception):
    """Bad input found by the CLI itself; printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage block
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def build_parser() -> argparse.ArgumentParser:
    d = _DEFAULTS
    p = _Parser(
        prog="wvtui",
        description="Train an image classifier on WebVision in a terminal console, or headless.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
Options left out take the reference recipe's values (the demo's, with --demo).

The console is used when stdout is a terminal; --headless, or a pipe or file,
prints log lines instead. Both write OUT/config.json, OUT/metrics.jsonl and
OUT/checkpoints/{last,best}.pt.

Signals: SIGINT, SIGTERM, SIGHUP stop after saving a checkpoint (a second
SIGINT exits at once); SIGUSR1 saves a checkpoint and goes on. In the console a
hang-up (SSH dropped) does not stop the run: it continues headless, logging to
OUT/console.log; run wvtui inside tmux to reattach to the console.

Exit codes: 0 finished, 1 failed (error, non-finite loss), 2 bad arguments,
dataset or checkpoint, 128+N stopped by signal N with the checkpoint on disk.""",
    )
    # default=None everywhere: a flag the user did not give is absent, so --demo's settings
    # apply underneath and explicit flags still win.
    a = p.add_argument
    a("--root", metavar="DIR", help="WebVision root (holds info/, google/, val_images_256/); not needed with --demo")
    a("--num-classes", type=int, metavar="N", help=f"train on the first N classes (default {d['num_classes']})")
    a("--epochs", type=int, metavar="N", help=f"default {d['epochs']}")
    a("--batch-size", type=int, metavar="N", help=f"images per step per process (default {d['batch_size']})")
    a("--lr", type=float, metavar="LR", help=f"SGD learning rate (default {d['lr']})")
    a("--momentum", type=float, metavar="M", help=f"default {d['momentum']}")
    a("--weight-decay", type=float, metavar="WD", help=f"default {d['weight_decay']}")
    a("--milestones", type=int, nargs="*", metavar="EPOCH",
      help="epochs at which the learning rate is multiplied by --gamma (default "
      + " ".join(map(str, d["milestones"])) + ")")
    a("--gamma", type=float, help=f"default {d['gamma']}")
    a("--model", metavar="NAME",
      help=f"inception_resnet_v2 or a torchvision classification model, e.g. resnet50 (default {d['model']})")
    a("--image-size", type=int, metavar="PX", help=f"training crop size (default {d['image_size']})")
    a("--workers", type=int, metavar="N", help="DataLoader processes (default: one per core, minus one, up to 16)")
    a("--device", metavar="auto|cpu|cuda", help="default auto (CUDA when available)")
    a("--amp", choices=("auto", "bf16", "fp16", "off"), help="mixed precision (default auto: bf16 on CUDA, off on CPU)")
    a("--seed", type=int, help=f"default {d['seed']}")
    a("--out", metavar="DIR", help="run directory (default runs/<YYYYmmdd-HHMMSS>/)")
    a("--resume", metavar="PATH|auto", help="continue from a checkpoint file, or 'auto': the newest one in --out")
    a("--headless", action="store_true", default=None, help="plain log lines instead of the console")
    a("--demo", action="store_true", help="train on a generated synthetic dataset (cached) that learns in minutes on a CPU")
    a("--compile", action="store_true", default=None, help="torch.compile the model")
    a("--flickr", dest="use_flickr", action="store_true", default=None, help="also train on the Flickr images")
    a("--steps-per-epoch", dest="max_steps_per_epoch", type=_positive_int, metavar="N",
      help="cap the steps of each epoch (quick runs)")
    a("--val-batches", dest="max_val_batches", type=_positive_int, metavar="N",
      help="cap the batches of each evaluation (quick runs)")
    a("--report-every", type=_positive_int, metavar="N",
      help=f"report the loss every N steps (or ~{d['report_interval_s']}s, whichever is later; default {d['report_every']})")
    return p


# Flags that are CLI behaviour, not TrainConfig fields.
_NOT_CONFIG = {"headless", "demo"}


def _default_out() -> str:
    base = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    out, n = base, 1
    while os.path.exists(out):  # two runs started in the same second
        out, n = f"{base}-{n}", n + 1
    return out


def _run_dir_of(checkpoint: str) -> str | None:
    """OUT for OUT/checkpoints/x.pt when OUT looks like a run directory."""
    ckdir = os.path.dirname(os.path.abspath(checkpoint))
    out = os.path.dirname(ckdir)
    if os.path.basename(ckdir) == "checkpoints" and os.path.isfile(os.path.join(out, "config.json")):
        return out
    return None


def resolve_config(args: argparse.Namespace, log=None) -> TrainConfig:
    """TrainConfig from TrainConfig defaults < demo settings < explicit flags."""
    values: dict[str, Any] = {}
    if args.demo:
        from wvtui import demo

        values.update(demo.CONFIG)
        values["demo"] = True
        if args.root is None:
            try:
                values["root"] = demo.ensure_dataset(log=log)
            except OSError as exc:
                raise UsageError(f"--demo: cannot prepare the demo dataset: {exc}") from None
    for key, value in vars(args).items():
        if key not in _NOT_CONFIG and value is not None:
            values[key] = value
    if "root" not in values:
        raise UsageError("--root DIR is required (or --demo for a generated dataset)")
    if "milestones" in values:
        values["milestones"] = tuple(values["milestones"])

    if values.get("resume") not in (None, "auto"):
        resume = values["resume"]
        if not os.path.exists(resume):
            raise UsageError(f"--resume: no such file: {resume}")
        if os.path.isdir(resume):
            raise UsageError(f"--resume: {resume} is a directory; give a checkpoint file, or --out {resume} --resume auto")
        # Continue in the run directory the checkpoint belongs to, unless told otherwise.
        values.setdefault("out", _run_dir_of(resume))
    if values.get("resume") == "auto" and not values.get("out"):
        raise UsageError("--resume auto needs --out DIR (the run directory to continue)")
    if not values.get("out"):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("--out DIR is required with several processes, so that all ranks write one run directory")
        values["out"] = _default_out()

    cfg = TrainConfig(**values)  # ValueError -> exit 2
    _check_out(cfg.out)
    _check_model(cfg.model)
    _check_device(cfg.device)
    return cfg


def _check_out(out: str) -> None:
    """Fail now, not at the first write minutes later; and create nothing for a run that may not start."""
    existing = os.path.abspath(out)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"--out {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {existing} is not writable")


def _check_model(name: str) -> None:
    from core.model import available_models

    if name.strip().lower() not in available_models():
        raise UsageError(
            f"--model: unknown model {name!r}; use inception_resnet_v2, resnet18, resnet50, "
            "efficientnet_b0 or another torchvision classification model"
        )


def _check_device(device: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
    if ":" in device:
        try:
            index = int(device.split(":", 1)[1])
        except ValueError:
            raise UsageError(f"--device {device}: expected cuda:N") from None
        if not 0 <= index < torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


class _Outcome:
    """Sink that remembers what the exit code depends on: did the latest checkpoint save succeed?"""

    def __init__(self) -> None:
        self.saved_path: str | None = None
        self.last_save_failed = False

    def __call__(self, event) -> None:
        from core.events import CheckpointSaved, RunError

        if isinstance(event, CheckpointSaved):
            self.saved_path, self.last_save_failed = event.path, False
        elif isinstance(event, RunError) and event.kind == "checkpoint":
            self.last_save_failed = True

    @property
    def checkpoint_on_disk(self) -> bool:
        return self.saved_path is not None and not self.last_save_failed and os.path.exists(self.saved_path)


class SignalBridge:
    """Turns signals into trainer commands.

    The Python-level handler only records the signal in a SimpleQueue (whose put is safe to call
    re-entrantly, i.e. from a handler interrupting the same thread) and a thread acts on it. So a
    handler never takes a lock that the interrupted main-thread code (Textual's loop, or a key
    press submitting a command) might hold.
    """

    def __init__(self, trainer, runner, *, console=None, outcome=None) -> None:
        self.trainer = trainer
        self.runner = runner
        self.outcome = outcome
        self.app_returned = threading.Event()
        self.console = console  # _Console while the Textual app owns the terminal, else None
        self.stop_signal: int | None = None
        self.detached = threading.Event()
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._previous: dict[int, Any] = {}
        self._thread = threading.Thread(target=self._dispatch, name="wvtui-signals", daemon=True)

    def install(self) -> None:
        for sig in (*STOP_SIGNALS, signal.SIGUSR1):
            previous = signal.getsignal(sig)
            # An inherited "ignore" is a user's choice (nohup, `cmd &` in a script): keep it.
            if previous is signal.SIG_IGN and sig in (signal.SIGHUP, signal.SIGINT):
                continue
            self._previous[sig] = previous
            signal.signal(sig, self._handler)
        self._thread.start()

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handler(self, signum: int, frame) -> None:
        if signum == signal.SIGHUP and self.console is not None and not self.detached.is_set():
            # The terminal is gone: every write to it now fails with EIO, and Textual's writer
            # thread dying on one would block the app on its full output queue. Point the fds
            # elsewhere right here, before anything else writes.
            self.console.redirect_fds()
        elif signum in STOP_SIGNALS and self.stop_signal is None:
            if not (signum == signal.SIGHUP and self.detached.is_set()):
                self.stop_signal = signum
        self._queue.put(signum)

    def _dispatch(self) -> None:
        from core.events import Command

        stopping = False
        while True:
            signum = self._queue.get()
            name = signal.Signals(signum).name
            if signum == signal.SIGUSR1:
                self._say(f"{name}: saving a checkpoint")
                self.trainer.submit(Command.CHECKPOINT, reason="signal")
            elif signum == signal.SIGHUP and self.console is not None and not self.detached.is_set():
                self.detached.set()
                self.trainer.submit(Command.CHECKPOINT, reason="hangup")
                self.console.detach()
                threading.Thread(target=self._hangup_watchdog, daemon=True).start()
            elif signum == signal.SIGHUP and self.detached.is_set():
                # The kernel and the login shell both send a hang-up when SSH drops.
                self._say("SIGHUP: already running headless after a hang-up; ignored (use SIGTERM to stop)")
            elif stopping and signum == signal.SIGINT:
                self._say("SIGINT again: exiting now without waiting for the checkpoint")
                if self.console is not None and not self.detached.is_set():
                    self.console.exit_app()
                time.sleep(0.5)  # let Textual restore the terminal
                os._exit(128 + signum)
            elif not stopping:
                stopping = True
                self._say(f"{name}: stopping after a checkpoint (SIGINT again to exit at once)")
                self.trainer.submit(Command.STOP, reason="signal")
                if self.console is not None and not self.detached.is_set():
                    # The console would otherwise stay open on the finished run.
                    threading.Thread(target=self._close_console_when_done, daemon=True).start()

    def _hangup_watchdog(self) -> None:
        # Should Textual's loop stay stuck on the dead terminal, the finished run must still
        # end the process with its exit code.
        self.runner.join()
        if not self.app_returned.wait(20.0):
            code = _exit_code(self.runner, self.outcome, self)
            print(f"wvtui: the console did not close after the hang-up; exiting with {code}", flush=True)
            os._exit(code)

    def _close_console_when_done(self) -> None:
        self.runner.join()
        if not self.detached.is_set():
            self.console.exit_app()

    def _say(self, message: str) -> None:
        if self.console is not None and not self.detached.is_set():
            self.console.notify(message)
        elif self.console is not None and self.console.log_file is not None and not self.app_returned.is_set():
            self.console.log_file.write(f"wvtui: {message}\n")
        else:
            print(f"wvtui: {message}", file=sys.stderr, flush=True)


def _exit_code(runner, outcome: _Outcome, bridge: SignalBridge) -> int:
    result = runner.result
    if runner.crash is not None or result is None:
        return EXIT_FAILED
    if result.reason == "completed":
        return EXIT_OK
    if result.reason == "stopped":
        if bridge.stop_signal is None:
            return EXIT_OK
        # Only rank 0 writes checkpoints and sees CheckpointSaved; the others trust its result.
        on_disk = outcome.checkpoint_on_disk or not getattr(runner.trainer, "is_main", True)
        return 128 + bridge.stop_signal if on_disk else EXIT_FAILED
    return EXIT_FAILED


def _wait(runner) -> None:
    # Short joins: the main thread must come back to Python regularly to run signal handlers.
    while not runner.join(0.2):
        pass


class _Console:
    """The Textual app's side of a hang-up."""

    def __init__(self, app, relay, trainer, out_dir: str) -> None:
        self.app = app
        self.relay = relay
        self.trainer = trainer
        self.log_path = os.path.join(out_dir, "console.log")
        self.log_file = None

    def redirect_fds(self) -> None:
        """Called from the SIGHUP handler: fds 0-2 to /dev/null. Textual draws on stderr, and
        its last frames, written after the hang-up, would only fill the log with escape codes."""
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)

    def after_app(self) -> None:
        """Once the app has gone, stdout and stderr (messages, any traceback) go to the log."""
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)

    def detach(self) -> None:
        from core.events import RunState
        from wvtui.headless import HeadlessPrinter

        self.log_file = open(self.log_path, "a", buffering=1, encoding="utf-8")
        t = self.trainer
        self.log_file.write(
            f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} terminal hung up (SIGHUP) at epoch {t.epoch + 1}, "
            f"step {t.step}: the console closed, the run continues headless ---\n"
        )
        self.relay.attach(HeadlessPrinter(self.log_file, epochs=t.config.epochs, current_epoch=t.epoch))
        # Nobody is left to resume a pause: a non-finite loss now ends the run, as headless.
        t.nonfinite_action = "stop"
        if t.state == RunState.PAUSED:
            self.log_file.write(
                f"The run was paused and stays paused. `kill -TERM {os.getpid()}` stops it after a checkpoint;\n"
                f"`wvtui --root ... --out {t.out_dir} --resume auto` continues it later.\n"
            )
        self.exit_app()

    def exit_app(self) -> None:
        # TrainingApp.detach() ends the UI without stopping the run, from any thread.
        self.app.detach()

    def notify(self, message: str) -> None:
        try:
            self.app.notify(message, timeout=10)  # thread-safe in Textual
        except RuntimeError:
            print(f"wvtui: {message}", file=sys.stderr, flush=True)


def _setup(cfg: TrainConfig, headless: bool):
    from core.webvision import WebVisionIndex

    index = WebVisionIndex.load(cfg.root, num_classes=cfg.num_classes, use_flickr=cfg.use_flickr)

    from core.engine import Trainer
    from core.events import fanout
    from core.runlog import RunLog
    from wvtui.runner import Relay

    relay = Relay()
    outcome = _Outcome()
    # Only rank 0 writes the run directory: under torchrun the other ranks still emit their
    # RunError/RunFinished, which would land in the same metrics.jsonl. (distributed helper)
    runlog = (RunLog(cfg.out),) if int(os.environ.get("RANK", "0")) == 0 else ()
    trainer = Trainer(
        cfg, fanout(*runlog, outcome, relay), index=index,
        nonfinite_action="stop" if headless else "pause",
    )
    trainer.prepare()
    return trainer, relay, outcome, index


def _run_headless(trainer, relay, outcome) -> int:
    from wvtui.headless import HeadlessPrinter
    from wvtui.runner import TrainerRunner

    relay.attach(HeadlessPrinter(sys.stdout))
    runner = TrainerRunner(trainer, on_crash=relay)
    bridge = SignalBridge(trainer, runner)
    bridge.install()
    try:
        runner.start()
        _wait(runner)
    finally:
        bridge.restore()
    return _exit_code(runner, outcome, bridge)


def _run_console(trainer, relay, outcome, cfg: TrainConfig, index) -> int:
    from wvtui.app import TrainingApp
    from wvtui.runner import TrainerRunner

    runner = TrainerRunner(trainer, on_crash=relay)
    app = TrainingApp(trainer=trainer, runner=runner, relay=relay, demo=cfg.demo, index=index)
    console = _Console(app, relay, trainer, cfg.out)
    bridge = SignalBridge(trainer, runner, console=console, outcome=outcome)
    bridge.install()
    console_failed = False
    try:
        try:
            app.run()
        except Exception as exc:  # the trainer thread must still be stopped, or the process never exits
            console_failed = True
            print(f"wvtui: error: the console failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        console_failed = console_failed or bool(app.return_code)
        bridge.app_returned.set()
        if runner.is_alive() and not bridge.detached.is_set():
            # The app ended without ending the run. A hang-up whose signal is still on its way
            # (Textual saw the dead terminal first) must not stop it; anything else does.
            bridge.detached.wait(1.0)
            if not bridge.detached.is_set():
                from core.events import Command

                print("wvtui: the console closed; stopping the run after a checkpoint", file=sys.stderr, flush=True)
                trainer.submit(Command.STOP)
        if bridge.detached.is_set():
            console.after_app()
        _wait(runner)
    finally:
        bridge.restore()
    if runner.crash is not None and not bridge.detached.is_set():
        print(f"wvtui: error: trainer crashed: {type(runner.crash).__name__}: {runner.crash}", file=sys.stderr)
    code = _exit_code(runner, outcome, bridge)
    # After a hang-up the console's own end (it may panic on the dead terminal) is no failure.
    return EXIT_FAILED if code == EXIT_OK and console_failed and not bridge.detached.is_set() else code


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's one-line error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    rank = int(os.environ.get("RANK", "0"))
    headless = bool(args.headless) or not sys.stdout.isatty() or rank != 0

    def log(message: str) -> None:
        print(f"wvtui: {message}", file=sys.stderr, flush=True)

    from core.checkpoint import CheckpointError
    from core.webvision import DatasetError

    try:
        cfg = resolve_config(args, log=log)
        trainer, relay, outcome, index = _setup(cfg, headless)
    except (UsageError, DatasetError, CheckpointError, ValueError) as exc:
        if os.environ.get("WVTUI_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"wvtui: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # e.g. an --out that cannot be created
        where = f": {exc.filename}" if exc.filename else ""
        print(f"wvtui: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("wvtui: interrupted before training started", file=sys.stderr)
        return 128 + signal.SIGINT

    if headless:
        return _run_headless(trainer, relay, outcome)
    return _run_console(trainer, relay, outcome, cfg, index)
