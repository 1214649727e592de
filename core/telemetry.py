"""GPU and host figures for the console, as immutable snapshots.

A pure library in the manner of nvitop: `TelemetrySampler.sample()` never raises for a missing
GPU, driver or metric. Whatever the hardware cannot report is `None` (shown as "N/A"), and a
machine without NVML gets an explanation in `Telemetry.gpu_unavailable_reason`.

    sampler = TelemetrySampler()
    t = sampler.sample()          # about once a second: the console's timer, or the run's endpoint
    ...
    sampler.close()

Disk and network I/O are rates between two consecutive samples (bytes per second): the first
sample has none, and a counter that went backwards (a device or interface removed) gives None for
that sample rather than a negative rate.

This process's PyTorch memory is shown only on the GPUs it holds a context or memory on (N/A on
the others), matched to NVML's GPUs by UUID (MIG slices included), never by position. Its peak is
the highest allocation since the previous sample: each sample resets the allocator's peak.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import psutil

__all__ = [
    "GpuSnapshot",
    "HostSnapshot",
    "IoCounters",
    "Telemetry",
    "TelemetrySampler",
    "fmt_or_na",
    "format_bytes",
    "format_rate",
]


@dataclass(frozen=True)
class GpuSnapshot:
    index: int
    name: str | None
    utilization_pct: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_c: float | None
    power_w: float | None
    power_limit_w: float | None
    # This process's PyTorch caching-allocator figures; None when it has not touched this GPU.
    torch_allocated_bytes: int | None = None
    torch_reserved_bytes: int | None = None
    torch_peak_bytes: int | None = None  # highest allocated since the previous sample


@dataclass(frozen=True)
class HostSnapshot:
    cpu_percent: float | None
    ram_used_bytes: int | None
    ram_total_bytes: int | None
    process_rss_bytes: int | None
    process_cpu_percent: float | None
    workers: int | None  # child processes: the DataLoader workers
    workers_rss_bytes: int | None
    # Whole-machine rates since the previous sample; None on the first sample or where the
    # platform keeps no counters. Network leaves out loopback: that is this host talking to itself.
    disk_read_bps: float | None = None
    disk_write_bps: float | None = None
    net_rx_bps: float | None = None
    net_tx_bps: float | None = None


@dataclass(frozen=True)
class Telemetry:
    time: float  # time.time() when sampled
    gpus: tuple[GpuSnapshot, ...]
    gpu_unavailable_reason: str | None
    host: HostSnapshot


def format_bytes(n: int | float | None) -> str:
    """`1536` -> "1.5 KiB"; None -> "N/A"."""
    if n is None:
        return "N/A"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_rate(bytes_per_s: float | None) -> str:
    """`2.5 * 2**20` -> "2.5 MiB/s"; None -> "N/A"."""
    return "N/A" if bytes_per_s is None else format_bytes(bytes_per_s) + "/s"


def fmt_or_na(value: Any, fmt: str = "{}") -> str:
    """`fmt.format(value)`, or "N/A" for a metric that could not be read."""
    return "N/A" if value is None else fmt.format(value)


class TelemetrySampler:
    """Takes snapshots of every NVML GPU and of this process and its host.

    `nvml` is the `pynvml` module (imported lazily when None); `torch_cuda` is `torch.cuda`
    (likewise); `has_context(i)` tells whether this process holds a CUDA context on torch device i
    without creating one (default: torch's primary-context query). Tests pass stand-ins for
    hardware that is absent; the code path is the same. `io_counters()` gives the machine's
    cumulative disk and network byte counters (default: psutil's) and `clock` the time they
    are divided by.
    """

    def __init__(self, nvml: Any = None, torch_cuda: Any = None,
                 has_context: Callable[[int], bool] | None = None, *,
                 io_counters: Callable[[], IoCounters] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._nvml = nvml
        self._torch_cuda = torch_cuda
        self._has_context = has_context
        self._nvml_ready = False
        self._gpu_reason: str | None = None
        self._device_count = 0
        self._torch_to_nvml: dict[int, int] | None = None
        self._process = psutil.Process()
        self._io_counters = io_counters or _psutil_io_counters
        self._clock = clock
        self._last_io: tuple[float, IoCounters] | None = None
        # psutil's percentages are "since the previous call": prime them so the first real
        # sample covers the time since the sampler was made, without blocking.
        psutil.cpu_percent(interval=None)
        self._process.cpu_percent(interval=None)

    # -- GPUs ----------------------------------------------------------------------------------

    def _init_nvml(self) -> None:
        if self._nvml_ready or self._gpu_reason is not None:
            return
        if self._nvml is None:
            try:
                import pynvml
            except ImportError as exc:
                self._gpu_reason = f"NVML not available: {exc} (pip install nvidia-ml-py)"
                return
            self._nvml = pynvml
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            # Not retried every second: a missing library or driver does not appear mid-run.
            self._gpu_reason = f"NVML not available: {exc}"
            return
        try:
            self._device_count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            self._gpu_reason = f"NVML not available: {exc}"
            self._shutdown_quietly()
            return
        if self._device_count == 0:
            self._gpu_reason = "no NVIDIA GPU found"
            self._shutdown_quietly()
            return
        self._nvml_ready = True

    def _shutdown_quietly(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass

    def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nvml.NVMLError:
            return None

    def _gpu(self, index: int, torch_mem: tuple[int, int, int] | None) -> GpuSnapshot:
        nvml = self._nvml
        handle = self._read(nvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:  # e.g. the GPU fell off the bus
            nothing = (None,) * 7
            return GpuSnapshot(index, *nothing, *(torch_mem or (None,) * 3))
        name = self._read(nvml.nvmlDeviceGetName, handle)
        if isinstance(name, bytes):  # older pynvml releases return bytes
            name = name.decode(errors="replace")
        util = self._read(nvml.nvmlDeviceGetUtilizationRates, handle)
        mem = self._read(nvml.nvmlDeviceGetMemoryInfo, handle)
        temp = self._read(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        power_mw = self._read(nvml.nvmlDeviceGetPowerUsage, handle)
        limit_mw = self._read(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        return GpuSnapshot(
            index=index,
            name=name,
            utilization_pct=None if util is None else float(util.gpu),
            memory_used_bytes=None if mem is None else int(mem.used),
            memory_total_bytes=None if mem is None else int(mem.total),
            temperature_c=None if temp is None else float(temp),
            power_w=None if power_mw is None else power_mw / 1000.0,
            power_limit_w=None if limit_mw is None else limit_mw / 1000.0,
            torch_allocated_bytes=None if torch_mem is None else torch_mem[0],
            torch_reserved_bytes=None if torch_mem is None else torch_mem[1],
            torch_peak_bytes=None if torch_mem is None else torch_mem[2],
        )

    def _uuid(self, handle: Any) -> str | None:
        uuid = self._read(self._nvml.nvmlDeviceGetUUID, handle)
        if isinstance(uuid, bytes):
            uuid = uuid.decode(errors="replace")
        return _bare_uuid(uuid) if uuid else None

    def _nvml_uuids(self) -> dict[str, int]:
        """UUID -> NVML index, for every GPU and for every MIG slice (mapped to its GPU)."""
        nvml = self._nvml
        uuids: dict[str, int] = {}
        for nv in range(self._device_count):
            handle = self._read(nvml.nvmlDeviceGetHandleByIndex, nv)
            if handle is None:
                continue
            uuid = self._uuid(handle)
            if uuid:
                uuids[uuid] = nv
            mode = self._read(getattr(nvml, "nvmlDeviceGetMigMode", _unsupported), handle)
            if not mode or mode[0] != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
                continue
            # On a MIG GPU, CUDA (and so torch) sees slices, each with its own "MIG-" UUID.
            for k in range(self._read(nvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0):
                mig = self._read(nvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, k)
                uuid = None if mig is None else self._uuid(mig)
                if uuid:
                    uuids[uuid] = nv
        return uuids

    def _torch_memory(self) -> dict[int, tuple[int, int, int]]:
        """PyTorch allocator figures keyed by NVML index, for the GPUs this process has touched."""
        if self._torch_cuda is None:
            import torch

            self._torch_cuda = torch.cuda
        tc = self._torch_cuda
        # is_initialized() first: the UI must never be the one that creates a CUDA context.
        if not (tc.is_initialized() and tc.is_available()):
            return {}
        if self._torch_to_nvml is None:
            self._torch_to_nvml = self._map_torch_to_nvml(tc)
        has_context = self._has_context or _primary_context_query()
        figures: dict[int, tuple[int, int, int]] = {}
        for t, nv in self._torch_to_nvml.items():
            reserved = tc.memory_reserved(t)
            # A GPU the process never used has neither a context nor memory: its torch figures are
            # N/A, not "0 B" (which would claim the process is there).
            if not (reserved or has_context(t)):
                continue
            mine = (tc.memory_allocated(t), reserved, tc.max_memory_allocated(t))
            # Peaks per sampling window: a lifetime peak would keep start-up spikes (cudnn's
            # benchmark workspaces) on screen for the whole run.
            tc.reset_peak_memory_stats(t)
            old = figures.get(nv)
            figures[nv] = mine if old is None else tuple(a + b for a, b in zip(old, mine))  # slices of one GPU
        return figures

    def _map_torch_to_nvml(self, tc: Any) -> dict[int, int]:
        # torch numbers the devices CUDA_VISIBLE_DEVICES leaves (in CUDA_DEVICE_ORDER, by default
        # fastest first), NVML numbers every GPU by PCI bus, and on MIG torch sees slices: index t
        # in torch says nothing about NVML's index. Only the UUID identifies a device in both; a
        # torch device whose UUID NVML does not list gets no figures rather than another GPU's.
        nvml_uuids = self._nvml_uuids()
        mapping = {}
        for t in range(tc.device_count()):
            try:
                uuid = _bare_uuid(str(tc.get_device_properties(t).uuid))
            except (AttributeError, RuntimeError):
                continue
            if uuid in nvml_uuids:
                mapping[t] = nvml_uuids[uuid]
        return mapping

    def sample_gpus(self) -> tuple[tuple[GpuSnapshot, ...], str | None]:
        """(snapshots, None), or ((), reason) when NVML or a GPU is not there."""
        self._init_nvml()
        if not self._nvml_ready:
            return (), self._gpu_reason
        torch_mem = self._torch_memory()
        return tuple(self._gpu(i, torch_mem.get(i)) for i in range(self._device_count)), None

    # -- host ----------------------------------------------------------------------------------

    def sample_host(self, worker_pids: Iterable[int] | None = None) -> HostSnapshot:
        """System CPU and RAM, this process, and its workers (child processes unless given)."""
        cpu = _psutil_or_none(lambda: psutil.cpu_percent(interval=None))
        vm = _psutil_or_none(psutil.virtual_memory)
        rss = _psutil_or_none(lambda: self._process.memory_info().rss)
        pcpu = _psutil_or_none(lambda: self._process.cpu_percent(interval=None))
        workers = _psutil_or_none(lambda: self._workers(worker_pids))
        workers_rss = None
        if workers is not None:
            sizes = [_psutil_or_none(lambda p=p: p.memory_info().rss) for p in workers]
            workers_rss = sum(s for s in sizes if s is not None)
        return HostSnapshot(
            cpu_percent=cpu,
            # total - available, not vm.used: "used" leaves out different things per platform,
            # and what matters to a user is how close the machine is to swapping.
            ram_used_bytes=None if vm is None else int(vm.total - vm.available),
            ram_total_bytes=None if vm is None else int(vm.total),
            process_rss_bytes=rss,
            process_cpu_percent=pcpu,
            workers=None if workers is None else len(workers),
            workers_rss_bytes=workers_rss,
            **self._io_rates(),
        )

    def _io_rates(self) -> dict[str, float | None]:
        now = self._clock()
        counters = _psutil_or_none(self._io_counters) or IoCounters()
        last, self._last_io = self._last_io, (now, counters)
        names = ("disk_read_bps", "disk_write_bps", "net_rx_bps", "net_tx_bps")
        if last is None or now <= last[0]:
            return dict.fromkeys(names)
        seconds = now - last[0]
        return {name: _rate(before, after, seconds)
                for name, before, after in zip(names, dataclasses.astuple(last[1]), dataclasses.astuple(counters))}

    def _workers(self, worker_pids: Iterable[int] | None) -> list[psutil.Process]:
        if worker_pids is not None:
            procs = []
            for pid in worker_pids:
                try:
                    procs.append(psutil.Process(pid))
                except psutil.Error:
                    pass  # a worker that exited since its pid was taken
            return procs
        me = self._process.pid
        # recursive: under the forkserver start method the workers are the forkserver's children.
        return [p for p in self._process.children(recursive=True) if not _is_mp_helper(p, me)]

    # -- both ----------------------------------------------------------------------------------

    def sample(self, worker_pids: Iterable[int] | None = None) -> Telemetry:
        gpus, reason = self.sample_gpus()
        host = self.sample_host(worker_pids)
        return Telemetry(time=time.time(), gpus=gpus, gpu_unavailable_reason=reason, host=host)

    def close(self) -> None:
        """Release NVML; a later `sample()` initialises it again."""
        if self._nvml_ready:
            self._shutdown_quietly()
        self._nvml_ready = False
        self._gpu_reason = None
        self._torch_to_nvml = None

    def __enter__(self) -> TelemetrySampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class IoCounters:
    """Cumulative bytes since boot; None where the platform has no such counter."""

    disk_read: int | None = None
    disk_written: int | None = None
    net_received: int | None = None
    net_sent: int | None = None


def _rate(before: int | None, after: int | None, seconds: float) -> float | None:
    if before is None or after is None or after < before:
        return None
    return (after - before) / seconds


@functools.cache
def _loopback_interfaces() -> frozenset[str]:
    try:
        stats = psutil.net_if_stats()
        flagged = {name for name, s in stats.items() if "loopback" in getattr(s, "flags", "").split(",")}
    except (psutil.Error, OSError):
        flagged = set()
    # Where psutil reports no flags, the name tells ("lo" on Linux, "lo0" on macOS).
    return frozenset(flagged | {"lo", "lo0"})


def _psutil_io_counters() -> IoCounters:
    # psutil sums whole disks only (partitions would count twice), and returns None on a
    # machine without any (some containers); each half may be missing on its own.
    disk = _psutil_or_none(lambda: psutil.disk_io_counters(perdisk=False))
    nics = _psutil_or_none(lambda: psutil.net_io_counters(pernic=True))
    received = sent = None
    if nics is not None:
        skip = _loopback_interfaces()
        counted = [c for name, c in nics.items() if name not in skip]
        received = sum(c.bytes_recv for c in counted)
        sent = sum(c.bytes_sent for c in counted)
    return IoCounters(
        disk_read=None if disk is None else int(disk.read_bytes),
        disk_written=None if disk is None else int(disk.write_bytes),
        net_received=received,
        net_sent=sent,
    )


def _psutil_or_none(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (psutil.Error, OSError):
        return None


def _is_mp_helper(proc: psutil.Process, parent_pid: int) -> bool:
    """multiprocessing's resource tracker and forkserver are our children but not workers."""
    try:
        if proc.ppid() != parent_pid:
            return False
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return "multiprocessing.resource_tracker" in cmdline or "multiprocessing.forkserver" in cmdline


def _bare_uuid(uuid: str) -> str:
    """NVML writes "GPU-<hex>" or "MIG-<hex>", torch the bare hex: compare the bare form."""
    uuid = uuid.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if uuid.startswith(prefix):
            return uuid[len(prefix):]
    return uuid


def _unsupported(*args: Any) -> None:
    return None


def _primary_context_query() -> Callable[[int], bool]:
    """torch's query of whether device i has a primary context; it never creates one."""
    import torch

    query = getattr(torch._C, "_cuda_hasPrimaryContext", None)
    return (lambda i: False) if query is None else (lambda i: bool(query(i)))
