"""The two ways a session shows its run: plain lines (`Headless`) or the Textual app (`Console`).

Both run the session to its end on the main thread. The console also owns what a terminal
hang-up means: the app closes and the same run continues headless into OUT/console.log.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import TextIO

from core.events import Command, RunState
from wvtui.headless import HeadlessPrinter
from wvtui.session import Session

# After a hang-up the app should close within this; if it is stuck on the dead terminal, the
# finished run still ends the process with its exit status.
HANGUP_APP_CLOSE_S = 20.0


class Headless:
    """Plain lines on stdout (ranks other than 0 print only their errors)."""

    failed = False

    def __init__(self, session: Session, stream: TextIO | None = None) -> None:
        self.session = session
        self.stream = stream if stream is not None else sys.stdout

    def run(self) -> None:
        self.session.relay.attach(HeadlessPrinter(self.stream, rank=self.session.dist.rank))
        self.session.run()

    def urgent(self, signum: int) -> None:
        pass

    def say(self, message: str) -> None:
        print(f"wvtui: {message}", file=sys.stderr, flush=True)

    def hang_up(self) -> bool:
        return False  # nobody watches a headless run's terminal: a hang-up is a stop

    def on_stop(self) -> None:
        pass

    def exit_now(self) -> None:
        pass


class Console:
    """The Textual app on this terminal; after a hang-up, headless lines in OUT/console.log."""

    def __init__(self, session: Session) -> None:
        from wvtui.app import TrainingApp
        from wvtui.transport import LocalTransport

        self.session = session
        self.app = TrainingApp(transport=LocalTransport(session), demo=session.config.demo, index=session.index)
        self.log_path = os.path.join(session.trainer.out_dir, "console.log")
        self.log_file: TextIO | None = None
        self.detached = threading.Event()
        self.app_returned = threading.Event()
        self.failed = False

    def run(self) -> None:
        from wvtui.app import QuitReason

        s = self.session
        try:
            self.app.run()
        except Exception as exc:  # the trainer thread must still be stopped, or the process never exits
            self.failed = True
            print(f"wvtui: error: the console failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        self.failed = self.failed or bool(self.app.return_code)
        if self.app.quit_reason is QuitReason.INTERRUPTED and s.stop_signal is None:
            # Ctrl-C reaches the console as a key, not as SIGINT; it still means "stopped by
            # an interrupt after a checkpoint" (exit 130), as the signal would outside the console.
            s.stop_signal = signal.SIGINT
        self.app_returned.set()
        if s.runner.is_alive() and not self.detached.is_set():
            # The app ended without ending the run. A hang-up whose signal is still on its way
            # (Textual saw the dead terminal first) must not stop it; anything else does.
            self.detached.wait(1.0)
            if not self.detached.is_set():
                print("wvtui: the console closed; stopping the run after a checkpoint", file=sys.stderr, flush=True)
                s.trainer.submit(Command.STOP)
        if self.detached.is_set():
            self._output_to_log()
            # After a hang-up the console's own end (it may panic on the dead terminal) is no failure.
            self.failed = False
        s.wait()
        for line in self.summary():
            print(line, flush=True)

    def summary(self) -> list[str]:
        """What is left on the terminal once the console has gone (headless ends its log alike)."""
        from wvtui.app import ENDED_AS, closing_summary

        s, result = self.session, self.session.runner.result
        best = self.app.best
        if result is not None and (best is not None or result.best_acc1 > 0):
            best = (result.best_acc1, result.best_acc5)
        if result is None:
            state = "crashed" if s.runner.crash is not None else "ended"
        else:
            state = ENDED_AS.get(result.reason, result.reason)
        return closing_summary(state=state, out_dir=s.config.out, root=s.config.root, best=best,
                               epoch=result.epoch if result else self.app.epoch,
                               step=result.step if result else self.app.step, running=False,
                               completed=result is not None and result.reason == "completed")

    # -- signals -----------------------------------------------------------------------------------

    def urgent(self, signum: int) -> None:
        """Inside the SIGHUP handler: the terminal is gone, and every write to it now fails with
        EIO; Textual's writer thread dying on one would block the app on its full output queue.
        So fds 0-2 point at /dev/null before anything else writes (the app's last frames would
        only fill the log with escape codes)."""
        if signum == signal.SIGHUP and not self.detached.is_set():
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)

    def hang_up(self) -> bool:
        if self.detached.is_set():
            # The kernel and the login shell both send a hang-up when SSH drops.
            self.say("SIGHUP: already running headless after a hang-up; ignored (use SIGTERM to stop)")
            return True
        self.detached.set()
        t = self.session.trainer
        t.submit(Command.CHECKPOINT, reason="hangup")
        self.log_file = open(self.log_path, "a", buffering=1, encoding="utf-8")
        self.log_file.write(
            f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} terminal hung up (SIGHUP) at epoch {t.epoch_no}, "
            f"step {t.step}: the console closed, the run continues headless ---\n"
        )
        self.session.relay.attach(HeadlessPrinter(self.log_file, rank=self.session.dist.rank,
                                                  epochs=self.session.config.epochs, current_epoch=t.epoch))
        # Nobody is left to resume a pause: a non-finite loss now ends the run, as headless.
        t.submit(Command.NONFINITE_STOPS)
        if t.state == RunState.PAUSED:
            self.log_file.write(
                f"The run was paused and stays paused. `kill -TERM {os.getpid()}` stops it after a checkpoint;\n"
                f"`wvtui --root ... --out {t.out_dir} --resume auto` continues it later.\n"
            )
        self.app.detach()  # ends the UI, not the run; safe from any thread
        threading.Thread(target=self._exit_if_app_stuck, name="wvtui-hangup", daemon=True).start()
        return True

    def on_stop(self) -> None:
        if not self.detached.is_set():
            # The console would otherwise stay open on the finished run.
            threading.Thread(target=self._close_when_run_ends, daemon=True).start()

    def exit_now(self) -> None:
        if not self.detached.is_set():
            self.app.detach()
            time.sleep(0.5)  # let Textual restore the terminal

    def say(self, message: str) -> None:
        if not self.detached.is_set() and not self.app_returned.is_set():
            try:
                self.app.notify(message, timeout=10)  # thread-safe in Textual
                return
            except Exception:  # noqa: BLE001 - an app not yet (or no longer) running: say it on stderr
                pass
        elif self.log_file is not None and not self.app_returned.is_set():
            self.log_file.write(f"wvtui: {message}\n")
            return
        print(f"wvtui: {message}", file=sys.stderr, flush=True)

    # -- helpers -----------------------------------------------------------------------------------

    def _output_to_log(self) -> None:
        """Once the app has gone, stdout and stderr (messages, any traceback) go to the log."""
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)

    def _close_when_run_ends(self) -> None:
        self.session.runner.join()
        if not self.detached.is_set():
            self.app.detach()

    def _exit_if_app_stuck(self) -> None:
        self.session.runner.join()
        if not self.app_returned.wait(HANGUP_APP_CLOSE_S):
            code, line = self.session.exit_status()
            print(f"wvtui: the console did not close after the hang-up; {line}; exiting with {code}", flush=True)
            os._exit(code)
