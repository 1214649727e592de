"""The one home of shared test code: a dataset big enough to learn from, configs, event capture,
waiting for a condition, faulty models, and torch-call recorders (host reads, tensor devices)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import threading
import time
import weakref
from typing import Any, Callable

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from core.config import TrainConfig
from core.engine import Trainer
from core.events import Command, Event, RunState, StateChanged, fanout
from core.model import build_model
from core.runlog import RunLog
from core.synthetic import make_webvision

# 5 classes x 48 train images (48 px), 10 val images per class; trained at 32 px, batch 16:
# 15 steps an epoch, about 2 s an epoch for resnet18 on one CPU core.
DATASET = dict(classes=5, queries_per_class=2, images_per_query=24, val_per_class=10, size=48, seed=0)
STEPS_PER_EPOCH = 15


def config(root: str, out: str, **overrides: Any) -> TrainConfig:
    values = dict(root=root, num_classes=5, epochs=2, batch_size=16, lr=0.05, milestones=(1,), gamma=0.5,
                  model="resnet18", image_size=32, workers=0, device="cpu", out=out, report_every=1,
                  report_interval_s=0.0, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


class Recorder:
    """A sink that keeps every event and lets another thread wait for one."""

    def __init__(self, on_event: Callable[[Event], None] | None = None) -> None:
        self.events: list[Event] = []
        self.on_event = on_event
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()
        if self.on_event is not None:
            self.on_event(event)

    def of(self, cls: type) -> list:
        with self._cond:
            return [e for e in self.events if isinstance(e, cls)]

    def position(self, event: Event) -> int:
        with self._cond:
            return next(i for i, e in enumerate(self.events) if e is event)

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 60.0, after: int = -1) -> Event:
        """The first event after position `after` that satisfies predicate (waits for it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events[after + 1:]:
                    if predicate(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("the expected event never came")
                self._cond.wait(left)


@contextlib.contextmanager
def running(trainer: Trainer, recorder: Recorder, timeout: float = 180.0):
    """Run the trainer in its own thread; on a failing test stop it rather than leave it paused."""
    thread = threading.Thread(target=lambda: setattr(recorder, "finished", trainer.run()), name="trainer")
    thread.start()
    try:
        yield thread
    except BaseException:
        trainer.submit(Command.STOP_NO_SAVE)
        raise
    finally:
        thread.join(timeout)
    assert not thread.is_alive(), "the trainer did not finish"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Active in every module that imports it: two shared cores and several test processes, so
    more intra-op threads only oversubscribe."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The engine tests' dataset (DATASET), made once per test module that imports it."""
    return make_webvision(str(tmp_path_factory.mktemp("engine") / "wv"), **DATASET)


def make_trainer(cfg: TrainConfig, recorder: Recorder, **kw: Any) -> Trainer:
    return Trainer(cfg, fanout(RunLog(cfg.out), recorder), **kw)


def weights(path: str) -> dict[str, torch.Tensor]:
    from core.checkpoint import load_checkpoint

    return load_checkpoint(path)["model"]


def fingerprint(state_dict: dict) -> str:
    """A digest of every tensor's exact bytes: equal digests mean bit-identical models."""
    h = hashlib.sha256()
    for name, t in state_dict.items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


class FaultyModel(nn.Module):
    """resnet18 whose training forward number `at` (1-based) misbehaves in a chosen way:
    "nan" (from then on), "oom" or "bug" (raises once); any other fault does nothing."""

    def __init__(self, num_classes: int, at: int, fault: str) -> None:
        super().__init__()
        self.net = build_model("resnet18", num_classes)
        self.at = at
        self.fault = fault
        self.calls = 0
        self.refs: list[weakref.ref] = []  # the faulty step's input and output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if not self.training:
            return out
        self.calls += 1
        if self.calls >= self.at:
            self.refs = [weakref.ref(x), weakref.ref(out)]
            if self.fault == "nan":
                return out * float("nan")
            if self.fault == "oom" and self.calls == self.at:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if self.fault == "bug" and self.calls == self.at:
                raise ValueError("shapes do not match (simulated bug)")
        return out


def faulty(at: int, fault: str) -> Callable[[str, int], nn.Module]:
    return lambda name, num_classes: FaultyModel(num_classes, at, fault)


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "", interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy (returned); AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)


def entered(state: RunState, previous: RunState | None = None) -> Callable[[Event], bool]:
    """A predicate for the StateChanged event into `state` (from `previous`, when given)."""
    return lambda e: (isinstance(e, StateChanged) and e.state is state
                      and (previous is None or e.previous is previous))


class HostReads(TorchFunctionMode):
    """Records, on the thread that enters it, every torch call that makes the host wait for the
    device: explicit reads (.item(), .tolist(), .cpu()...) and ops whose output size or
    arguments the host must learn first (bincount, nonzero, boolean-mask indexing...)."""

    READS = {"item", "tolist", "cpu", "numpy", "bincount", "nonzero", "unique", "masked_select",
             "__bool__", "__int__", "__float__", "argwhere", "repeat_interleave"}

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in self.READS:
            self.calls.append(name)
        elif name == "__getitem__" and len(args) > 1 and _has_bool_tensor(args[1]):
            self.calls.append("mask indexing")
        return func(*args, **(kwargs or {}))


def _has_bool_tensor(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class TensorDevices(TorchFunctionMode):
    """The device types of every tensor that torch calls return on the thread that enters it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.seen.add(t.device.type)
        return out


# Console snapshots are taken at both sizes in the full suite; the fast loop keeps 80x24, the
# size where a layout breaks first.
SNAPSHOT_SIZES = [pytest.param((80, 24), id="80x24"),
                  pytest.param((120, 40), id="120x40", marks=pytest.mark.slow)]


def asyncio_test(fn):
    """Run an async test body with asyncio.run (no async pytest plugin is a dependency)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


async def pilot_until(pilot, predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """`wait_until` on a running app's loop: it yields to the app between polls (a blocking wait
    would stop the app it waits for)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        await pilot.pause(0.02)
    return value


def screen_lines(app) -> list[str]:
    """The terminal as the user sees it, one string per row."""
    return [strip.text for strip in app.screen._compositor.render_strips()]
