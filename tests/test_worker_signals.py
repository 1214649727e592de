"""DataLoader workers outlive the terminal's hang-up and Ctrl-C: the main process decides.

A closed terminal (an SSH drop) sends SIGHUP, and Ctrl-C sends SIGINT, to the whole foreground
process group, workers included; a worker killed by either ends the run with "DataLoader worker
exited unexpectedly". Real workers, real signals. (The whole CLI under a pty: tests/test_cli*.)
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from torch.utils.data import Dataset

from core.data import make_loader

ITEMS = 40


class WhoAmI(Dataset):
    """Each item says which process made it, when, and what its SIGHUP/SIGINT handlers are."""

    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([
            os.getpid(),
            signal.getsignal(signal.SIGHUP) == signal.SIG_IGN,
            signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
            time.monotonic_ns(),
        ], dtype=torch.int64)


def loader():
    return make_loader(WhoAmI(), range(ITEMS), batch_size=1, workers=1, pin_memory=False,
                       persistent_workers=False, prefetch_factor=2, drop_last=False)


def test_workers_ignore_hangup_and_interrupt_while_the_main_process_keeps_its_handlers():
    main_hup, main_int = signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGINT)
    items = torch.cat(list(loader()))
    assert items[:, 0].ne(os.getpid()).all()  # made in a worker, not here
    assert items[:, 1].all() and items[:, 2].all()
    assert (signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGINT)) == (main_hup, main_int)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT], ids=["SIGHUP", "SIGINT"])
def test_a_live_worker_sent_the_terminal_signal_keeps_yielding(signum):
    it = iter(loader())
    first = next(it)[0]
    pid = int(first[0])
    os.kill(pid, signum)
    sent = time.monotonic_ns()
    rest = torch.cat(list(it))  # a dead worker would raise "exited unexpectedly" here
    assert len(rest) == ITEMS - 1
    assert rest[:, 0].eq(pid).all()  # the same worker made every later item...
    after = rest[rest[:, 3] > sent]
    assert len(after) >= ITEMS - 5, "too few items were made after the signal to show anything"
