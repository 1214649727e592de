"""The GPU & host pane in the real console at 80x24: every figure whole, the graphs' scale and
time span said, I/O and GPU temperature and power shown, no sampling when attached."""

from __future__ import annotations

import re

import pytest

import wvtui.widgets.system_pane as system_pane
from core.telemetry import GpuSnapshot, HostSnapshot, Telemetry
from wvtui.app import TrainingApp
from wvtui.widgets.system_pane import SystemPane, format_span, percent_cells
from helpers import asyncio_test, pilot_until as until, screen_lines

GiB = 1024**3
MiB = 1024**2
TIMEOUT = 30.0

HOST = HostSnapshot(cpu_percent=37.5, ram_used_bytes=12 * GiB, ram_total_bytes=32 * GiB,
                    process_rss_bytes=3 * GiB, process_cpu_percent=180.0, workers=4, workers_rss_bytes=2 * GiB,
                    disk_read_bps=1.5 * MiB, disk_write_bps=30 * MiB, net_rx_bps=2048.0, net_tx_bps=512.0)
NO_GPU = Telemetry(time=0.0, gpus=(), host=HOST,
                   gpu_unavailable_reason="NVML not available: NVML Shared Library Not Found (pip install "
                                          "nvidia-ml-py, or check the driver: a long reason must stay one line)")
# The largest figures an 8-GPU H200 box gives: three-digit GiB, watts and percentages.
TWO_GPUS = Telemetry(
    time=0.0,
    gpus=(GpuSnapshot(index=0, name="NVIDIA H200", utilization_pct=100.0, memory_used_bytes=140 * GiB,
                      memory_total_bytes=141 * GiB, temperature_c=84.0, power_w=699.6, power_limit_w=700.0,
                      torch_allocated_bytes=130 * GiB, torch_reserved_bytes=139 * GiB, torch_peak_bytes=135 * GiB),
          GpuSnapshot(index=1, name="NVIDIA H200", utilization_pct=3.0, memory_used_bytes=1 * GiB,
                      memory_total_bytes=141 * GiB, temperature_c=None, power_w=None, power_limit_w=None)),
    gpu_unavailable_reason=None,
    host=HOST,
)


def assert_legible(lines: list[str]) -> None:
    for line in lines:
        assert len(line) <= 80
        assert not re.search(r"\d…|…\d", line), f"a number cut short: {line!r}"


async def shown(pilot, *texts: str) -> list[str]:
    """Waits for the frame that draws the pane, then for every text on one row each."""
    await until(pilot, lambda: not pilot.app.system_pane.dirty, "the pane drawn")
    await pilot.pause()

    def lines_with_texts() -> list[str] | None:
        lines = screen_lines(pilot.app)
        return lines if all(any(t in line for line in lines) for t in texts) else None

    return await until(pilot, lines_with_texts, f"{texts} on screen")


@asyncio_test
async def test_attached_the_pane_shows_what_it_is_sent_legibly_at_80x24(monkeypatch):
    # One console for the three states (the app's start-up is most of a test's time): waiting,
    # a machine without a GPU, a machine with two.
    def no_sampler(*args, **kwargs):
        raise AssertionError("an attached console sampled this machine")

    monkeypatch.setattr(system_pane, "TelemetrySampler", no_sampler)
    app = TrainingApp(telemetry="remote", telemetry_interval=2.0)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.system_pane
        await pilot.press("3")
        await shown(pilot, "waiting for telemetry from the run")
        assert not [w for w in app.workers if w.group == "telemetry"]

        pane.apply(NO_GPU)
        lines = await shown(pilot, "No GPU - NVML not available", "now")
        assert_legible(lines)
        first = next(i for i, line in enumerate(lines) if "No GPU" in line)
        assert lines[first + 1].strip() == "", "the no-GPU message took more than one line"
        assert app.query_one("#gpu-info").tooltip == NO_GPU.gpu_unavailable_reason
        text = "\n".join(lines)
        assert "GPU util" not in text and "GPU mem" not in text
        for figure in ("CPU 38%", "RAM 12.0 GiB / 32.0 GiB", "process RSS 3.0 GiB", "CPU 180%", "workers 4",
                       "disk read 1.5 MiB/s  write 30.0 MiB/s", "net  rx 2.0 KiB/s  tx 512 B/s"):
            assert figure in text, figure
        assert next(line for line in lines if line.startswith(" CPU ")).rstrip().endswith("38%")
        # Room to spare without GPUs: the CPU graph is 4 rows (32 eighths) tall; 37.5 % is 12.
        assert app.query_one("#cpu-graph").size.height == 4
        axis_row = next(i for i, line in enumerate(lines) if "0-100 %" in line)
        assert lines[axis_row - 1].rstrip().endswith("█") and lines[axis_row - 2].rstrip().endswith("▄")
        assert lines[axis_row - 3].strip() == ""
        axis = lines[axis_row]
        # One column per sample, a sample every 2 s: the width in columns is half the span.
        columns = app.query_one("#cpu-graph").size.width
        assert f"last {format_span(2.0 * columns)}" in axis and axis.rstrip().endswith("now")

        pane.apply(TWO_GPUS)
        lines = await shown(pilot, "GPU util", "torch alloc 130.0 GiB")
        assert_legible(lines)
        text = "\n".join(lines)
        for figure in ("util 100%  mem 140.0 GiB / 141.0 GiB  temp 84°C  power 700/700 W",
                       "torch alloc 130.0 GiB  reserved 139.0 GiB  peak 135.0 GiB",
                       "util 3%  mem 1.0 GiB / 141.0 GiB  temp N/A  power N/A",
                       "disk read 1.5 MiB/s", "net  rx 2.0 KiB/s"):
            assert figure in text, figure
        assert next(line for line in lines if "GPU util" in line).rstrip().endswith("52%")  # the mean
        # Two rows a graph is what 80x24 leaves; everything down to the axis fits: no scrolling.
        assert [app.query_one(f"#{key}-graph").size.height for key in ("gpu-util", "gpu-mem", "cpu")] == [2, 2, 2]
        assert pane.max_scroll_y == 0
        axis_row = next(i for i, line in enumerate(lines) if "0-100 %" in line)
        assert lines[axis_row - 1].rstrip().endswith("▆▆")  # both CPU samples, 12 of 16 eighths
        assert list(pane.cpu) == [37.5, 37.5]
        with pytest.raises(ValueError, match="telemetry source"):
            pane.start("remtoe", 1.0)


@pytest.mark.slow  # a second console start-up: beyond the fast loop's budget
@asyncio_test
async def test_real_sampling_fills_the_io_lines_from_the_second_sample():
    app = TrainingApp(telemetry_interval=0.05)  # the real TelemetrySampler
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        pane = app.system_pane
        await until(pilot, lambda: pane.telemetry is not None and pane.telemetry.host.net_tx_bps is not None,
                    "a second sample")
        pane.dirty = True
        lines = await shown(pilot, "disk read", "net  rx")
        assert_legible(lines)
        assert len(pane.cpu) >= 2


def plain(rows) -> list[str]:
    return [row.plain for row in rows]


def test_the_graph_scale_is_fixed_at_0_to_100():
    assert plain(percent_cells([0.0, 3.0, 50.0, 100.0], 6)) == ["  " + " ▁▄█"]
    # A steady low load stays low (a sparkline scaled to its data would draw full bars).
    assert plain(percent_cells([3.0] * 4, 4)) == ["▁▁▁▁"]
    assert plain(percent_cells([float(v) for v in range(10)], 3)) == ["▁▁▁"]  # only the newest that fit
    assert plain(percent_cells([], 0)) == [""]
    # Taller: each row holds 8 eighths, the top row first.
    assert plain(percent_cells([0.0, 25.0, 50.0, 60.0, 100.0], 5, height=2)) == ["   ▂█", " ▄███"]
    assert plain(percent_cells([1.0], 1, height=3)) == [" ", " ", "▁"]


@pytest.mark.parametrize(("seconds", "text"), [(63, "63 s"), (119.6, "120 s"), (126, "2 min"), (3 * 3600, "3.0 h")])
def test_format_span(seconds, text):
    assert format_span(seconds) == text


def test_the_pane_keeps_enough_history_for_a_wide_terminal():
    pane = SystemPane()
    assert pane.cpu.maxlen >= 300
