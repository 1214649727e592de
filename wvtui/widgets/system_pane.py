"""GPU and host pane: per-GPU NVML and PyTorch memory figures, host CPU/RAM/workers and disk and
network I/O, and graphs of utilization on a fixed 0-100 % scale.

In-process the pane samples telemetry itself, in a thread worker on its own timer (NVML and
psutil calls can be slow; the trainer never waits for them). Attached to a run over its socket
(`start("remote", ...)`) it samples nothing: the figures are the training machine's, delivered
to `apply`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widget import Widget
from textual.widgets import Label, Static
from textual.worker import Worker, WorkerState

from core.telemetry import Telemetry, TelemetrySampler, fmt_or_na, format_bytes, format_rate

from ..messages import TelemetrySampled, TelemetrySampleFailed

HISTORY = 600  # samples kept; a graph shows as many as it has columns
MAX_GRAPH_ROWS = 4
BLOCKS = " ▁▂▃▄▅▆▇█"
REMOTE = "remote"


def _mem_pair(used: int | None, total: int | None) -> str:
    if used is None and total is None:
        return "N/A"
    return f"{format_bytes(used)} / {format_bytes(total)}"


def _level_style(pct: float) -> str:
    return "red" if pct >= 90 else "yellow" if pct >= 60 else "green"


def percent_cells(values: list[float], width: int, height: int = 1) -> list[Text]:
    """The last `width` values (0-100) as `height` rows of blocks (top row first), newest at
    the right.

    The scale is fixed at 0-100: Textual's Sparkline scales to the data's own min and max, which
    draws a steady 3 % as a full bar. Any value above 0 shows at least the lowest block."""
    shown = values[-width:] if width > 0 else []
    pad = " " * max(0, width - len(shown))
    eighths = [min(8 * height, max(1 if v > 0 else 0, round(v / 100 * 8 * height))) for v in shown]
    rows = []
    for row in range(height):
        below = 8 * (height - 1 - row)  # eighths drawn by the rows under this one
        text = Text(pad)
        for v, level in zip(shown, eighths):
            text.append(BLOCKS[min(8, max(0, level - below))], style=_level_style(v))
        rows.append(text)
    return rows


def format_span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class PercentGraph(Widget):
    """One sample per column on a fixed 0-100 % scale."""

    DEFAULT_CSS = "PercentGraph { width: 1fr; height: 1fr; background: $boost; }"

    def __init__(self, history: deque[float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.history = history

    def render(self) -> Text:
        return Text("\n").join(percent_cells(list(self.history), self.size.width, max(1, self.size.height)))


class GraphAxis(Widget):
    """Under the graphs: their scale and the time their width covers, oldest left, now right."""

    DEFAULT_CSS = "GraphAxis { width: 1fr; height: 1; color: $text-muted; }"

    def __init__(self, interval: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.interval = interval

    def render(self) -> Text:
        width = self.size.width
        left = f"0-100 %, last {format_span(width * self.interval)}"
        return Text(left + "now".rjust(max(1, width - len(left))), no_wrap=True, overflow="crop")


class SystemPane(VerticalScroll):
    DEFAULT_CSS = """
    SystemPane #gpu-info.one-line { text-wrap: nowrap; text-overflow: ellipsis; }
    SystemPane .graph-row { height: 1; padding: 0 1; }
    SystemPane .graph-row Label, SystemPane .graph-row Static { height: 1; }
    SystemPane .graph-row.first { margin-top: 1; }
    SystemPane .graph-label { width: 10; color: $text-muted; }
    SystemPane .graph-value { width: 5; text-align: right; }
    SystemPane .graph-pad { width: 5; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.telemetry: Telemetry | None = None
        self.gpu_util: deque[float] = deque(maxlen=HISTORY)
        self.gpu_mem: deque[float] = deque(maxlen=HISTORY)
        self.cpu: deque[float] = deque(maxlen=HISTORY)
        self.dirty = True
        self.remote = False
        self._sampler: Any = None
        self._owns_sampler = False
        self._sampling = False

    def compose(self) -> ComposeResult:
        self.gpu_info = Static(id="gpu-info")
        self.host_info = Static(id="host-info")
        self.axis = GraphAxis(id="graph-axis")
        self.values: dict[str, Static] = {}
        rows = []
        for key, label, history in (("gpu-util", "GPU util", self.gpu_util), ("gpu-mem", "GPU mem", self.gpu_mem),
                                    ("cpu", "CPU", self.cpu)):
            self.values[key] = Static("", classes="graph-value", id=f"{key}-value")
            rows.append(Horizontal(Label(label, classes="graph-label"), PercentGraph(history, id=f"{key}-graph"),
                                   self.values[key], classes="graph-row", id=f"{key}-row"))
        self.gpu_rows = rows[:2]
        self.cpu_row = rows[2]
        yield self.gpu_info
        yield self.host_info
        yield from rows
        yield Horizontal(Label("", classes="graph-label"), self.axis, Static("", classes="graph-pad"),
                         classes="graph-row")

    def start(self, telemetry: Any, interval: float) -> None:
        """telemetry: None samples with a `TelemetrySampler` every `interval` seconds; an object
        with `.sample()` is used as the sampler; "remote" samples nothing here (another process
        samples every `interval` seconds and its snapshots come to `apply`); a fixed `Telemetry`
        is shown as is."""
        self.axis.interval = interval
        if isinstance(telemetry, str):
            if telemetry != REMOTE:
                raise ValueError(f"telemetry source must be {REMOTE!r}, a sampler or a Telemetry, not {telemetry!r}")
            self.remote = True
            self.dirty = True
            return
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
        self.gpu_info.update(self._gpu_text(t))
        no_gpu = t is not None and not t.gpus
        self.gpu_info.set_class(no_gpu, "one-line")
        self.gpu_info.tooltip = t.gpu_unavailable_reason if no_gpu else None
        self.host_info.update(self._host_text(t))
        self.host_info.display = t is not None
        for row in self.gpu_rows:
            row.display = bool(t is not None and t.gpus)
        first = self.gpu_rows[0] if t is not None and t.gpus else self.cpu_row
        for row in (*self.gpu_rows, self.cpu_row):
            row.set_class(row is first, "first")
        for key, history in (("gpu-util", self.gpu_util), ("gpu-mem", self.gpu_mem), ("cpu", self.cpu)):
            self.values[key].update(f"{history[-1]:.0f}%" if history else "N/A")
        self._fit_graphs()
        for graph in self.query(PercentGraph):
            graph.refresh()
        self.axis.refresh()

    def on_resize(self) -> None:
        self._fit_graphs()

    def _fit_graphs(self) -> None:
        """Graphs as tall as the rows the figures leave (up to MAX_GRAPH_ROWS): one row each on
        80x24 with two GPUs, taller where there is room."""
        t = self.telemetry
        gpus = len(t.gpus) if t is not None else 0
        figures = (3 * gpus if gpus else 1) + (5 if t is not None else 0)  # GPU lines; host + margin
        graphs = 3 if gpus else 1
        spare = self.size.height - figures - 2  # the graphs' top margin and their axis
        rows = max(1, min(MAX_GRAPH_ROWS, spare // graphs))
        for row in (*self.gpu_rows, self.cpu_row):
            if row.styles.height is None or row.styles.height.value != rows:
                row.styles.height = rows

    def _gpu_text(self, t: Telemetry | None) -> Text:
        if t is None:
            waiting = "waiting for telemetry from the run" if self.remote else "waiting for the first telemetry sample"
            return Text(waiting, style="dim")
        if not t.gpus:
            # One line, however long the reason: the host figures matter more on such a machine.
            text = Text()
            text.append("No GPU", style="bold yellow")
            text.append(" - " + (t.gpu_unavailable_reason or "none reported"), style="dim")
            return text
        text = Text()
        for i, g in enumerate(t.gpus):
            if i:
                text.append("\n")
            text.append(f"GPU{g.index} ", style="bold")
            text.append(f"{g.name or 'N/A'}\n", style="bold cyan")
            text.append("  util ", style="dim")
            text.append(fmt_or_na(g.utilization_pct, "{:.0f}%"), style="bold")
            text.append("  mem ", style="dim")
            text.append(_mem_pair(g.memory_used_bytes, g.memory_total_bytes))
            text.append("  temp ", style="dim")
            text.append(fmt_or_na(g.temperature_c, "{:.0f}°C"))
            text.append("  power ", style="dim")
            power = fmt_or_na(g.power_w, "{:.0f}")
            if g.power_limit_w is not None:
                power += f"/{g.power_limit_w:.0f}"
            text.append(power + (" W" if g.power_w is not None else ""))
            text.append("\n  torch alloc ", style="dim")
            text.append(format_bytes(g.torch_allocated_bytes))
            text.append("  reserved ", style="dim")
            text.append(format_bytes(g.torch_reserved_bytes))
            text.append("  peak ", style="dim")
            text.append(format_bytes(g.torch_peak_bytes))
        return text

    @staticmethod
    def _host_text(t: Telemetry | None) -> Text:
        text = Text()
        if t is None:
            return text
        h = t.host
        text.append("Host ", style="bold")
        text.append(" CPU ", style="dim")
        text.append(fmt_or_na(h.cpu_percent, "{:.0f}%"), style="bold")
        text.append("  RAM ", style="dim")
        text.append(_mem_pair(h.ram_used_bytes, h.ram_total_bytes))
        text.append("\n  process RSS ", style="dim")
        text.append(format_bytes(h.process_rss_bytes))
        text.append("  CPU ", style="dim")
        text.append(fmt_or_na(h.process_cpu_percent, "{:.0f}%"))
        text.append("  workers ", style="dim")
        text.append(fmt_or_na(h.workers))
        text.append("  RSS ", style="dim")
        text.append(format_bytes(h.workers_rss_bytes))
        text.append("\n  disk read ", style="dim")
        text.append(format_rate(h.disk_read_bps))
        text.append("  write ", style="dim")
        text.append(format_rate(h.disk_write_bps))
        text.append("\n  net  rx ", style="dim")
        text.append(format_rate(h.net_rx_bps))
        text.append("  tx ", style="dim")
        text.append(format_rate(h.net_tx_bps))
        return text
