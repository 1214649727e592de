"""Signals, from the first line of `main()` to the end of the run.

`SignalBridge.install()` runs before the heavy imports (torch alone takes seconds), so no
signal of the start-up finds Python's defaults (SIGUSR1 would kill the process, SIGINT would
print a KeyboardInterrupt traceback from deep inside an import). Until a run is attached:
- SIGINT, SIGTERM, SIGHUP raise `StartupInterrupted` in the main thread; `main()` says so in one
  line and exits 128+N (nothing has been trained, so there is nothing to save);
- SIGUSR1 waits in the queue and reaches the run once attached (a checkpoint once it trains).

Once a run is attached, the Python-level handler only records the signal in a SimpleQueue
(whose put may be called re-entrantly, from a handler interrupting the same thread) and the
bridge's own thread hands it to the run. So a handler never takes a lock that the interrupted
main-thread code (Textual's loop, a key press submitting a command) might hold. The one thing
done inside the handler itself is the attached `urgent` callback (a hung-up console must stop
writing to the dead terminal before anything else does).

A process forked from this one (a DataLoader worker) inherits every Python-level handler: the
bridge's, and the console's (Textual's SIGCONT handler, which a hang-up's SIGCONT then runs in
the worker, against the dead terminal, killing the worker). `install()` therefore also
registers an at-fork hook that gives a forked child plain dispositions: the terminal's
SIGINT, SIGHUP (and SIGUSR1) ignored, for the main process decides; SIGTERM, SIGCONT, SIGTSTP,
SIGWINCH the defaults.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from typing import Any, Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
HANDLED = (*STOP_SIGNALS, signal.SIGUSR1)


_CHILD_IGNORES = (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
_CHILD_DEFAULTS = (signal.SIGTERM, signal.SIGCONT, signal.SIGTSTP, signal.SIGWINCH)
_fork_hook_registered = False


def _plain_signals_in_forked_child() -> None:
    for sig in _CHILD_IGNORES:
        if callable(signal.getsignal(sig)):
            signal.signal(sig, signal.SIG_IGN)
    for sig in _CHILD_DEFAULTS:
        if callable(signal.getsignal(sig)):
            signal.signal(sig, signal.SIG_DFL)


class StartupInterrupted(BaseException):
    """A stop signal arrived before training started. A BaseException, like KeyboardInterrupt,
    so that no `except Exception` in the start-up code swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class SignalBridge:
    """Handlers for SIGINT, SIGTERM, SIGHUP and SIGUSR1, and the thread that hands them on."""

    def __init__(self) -> None:
        self.startup_signal: int | None = None  # the stop signal that ended the start-up
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._previous: dict[int, Any] = {}
        self._target: Callable[[int], None] | None = None
        self._urgent: Callable[[int], None] | None = None
        self._thread: threading.Thread | None = None

    def install(self) -> None:
        global _fork_hook_registered
        if not _fork_hook_registered:  # hooks cannot be unregistered: once per process
            os.register_at_fork(after_in_child=_plain_signals_in_forked_child)
            _fork_hook_registered = True
        # SIGUSR1 last: a test (or a script) that sees it caught knows all four are.
        for sig in HANDLED:
            previous = signal.getsignal(sig)
            # An inherited "ignore" is a user's choice (nohup, `cmd &` in a script): keep it.
            if previous is signal.SIG_IGN and sig in (signal.SIGHUP, signal.SIGINT):
                continue
            self._previous[sig] = previous
            signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        if self._thread is not None:
            self._queue.put(None)

    def attach(self, target: Callable[[int], None], *, urgent: Callable[[int], None] | None = None) -> None:
        """From now on every signal goes to `target(signum)`, called on the bridge's thread (a
        SIGUSR1 of the start-up first); `urgent(signum)` runs inside the handler itself."""
        self._urgent = urgent
        self._target = target
        self._thread = threading.Thread(target=self._dispatch, name="wvtui-signals", daemon=True)
        self._thread.start()

    def _handler(self, signum: int, frame: Any) -> None:
        if self._target is None and signum in STOP_SIGNALS:
            if self.startup_signal is None:  # a second one while main() is already leaving: no new raise
                self.startup_signal = signum
                raise StartupInterrupted(signum)
            return
        urgent = self._urgent
        if urgent is not None:
            urgent(signum)
        self._queue.put(signum)

    def _dispatch(self) -> None:
        while (signum := self._queue.get()) is not None:
            self._target(signum)
