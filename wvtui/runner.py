"""The trainer's thread and the relay that routes its events to whichever front end is attached.

The thread belongs to the process, not to the Textual app: when the terminal goes away (SSH
hang-up) the app exits and the same trainer thread keeps running headless.
"""

from __future__ import annotations

import threading
import traceback
from typing import Callable

from core.events import Event, RunError, RunFinished, Sink


class Relay:
    """A sink whose target can be swapped from another thread (console -> headless on hang-up)."""

    def __init__(self, target: Sink | None = None) -> None:
        self._target = target
        self._lock = threading.Lock()

    def attach(self, target: Sink | None) -> None:
        with self._lock:
            self._target = target

    def __call__(self, event: Event) -> None:
        with self._lock:
            target = self._target
        if target is not None:
            target(event)


class TrainerRunner:
    """Runs `trainer.run()` in a non-daemon thread; a crash outside the trainer's own handling
    is still reported through `on_crash` so no front end is left waiting."""

    def __init__(self, trainer, on_crash: Callable[[Event], None] | None = None) -> None:
        self.trainer = trainer
        self.result: RunFinished | None = None
        self.crash: BaseException | None = None
        self._on_crash = on_crash
        self._thread = threading.Thread(target=self._run, name="wvtui-trainer", daemon=False)

    def _run(self) -> None:
        try:
            self.result = self.trainer.run()
        except BaseException as exc:  # noqa: BLE001 - reported, never swallowed silently
            self.crash = exc
            if self._on_crash is not None:
                self._on_crash(
                    RunError(kind="exception", message=f"{type(exc).__name__}: {exc}",
                             traceback=traceback.format_exc())
                )

    def start(self) -> None:
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the trainer; True when it has ended."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()
