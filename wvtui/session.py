"""One training run, wired: trainer, run log, relay, runner thread, signal policy, exit status.

The CLI, the tests and the benchmarks build a run the same way:

    session = Session(cfg, sinks=(recorder,))      # loads the index; nothing trains yet
    session.prepare()                               # data, model, --resume; raises on bad input
    app = TrainingApp(transport=LocalTransport(session),   # wvtui.transport
                      index=session.index)          # or: session.relay.attach(HeadlessPrinter(...))
    result = session.run()                          # or session.start() ... session.wait()
    code, line = session.exit_status()

The trainer's events go to the run log and result files (rank 0 only), an `Outcome` (what the
exit status needs), the run's history and its control endpoint, the extra `sinks`, then the
relay (whichever front end is attached). A front end (`wvtui.frontends`) attaches itself with
`session.front = ...`; `on_signal` is what a signal means for the run, given that front end.

Every run serves its console (rank 0, unless `serve=False`): `session.endpoint` binds
OUT/control/wvtui.sock at the end of prepare() and says bye once the run has ended, so
`wvtui attach OUT` and `wvtui ctl OUT ...` reach it; `session.history` holds what the run said
so far (earlier segments of a resumed run included) for a console that starts now.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from typing import Any, Callable, Iterable, Protocol

from core.config import TrainConfig
from core.distributed import DistContext
from core.endpoint import ControlEndpoint, check_free
from core.engine import Trainer
from core.events import CheckpointSaved, Command, Event, RunError, RunFinished, StepStats, fanout
from core.history import RunHistory
from core.runlog import RunLog
from core.telemetry_feed import TelemetryFeed
from core.webvision import WebVisionIndex
from wvtui.runner import Relay, TrainerRunner

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class FrontEnd(Protocol):
    """What the session needs of the console or the headless printer when a signal comes."""

    failed: bool  # the front end itself broke (the console crashed): the run's exit is 1

    def say(self, message: str) -> None: ...

    def hang_up(self) -> bool:
        """Handle a SIGHUP; False when a hang-up means "stop" here (headless)."""

    def on_stop(self) -> None:
        """A stop signal is being served: the front end closes once the run has ended."""

    def exit_now(self) -> None:
        """Last words before os._exit: give the terminal back."""


class _Quiet:
    failed = False

    def say(self, message: str) -> None:
        import sys

        print(f"wvtui: {message}", file=sys.stderr, flush=True)

    def hang_up(self) -> bool:
        return False

    def on_stop(self) -> None:
        pass

    def exit_now(self) -> None:
        pass


class Outcome:
    """Sink that keeps what the exit status depends on: the latest checkpoint write, the latest
    loss, the latest error."""

    def __init__(self) -> None:
        self.saved_path: str | None = None
        self.save_error: str | None = None  # the latest checkpoint write failed, with this message
        self.last_loss: float | None = None
        self.last_error: str | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, CheckpointSaved):
            self.saved_path, self.save_error = event.path, None
        elif isinstance(event, RunError):
            self.last_error = event.message
            if event.kind == "checkpoint":
                self.save_error = event.message
        elif isinstance(event, StepStats):
            self.last_loss = event.last_loss

    @property
    def checkpoint_on_disk(self) -> bool:
        return self.saved_path is not None and self.save_error is None and os.path.exists(self.saved_path)

    @property
    def loss_not_finite(self) -> bool:
        return self.last_loss is not None and not math.isfinite(self.last_loss)


def _result_files(cfg: TrainConfig, index: WebVisionIndex) -> list[Callable[[Event], None]]:
    """The sinks that put the results where researchers read them: OUT/summary.csv (timm's
    columns), OUT/evals/ (per-class accuracy and confusions of each evaluation), OUT/tb/."""
    from core.confusions import EvalDetailsWriter
    from core.summary_csv import SummaryCsv

    sinks: list[Callable[[Event], None]] = [SummaryCsv(cfg.out), EvalDetailsWriter(cfg.out, classes=index.wnids)]
    if cfg.tensorboard:
        from core.tb_writer import TensorBoardWriter

        sinks.append(TensorBoardWriter(cfg.out))
    return sinks


def dataset_tables(index: WebVisionIndex) -> dict[str, Any]:
    """What the dataset pane shows, as plain data (an attached console has no index of its own)."""
    return {"summary": index.summary().to_dict(),
            "classes": [c.to_dict() for c in index.class_stats()],
            "queries": [q.to_dict() for q in index.query_stats()]}


class Session:
    """One run: see the module docstring.

    cfg: the resolved configuration. sinks: more event sinks (a test's recorder, a benchmark's
    clock), called before the front end. index: a loaded WebVisionIndex (default: loaded from
    cfg.root here; DatasetError on a bad tree). dist: this process's DistContext (default: from
    torchrun's environment); it decides whether this process writes the run log.
    nonfinite_action: "pause" (console) or "stop" (headless); model_factory: for tests.
    serve: whether this run serves the control endpoint (the main rank only, always); with it,
    EndpointError here when another live wvtui already serves cfg.out.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        sinks: Iterable[Callable[[Event], None]] = (),
        index: WebVisionIndex | None = None,
        dist: DistContext | None = None,
        model_factory: Any = None,
        nonfinite_action: str = "pause",
        run_log: bool = True,
        serve: bool = True,
    ) -> None:
        if not cfg.out:  # the trainer would pick this name itself; the history and endpoint need it now
            cfg = dataclasses.replace(cfg, out=os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))
        self.config = cfg
        self.dist = dist if dist is not None else DistContext.from_env(cfg.device)
        serving = serve and self.dist.is_main
        if serving:
            check_free(cfg.out)  # before the index loads: a second run into a live OUT fails at once
        self.index = index if index is not None else WebVisionIndex.load(
            cfg.root, num_classes=cfg.num_classes, use_flickr=cfg.use_flickr)
        self.relay = Relay()
        self.outcome = Outcome()
        # Only rank 0 writes the run directory: the other ranks still emit their RunError and
        # RunFinished, which would land in the same metrics.jsonl.
        self.run_log = RunLog(cfg.out) if run_log and self.dist.is_main else None
        own = (self.run_log, *_result_files(cfg, self.index)) if self.run_log is not None else ()
        # Read before this segment appends to metrics.jsonl: the earlier segments' records.
        self.history = RunHistory(cfg.out)
        # The process's one telemetry loop, for attached consoles and the in-process one alike:
        # two samplers would split each sample's window (rates, the CUDA peak) between them.
        self.telemetry_feed: TelemetryFeed | None = TelemetryFeed() if serving else None
        self.endpoint: ControlEndpoint | None = (
            ControlEndpoint(cfg.out, self.history, self._submit_remote, warn=self._say, feed=self.telemetry_feed,
                            dataset=lambda: dataset_tables(self.index)) if serving else None)
        served = (self.history, self.endpoint) if self.endpoint is not None else (self.history,)
        self.sink = fanout(*own, self.outcome, *served, *sinks, self.relay)
        # The trainer gets `dist` only when the caller gave one: otherwise it resolves the same
        # live context itself in prepare() (DistContext.from_env returns it) and, owning it,
        # shuts it down at the end of the run.
        self.trainer = Trainer(cfg, self.sink, index=self.index, dist=dist, model_factory=model_factory,
                               nonfinite_action=nonfinite_action)
        self.runner = TrainerRunner(self.trainer, on_crash=self.sink)
        self.front: FrontEnd = _Quiet()
        self.stop_signal: int | None = None

    # -- the run ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Build data, model and optimizer, load --resume, then serve the control endpoint;
        raises on bad input (exit 2 in the CLI), EndpointError when the socket cannot be served."""
        self.trainer.prepare()
        if self.endpoint is not None:
            self.endpoint.start()

    def _say(self, message: str) -> None:
        """The endpoint's one-line news (a client dropped), through whichever front end is on."""
        self.front.say(message)

    def _submit_remote(self, command: str, value: float | None, token: str) -> None:
        """A client's command, already validated by the endpoint, for the next step boundary."""
        self.trainer.submit(Command(command), value=value, token=token)

    def start(self) -> None:
        self.runner.start()

    def wait(self) -> RunFinished | None:
        # Short joins: the main thread must come back to Python regularly to run signal handlers.
        while not self.runner.join(0.2):
            pass
        self.close_endpoint()
        return self.runner.result

    def close_endpoint(self) -> None:
        """Bye to every attached client, socket and endpoint.json removed. Idempotent."""
        if self.endpoint is not None:
            result = self.runner.result
            self.endpoint.close(result.reason if result is not None else
                                "crashed" if self.runner.crash is not None else "run ended")

    def run(self) -> RunFinished | None:
        """Train to the end in the runner thread, waiting here; the RunFinished (None on a crash)."""
        self.start()
        return self.wait()

    def close(self, timeout: float = 120.0) -> None:
        """End a run that is still going without a final checkpoint (a failed test's clean-up)."""
        if self.runner.is_alive():
            self.trainer.submit(Command.STOP_NO_SAVE)
            self.runner.join(timeout)
        if not self.runner.is_alive():
            self.close_endpoint()

    # -- signals ---------------------------------------------------------------------------------

    def on_signal(self, signum: int) -> None:
        """What a signal means once training is set up (called on the signal bridge's thread)."""
        name = signal.Signals(signum).name
        front = self.front
        if signum == signal.SIGUSR1:
            front.say(f"{name}: saving a checkpoint")
            self.trainer.submit(Command.CHECKPOINT, reason="signal")
        elif signum == signal.SIGHUP and front.hang_up():
            pass
        elif self.stop_signal is not None:
            if signum == signal.SIGINT:
                front.say("SIGINT again: exiting now without waiting for the checkpoint")
                front.exit_now()
                os._exit(128 + signum)
        else:
            self.stop_signal = signum
            front.say(f"{name}: stopping after a checkpoint (SIGINT again to exit at once)")
            self.trainer.submit(Command.STOP, reason="signal")
            front.on_stop()

    # -- the end ---------------------------------------------------------------------------------

    def exit_status(self) -> tuple[int, str]:
        """(exit code, one line saying how the run ended); see the exit codes in `wvtui --help`."""
        result, crash, o = self.runner.result, self.runner.crash, self.outcome
        if crash is not None or result is None:
            what = f"{type(crash).__name__}: {crash}" if crash is not None else "no result"
            return EXIT_FAILED, f"failed: the trainer crashed: {what}"
        ended = {"completed": "completed", "stopped": "stopped", "nonfinite": "stopped on a non-finite loss",
                 "error": "failed"}.get(result.reason, result.reason)
        if result.checkpoint_failed or o.save_error is not None:
            kept = (f"the last checkpoint on disk is {o.saved_path}" if o.saved_path and os.path.exists(o.saved_path)
                    else "no checkpoint of this run is on disk")
            return EXIT_FAILED, f"{ended}, but the checkpoint could not be written: {o.save_error or 'see the log'}; {kept}"
        if result.reason == "nonfinite" or o.loss_not_finite:
            return EXIT_FAILED, (f"{ended}: the latest training loss is {o.last_loss}, not a finite number "
                                 "(lower --lr, or try --amp off)")
        if result.reason == "error":
            return EXIT_FAILED, f"failed: {o.last_error or 'see the log'}"
        if self.front.failed:
            return EXIT_FAILED, f"{ended}, but the console failed"
        if result.reason == "stopped" and self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name
            # Only rank 0 writes checkpoints and sees CheckpointSaved; the others trust its result.
            if o.checkpoint_on_disk:
                return 128 + self.stop_signal, f"stopped by {name}; checkpoint saved to {o.saved_path}"
            if not self.dist.is_main:
                return 128 + self.stop_signal, f"stopped by {name}"
            return EXIT_FAILED, f"stopped by {name}, but no checkpoint is on disk"
        return EXIT_OK, ended
