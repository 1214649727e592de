"""The trainer's command inbox: what front ends ask for, and when every rank acts on it.

A command travels in two stages:

1. `submit()` (any thread, a signal handler included) appends it to the *local* queue and
   wakes a paused trainer. It never waits for the training loop.
2. At a step boundary the trainer calls `gather()`: the local queue becomes the *agreed* list,
   the commands every rank applies, in order, at this same boundary. Alone, that is the local
   queue itself; under torchrun it is rank 0's queue (plus commands raised locally on other
   ranks, such as a forwarded signal), exchanged in one small collective that every rank
   reaches at the same boundary. `pop()` then hands the agreed commands out one by one.

Because the agreed list is identical on every rank, every rank pops the same commands and calls
`gather()` again at the same moments (e.g. while paused, whenever its agreed list runs dry), so
the collectives stay matched.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Callable

from core.distributed import COMMAND_SLOTS, DistContext
from core.events import Command

__all__ = ["CommandInbox", "Submitted", "PAUSE_POLL_S"]

# While paused, the waiting thread wakes this often when it cannot rely on being notified:
# a signal handler that runs on the trainer's own thread between its check and its wait
# notifies nobody, and under torchrun the other ranks wait in a collective for rank 0's
# (possibly empty) command list, so rank 0 must keep exchanging.
PAUSE_POLL_S = 0.5


@dataclass(frozen=True)
class Submitted:
    """One submitted command: `reason` names a checkpoint ("signal"), `value` is SET_LR's lr,
    `token` is whatever the submitter matches the command's CommandApplied on."""

    command: Command
    reason: str | None = None
    value: float | None = None
    token: str | None = None


class CommandInbox:
    """Local queue (`submit`) and agreed list (`gather`/`pop`); see the module docstring."""

    def __init__(self, dist: DistContext | None = None) -> None:
        self.dist = dist
        self._local: collections.deque[Submitted] = collections.deque()
        self._agreed: collections.deque[Submitted] = collections.deque()
        # Reentrant, so a signal handler that interrupts a submit() on the same thread can submit too.
        self._wake = threading.Condition(threading.RLock())

    def submit(self, command: Command | str, reason: str | None = None, *, value: float | None = None,
               token: str | None = None) -> None:
        """Queue a command for the next step boundary; `reason` names a checkpoint (e.g. "signal")."""
        item = Submitted(Command(command), reason, None if value is None else float(value), token)
        with self._wake:
            self._local.append(item)
            self._wake.notify_all()

    @property
    def exchanges(self) -> bool:
        """Whether every boundary must gather (a collective), even with nothing local."""
        return self.dist is not None and self.dist.enabled

    def has_local(self) -> bool:
        return bool(self._local)

    def has_agreed(self) -> bool:
        return bool(self._agreed)

    def gather(self, *, wait: bool = False) -> None:
        """Turn the local queue into agreed commands (a collective on every rank under DDP).

        wait=True (paused): rank 0 first sleeps until a command arrives, or for PAUSE_POLL_S
        where a wake-up could be missed or the other ranks are waiting in the exchange.
        """
        d = self.dist
        main = d is None or d.is_main
        if wait and main:
            polled = self.exchanges or threading.current_thread() is threading.main_thread()
            with self._wake:
                if not self._local:
                    self._wake.wait(PAUSE_POLL_S if polled else None)
        if not self.exchanges:
            while self._local:
                self._agreed.append(self._local.popleft())
            return
        # Rank 0 sends at most COMMAND_SLOTS (the rest waits in its local queue for the next
        # boundary), so the agreed list starts with exactly the items it sent, in order: their
        # reasons and tokens stay here, the values travel.
        local: list[Submitted] = []
        while self._local and (not main or len(local) < COMMAND_SLOTS):
            local.append(self._local.popleft())
        agreed = d.broadcast_commands([(s.command, s.value) for s in local])
        if main:
            extra = agreed[len(local):]  # raised locally on other ranks (a forwarded signal)
            self._agreed.extend(local)
            self._agreed.extend(Submitted(c, None, v) for c, v in extra)
            return
        reasons: dict[Command, str | None] = {}
        for s in local:
            reasons.setdefault(s.command, s.reason)
        self._agreed.extend(Submitted(c, reasons.get(c), v) for c, v in agreed)

    def pop(self) -> Submitted | None:
        """The next agreed command, or None when the agreed list is empty."""
        return self._agreed.popleft() if self._agreed else None

    def drain(self) -> list[Submitted]:
        """Every command not applied yet (agreed, then local): the run ended before them."""
        with self._wake:
            left = list(self._agreed) + list(self._local)
            self._agreed.clear()
            self._local.clear()
        return left

    def apply_at_boundary(self, apply: Callable[[Submitted], str | None]) -> str | None:
        """Gather (when needed) and apply every agreed command; a finish reason from `apply` ends it."""
        if self.exchanges or self._local:
            self.gather()
        while (item := self.pop()) is not None:
            outcome = apply(item)
            if outcome is not None:
                return outcome
        return None

    def hold(self, apply: Callable[[Submitted], str | None], resumed: Callable[[Submitted], None]) -> str | None:
        """The pause: wait for commands and apply them until RESUME (None) or a finish reason.

        `resumed` is told the RESUME that ends the pause. Commands agreed after a RESUME at the
        same boundary stay queued for `apply_at_boundary`.
        """
        while True:
            if not self._agreed:
                self.gather(wait=True)
            while (item := self.pop()) is not None:
                if item.command is Command.RESUME:
                    resumed(item)
                    return None
                outcome = apply(item)
                if outcome is not None:
                    return outcome
