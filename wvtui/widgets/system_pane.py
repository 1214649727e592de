"""GPU and host pane: per-GPU NVML and PyTorch memory figures, host CPU/RAM/workers, sparklines.

The pane samples telemetry itself, in a thread worker on its own timer (NVML and psutil calls
can be slow; the trainer never waits for them).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Label, Sparkline, Static
from textual.worker import Worker, WorkerState

from core.telemetry import Telemetry, TelemetrySampler, fmt_or_na, format_bytes

from ..messages import TelemetrySampled, TelemetrySampleFailed

HISTORY = 120  # seconds of sparkline history at one sample a second


def _mem_pair(used: int | None, total: int | None) -> str:
    if used is None and total is None:
        return "N/A"
    return f"{format_bytes(used)} / {format_bytes(total)}"


class SystemPane(VerticalScroll):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.telemetry: Telemetry | None = None
        self.gpu_util: deque[float] = deque(maxlen=HISTORY)
        self.gpu_mem: deque[float] = deque(maxlen=HISTORY)
        self.cpu: deque[float] = deque(maxlen=HISTORY)
        self.dirty = True
        self._sampler: Any = None
        self._owns_sampler = False
        self._sampling = False

    def compose(self) -> ComposeResult:
        self.gpu_info = Static(id="gpu-info")
        self.host_info = Static(id="host-info")
        self.gpu_util_spark = Sparkline([], id="gpu-util-spark", summary_function=max)
        self.gpu_mem_spark = Sparkline([], id="gpu-mem-spark", summary_function=max)
        self.cpu_spark = Sparkline([], id="cpu-spark", summary_function=max)
        self.gpu_rows = [Horizontal(Label("GPU util ", classes="spark-label"), self.gpu_util_spark,
                                    classes="spark-row"),
                         Horizontal(Label("GPU mem  ", classes="spark-label"), self.gpu_mem_spark,
                                    classes="spark-row")]
        yield self.gpu_info
        yield self.host_info
        yield from self.gpu_rows
        yield Horizontal(Label("CPU      ", classes="spark-label"), self.cpu_spark, classes="spark-row")

    def start(self, telemetry: Any, interval: float) -> None:
        """telemetry: None samples with a `TelemetrySampler` every `interval` seconds; an object
        with `.sample()` is used as the sampler; a fixed `Telemetry` is shown as is."""
        if telemetry is None:
            self._sampler, self._owns_sampler = TelemetrySampler(), True
        elif hasattr(telemetry, "sample"):
            self._sampler = telemetry
        else:
            self.apply(telemetry)
            return
        self._sample()
        self.set_interval(interval, self._sample)

    def on_unmount(self) -> None:
        if self._owns_sampler:
            self._sampler.close()

    def _sample(self) -> None:
        if not self._sampling:  # a slow NVML call must not pile up threads
            self._sampling = True
            self._sample_worker()

    @work(thread=True, group="telemetry", exit_on_error=False)
    def _sample_worker(self) -> None:
        try:
            telemetry = self._sampler.sample()
        finally:
            self._sampling = False
        self.post_message(TelemetrySampled(telemetry))

    @on(TelemetrySampled)
    def _on_sampled(self, message: TelemetrySampled) -> None:
        self.apply(message.telemetry)

    @on(Worker.StateChanged)
    def _on_worker_state(self, event: Worker.StateChanged) -> None:
        # Sampling failed once; the next tick tries again. The app says so in its log, not in
        # a toast every second.
        if event.state == WorkerState.ERROR:
            self.post_message(TelemetrySampleFailed(event.worker.error))

    def apply(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        gpus = telemetry.gpus
        utils = [g.utilization_pct for g in gpus if g.utilization_pct is not None]
        if utils:
            self.gpu_util.append(sum(utils) / len(utils))
        mems = [g.memory_used_bytes / g.memory_total_bytes for g in gpus
                if g.memory_used_bytes is not None and g.memory_total_bytes]
        if mems:
            self.gpu_mem.append(100.0 * max(mems))
        if telemetry.host.cpu_percent is not None:
            self.cpu.append(telemetry.host.cpu_percent)
        self.dirty = True

    def redraw(self) -> None:
        self.dirty = False
        t = self.telemetry
        gpu_text = Text()
        host_text = Text()
        if t is None:
            gpu_text.append("waiting for the first telemetry sample…", style="dim")
        elif not t.gpus:
            gpu_text.append("No NVIDIA GPU / NVML unavailable: ", style="bold yellow")
            gpu_text.append(t.gpu_unavailable_reason or "no GPU reported")
        else:
            for i, g in enumerate(t.gpus):
                if i:
                    gpu_text.append("\n")
                gpu_text.append(f"GPU{g.index} ", style="bold")
                gpu_text.append(f"{g.name or 'N/A'}\n", style="bold cyan")
                gpu_text.append("  util ", style="dim")
                gpu_text.append(fmt_or_na(g.utilization_pct, "{:.0f}%"), style="bold")
                gpu_text.append("  mem ", style="dim")
                gpu_text.append(_mem_pair(g.memory_used_bytes, g.memory_total_bytes))
                gpu_text.append("  temp ", style="dim")
                gpu_text.append(fmt_or_na(g.temperature_c, "{:.0f}°C"))
                gpu_text.append("  power ", style="dim")
                power = fmt_or_na(g.power_w, "{:.0f}")
                if g.power_limit_w is not None:
                    power += f"/{g.power_limit_w:.0f}"
                gpu_text.append(power + (" W" if g.power_w is not None else ""))
                gpu_text.append("\n  torch alloc ", style="dim")
                gpu_text.append(format_bytes(g.torch_allocated_bytes))
                gpu_text.append("  reserved ", style="dim")
                gpu_text.append(format_bytes(g.torch_reserved_bytes))
                gpu_text.append("  peak ", style="dim")
                gpu_text.append(format_bytes(g.torch_peak_bytes))
        if t is not None:
            h = t.host
            host_text.append("Host ", style="bold")
            host_text.append(" CPU ", style="dim")
            host_text.append(fmt_or_na(h.cpu_percent, "{:.0f}%"), style="bold")
            host_text.append("  RAM ", style="dim")
            host_text.append(_mem_pair(h.ram_used_bytes, h.ram_total_bytes))
            host_text.append("\n  process RSS ", style="dim")
            host_text.append(format_bytes(h.process_rss_bytes))
            host_text.append(" CPU ", style="dim")
            host_text.append(fmt_or_na(h.process_cpu_percent, "{:.0f}%"))
            host_text.append("  workers ", style="dim")
            host_text.append(fmt_or_na(h.workers))
            host_text.append(" RSS ", style="dim")
            host_text.append(format_bytes(h.workers_rss_bytes))
        self.gpu_info.update(gpu_text)
        self.host_info.update(host_text)
        for row in self.gpu_rows:
            row.display = bool(t is not None and t.gpus)
        self.gpu_util_spark.data = list(self.gpu_util)
        self.gpu_mem_spark.data = list(self.gpu_mem)
        self.cpu_spark.data = list(self.cpu)
