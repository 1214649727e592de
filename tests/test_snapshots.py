"""Snapshots of the console from a fixed event stream: no trainer, no live telemetry, no clock.

The event stream is what a 3-epoch run on the 4-class synthetic dataset reports; the dataset
pane is filled from a real `WebVisionIndex` of that tree. Regenerate the baselines after an
intended change with `pytest tests/test_snapshots.py --snapshot-update` and look at the SVGs.
"""

from __future__ import annotations

import math
import time

import pytest

from core.events import (CheckpointSaved, ConfigChanged, EpochEnd, EvalResult, RunStarted, RunState, RunWarning,
                         StateChanged, StepStats)
from core.telemetry import GpuSnapshot, HostSnapshot, Telemetry
from core.webvision import WebVisionIndex
from wvtui.app import TrainingApp
from wvtui.messages import TrainerEvent
from wvtui.widgets.help_screen import HelpScreen
from wvtui.widgets.quit_screen import QuitScreen
from helpers import SNAPSHOT_SIZES

GiB = 1024**3
STEPS_PER_EPOCH = 20
EPOCHS = 3

TELEMETRY = Telemetry(
    time=0.0,
    gpus=(),
    gpu_unavailable_reason="NVML not available: NVML Shared Library Not Found",
    host=HostSnapshot(cpu_percent=37.5, ram_used_bytes=12 * GiB, ram_total_bytes=32 * GiB,
                      process_rss_bytes=3 * GiB, process_cpu_percent=180.0, workers=4,
                      workers_rss_bytes=2 * GiB),
)

# Two GPUs as NVML reports them; the second cannot report temperature or power (None: N/A).
GPU_TELEMETRY = Telemetry(
    time=0.0,
    gpus=(
        GpuSnapshot(index=0, name="NVIDIA H200", utilization_pct=97.0, memory_used_bytes=61 * GiB,
                    memory_total_bytes=141 * GiB, temperature_c=64.0, power_w=612.0, power_limit_w=700.0,
                    torch_allocated_bytes=42 * GiB, torch_reserved_bytes=58 * GiB, torch_peak_bytes=55 * GiB),
        GpuSnapshot(index=1, name="NVIDIA H200", utilization_pct=0.0, memory_used_bytes=1 * GiB,
                    memory_total_bytes=141 * GiB, temperature_c=None, power_w=None, power_limit_w=None),
    ),
    gpu_unavailable_reason=None,
    host=TELEMETRY.host,
)


def event_stream(summary: dict) -> list:
    """Two epochs and a bit of a run: ticks every 2 steps, an evaluation per epoch, one manual."""
    events: list = [
        RunStarted(config={"epochs": EPOCHS, "model": "resnet18"}, summary=summary, device="cpu",
                   model="resnet18", num_params=11_178_564, steps_per_epoch=STEPS_PER_EPOCH,
                   total_steps=STEPS_PER_EPOCH * EPOCHS, start_epoch=0, start_step=0,
                   out_dir="runs/snapshot"),
        StateChanged(state=RunState.RUNNING, epoch=1, step=0),
    ]
    best = 0.0
    for step in range(2, 2 * STEPS_PER_EPOCH + 12, 2):
        # 1-based epochs: a tick says the epoch in progress; the evaluation, the epoch's end and
        # its checkpoint say the epoch just finished.
        epoch, epoch_step = (step - 1) // STEPS_PER_EPOCH + 1, (step - 1) % STEPS_PER_EPOCH + 1
        loss = 1.4 * math.exp(-step / 25) + 0.1
        events.append(StepStats(
            epoch=epoch, step=step, epoch_step=epoch_step, steps_per_epoch=STEPS_PER_EPOCH,
            total_steps=STEPS_PER_EPOCH * EPOCHS, loss=loss, last_loss=loss + 0.15 * math.sin(step),
            lr=0.1 if epoch < 3 else 0.01, img_per_s=512.0, data_wait=0.04,
            eta_epoch_s=(STEPS_PER_EPOCH - epoch_step) * 0.5, eta_run_s=(60 - step) * 0.5,
            elapsed_s=step * 0.5, bad_images=0))
        if epoch_step == STEPS_PER_EPOCH:
            acc1 = 25.0 + 30.0 * (epoch - 1)
            best = max(best, acc1)
            events += [
                EvalResult(epoch=epoch, step=step, loss=loss + 0.2, acc1=acc1, acc5=100.0, best_acc1=best,
                           best_acc5=100.0, manual=False, is_best=acc1 >= best, seconds=1.5, images=16,
                           per_class_acc1=(acc1, acc1 + 10, acc1 - 10, acc1),
                           imagenet_acc1=acc1 - 5.0, imagenet_acc5=95.0, imagenet_loss=loss + 0.3, imagenet_images=16),
                EpochEnd(epoch=epoch, step=step, seconds=10.0, img_per_s=512.0),
                CheckpointSaved(path="runs/snapshot/checkpoints/last.pt", reason="epoch", epoch=epoch,
                                step=step, seconds=0.2),
            ]
    events += [
        EvalResult(epoch=3, step=50, loss=0.5, acc1=50.0, acc5=100.0, best_acc1=best, best_acc5=100.0,
                   manual=True, is_best=False, seconds=1.4, images=16, per_class_acc1=(50.0, 75.0, 25.0, 50.0)),
        RunWarning(kind="bad_images", message="1 unreadable image replaced",
                   paths=("google/q0003/000004.jpg",)),
    ]
    return events


@pytest.fixture(scope="module")
def index(synthetic_root: str) -> WebVisionIndex:
    return WebVisionIndex.load(synthetic_root, num_classes=4)


# A local time of 12:34:56 in whatever zone the test machine is in.
NOON = time.mktime((2026, 1, 1, 12, 34, 56, 0, 0, -1))


def make_app(index: WebVisionIndex, telemetry: Telemetry = TELEMETRY) -> TrainingApp:
    return TrainingApp(demo=True, telemetry=telemetry, index=index, clock=lambda: NOON,
                       chart_interval=0.0, chart_budget=None)


async def drawn(pilot, timeout: float = 30.0) -> None:
    """Wait until the frame timer has drawn every pane on show (panes draw on the timer only)."""
    app = pilot.app
    deadline = time.monotonic() + timeout
    while True:
        shown = [pane for pane, tab, _ in app._panes if tab is None or tab == app.tabs.active]
        if not any(pane.dirty or getattr(pane, "chart_dirty", False) for pane in shown):
            break
        assert time.monotonic() < deadline, "the panes were never drawn"
        await pilot.pause(0.05)
    await pilot.pause()  # and the screen has rendered what they drew


def run_before(index: WebVisionIndex, *keys: str, more: tuple = ()):
    async def _run(pilot) -> None:
        # A fixed root: the log shows it, and the test tree's lies in a temporary directory.
        # In one burst, as a busy trainer sends them: ticks may coalesce, but the newest carries
        # the ones it replaced (TrainerEvent.superseded), so every pane ends the same.
        for ev in [*event_stream({**index.summary().to_dict(), "root": "/data/webvision"}), *more]:
            pilot.app.post_message(TrainerEvent(ev))
        await pilot.pause()
        if keys:
            await pilot.press(*keys)
        await drawn(pilot)
        # Toasts time out on a wall clock, so whether one is still up would depend on speed.
        pilot.app.clear_notifications()
        await pilot.pause()

    return _run


@pytest.mark.parametrize("size", SNAPSHOT_SIZES)
def test_main_screen(snap_compare, index, size):
    assert snap_compare(make_app(index), terminal_size=size, run_before=run_before(index))


@pytest.mark.slow  # the full suite compares every screen; the fast loop keeps the main one
@pytest.mark.parametrize("size", SNAPSHOT_SIZES)
def test_dataset_pane(snap_compare, index, size):
    assert snap_compare(make_app(index), terminal_size=size, run_before=run_before(index, "4"))


@pytest.mark.slow  # the full suite compares every screen; the fast loop keeps the main one
@pytest.mark.parametrize("size", SNAPSHOT_SIZES)
def test_accuracy_pane(snap_compare, index, size):
    assert snap_compare(make_app(index), terminal_size=size, run_before=run_before(index, "2"))


@pytest.mark.slow  # the full suite compares every screen; the fast loop keeps the main one
def test_gpu_pane_without_gpu(snap_compare, index):
    assert snap_compare(make_app(index), terminal_size=(80, 24), run_before=run_before(index, "3"))


@pytest.mark.slow  # the full suite compares every screen; the fast loop keeps the main one
def test_gpu_pane_with_two_gpus(snap_compare, index):
    assert snap_compare(make_app(index, GPU_TELEMETRY), terminal_size=(80, 24), run_before=run_before(index, "3"))


# What only the log shows: a resumed run's changed settings, a pause, an evaluation that could
# not score every image, a warning with more paths than the log lists.
LOG_EVENTS = (
    ConfigChanged(epoch=3, step=50, changes={"lr": [0.01, 0.005], "milestones": [[2], [1, 2]]}),
    StateChanged(state=RunState.PAUSED, epoch=3, step=50, previous=RunState.RUNNING),
    StateChanged(state=RunState.RUNNING, epoch=3, step=50, previous=RunState.PAUSED),
    EvalResult(epoch=3, step=51, loss=0.5, acc1=50.0, acc5=100.0, best_acc1=55.0, best_acc5=100.0, manual=True,
               is_best=False, seconds=1.4, images=14, images_total=16, per_class_acc1=(50.0, 75.0, 25.0, 50.0)),
    RunWarning(kind="bad_images", message="7 unreadable images skipped",
               paths=tuple(f"google/q0003/{i:06d}.jpg" for i in range(7))),
)


@pytest.mark.slow  # the full suite compares every screen; the fast loop keeps the main one
def test_event_log(snap_compare, index):
    assert snap_compare(make_app(index), terminal_size=(120, 40), run_before=run_before(index, "5", more=LOG_EVENTS))


@pytest.mark.slow  # the full suite compares every screen; the fast loop keeps the main one
def test_help_screen(snap_compare, index):
    """80x24, the smallest size the console is made for: every key must fit."""
    feed = run_before(index)

    async def open_help(pilot) -> None:
        await feed(pilot)  # toasts cleared first: they time out on the wall clock
        await pilot.press("question_mark")
        assert isinstance(pilot.app.screen, HelpScreen)
        await pilot.pause()

    assert snap_compare(make_app(index), terminal_size=(80, 24), run_before=open_help)


@pytest.mark.slow  # the full suite compares every screen; the fast loop keeps the main one
def test_quit_dialog(snap_compare, index):
    feed = run_before(index)

    async def open_dialog(pilot) -> None:
        await feed(pilot)
        # With no trainer attached `q` exits at once, so open the dialog the way `q` does.
        await pilot.app.push_screen(QuitScreen(running=True))
        await pilot.pause()

    assert snap_compare(make_app(index), terminal_size=(80, 24), run_before=open_dialog)


@pytest.mark.slow
def test_quit_dialog_attached(snap_compare, index):
    """`wvtui attach`'s dialog: stopping the run is a choice, detaching (focused) the safe one."""
    feed = run_before(index)

    async def open_dialog(pilot) -> None:
        await feed(pilot)
        await pilot.app.push_screen(QuitScreen(running=True, attached=True))
        await pilot.pause()

    assert snap_compare(make_app(index), terminal_size=(80, 24), run_before=open_dialog)
