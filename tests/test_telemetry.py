"""Telemetry never raises: absent GPUs, drivers and metrics become a reason or N/A.

This machine has no GPU, so the NVML module is replaced by a stand-in for the GPU cases; the
sampler's code path is the one it runs against the real `pynvml`.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import psutil
import pynvml
import pytest
import torch

from core.telemetry import (
    GpuSnapshot,
    HostSnapshot,
    IoCounters,
    Telemetry,
    TelemetrySampler,
    fmt_or_na,
    format_bytes,
    format_rate,
)

GiB = 1024**3


class FakeNvml:
    """Stands in for `pynvml` with two GPUs; device 1 cannot report utilization, temperature
    or power, as on some virtualised and older boards."""

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE

    def __init__(self, count=2, init_error=None, lost=(), mig=None):
        self.count = count
        self.init_error = init_error
        self.lost = set(lost)
        # {gpu index: number of MIG slices}; a slice's handle is ("mig", gpu, k).
        self.mig = dict(mig or {})
        self.calls: list[str] = []

    def nvmlInit(self):
        self.calls.append("init")
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        if i in self.lost:
            raise pynvml.NVMLError_GpuIsLost()
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA Fake 80GB" if h == 0 else "NVIDIA Fake Lite"

    def nvmlDeviceGetUUID(self, h):
        if isinstance(h, tuple):
            return f"MIG-{h[1]}{h[2]}000000-eeee-ffff-0000-111111111111"
        return f"GPU-0000000{h}-aaaa-bbbb-cccc-dddddddddddd"

    def nvmlDeviceGetMigMode(self, h):
        if h not in self.mig:
            raise pynvml.NVMLError_NotSupported()  # as on GPUs without MIG
        return [pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE]

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, k):
        if k >= self.mig[h]:
            raise pynvml.NVMLError_NotFound()  # an empty slot of the seven
        return ("mig", h, k)

    def nvmlDeviceGetUtilizationRates(self, h):
        if h == 1:
            raise pynvml.NVMLError_NotSupported()
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=(3 + h) * GiB, total=80 * GiB, free=(77 - h) * GiB)

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        if h == 1:
            raise pynvml.NVMLError_NotSupported()
        return 64

    def nvmlDeviceGetPowerUsage(self, h):
        if h == 1:
            raise pynvml.NVMLError_NoPermission()
        return 312_500  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        if h == 1:
            raise pynvml.NVMLError_NotSupported()
        return 700_000


class FakeTorchCuda:
    """`torch.cuda` of a process that has (or has not) started using CUDA, with per-device
    allocator figures; `contexts` are the devices on which it holds a CUDA context."""

    def __init__(self, initialized, uuids=(), contexts=None, allocated=None, reserved=None):
        self.initialized = initialized
        self.uuids = list(uuids)
        self.contexts = set(range(len(self.uuids)) if contexts is None else contexts)
        self.allocated = dict(allocated or {t: (t + 1) * 100 for t in self.contexts})
        self.reserved = dict(reserved or {t: (t + 1) * 200 for t in self.contexts})
        self.peak = dict(allocated) if allocated else {t: (t + 1) * 300 for t in self.contexts}
        self.resets: list[int] = []

    def has_context(self, t):
        return t in self.contexts

    def is_initialized(self):
        return self.initialized

    def is_available(self):
        return True

    def device_count(self):
        return len(self.uuids)

    def get_device_properties(self, t):
        return SimpleNamespace(uuid=self.uuids[t])

    def _check(self, t):
        if not self.initialized:
            raise AssertionError("telemetry touched CUDA before the process initialised it")

    def memory_allocated(self, t):
        self._check(t)
        return self.allocated.get(t, 0)

    def memory_reserved(self, t):
        self._check(t)
        return self.reserved.get(t, 0)

    def max_memory_allocated(self, t):
        self._check(t)
        return self.peak.get(t, 0)

    def reset_peak_memory_stats(self, t):
        self._check(t)
        self.resets.append(t)
        self.peak[t] = self.allocated.get(t, 0)  # what torch does: the peak restarts at the current use

    def sampler(self, nvml):
        return TelemetrySampler(nvml=nvml, torch_cuda=self, has_context=self.has_context)


def _uuid(nv):
    """torch's form of FakeNvml's GPU nv UUID: bare hex, no "GPU-" prefix."""
    return f"0000000{nv}-aaaa-bbbb-cccc-dddddddddddd"


def _torch_mem(g):
    return g.torch_allocated_bytes, g.torch_reserved_bytes, g.torch_peak_bytes


def test_metrics_a_gpu_cannot_report_are_none_not_errors():
    nvml = FakeNvml()
    sampler = TelemetrySampler(nvml=nvml, torch_cuda=FakeTorchCuda(initialized=False))
    t = sampler.sample()
    assert t.gpu_unavailable_reason is None
    g0, g1 = t.gpus
    assert g0 == GpuSnapshot(
        index=0,
        name="NVIDIA Fake 80GB",
        utilization_pct=87.0,
        memory_used_bytes=3 * GiB,
        memory_total_bytes=80 * GiB,
        temperature_c=64.0,
        power_w=312.5,
        power_limit_w=700.0,
        torch_allocated_bytes=None,
        torch_reserved_bytes=None,
        torch_peak_bytes=None,
    )
    assert g1.name == "NVIDIA Fake Lite"
    assert g1.memory_used_bytes == 4 * GiB
    assert g1.utilization_pct is None
    assert g1.temperature_c is None
    assert g1.power_w is None and g1.power_limit_w is None
    sampler.close()
    assert nvml.calls == ["init", "shutdown"]


def test_a_lost_gpu_is_all_na():
    sampler = TelemetrySampler(nvml=FakeNvml(lost={1}), torch_cuda=FakeTorchCuda(initialized=False))
    g0, g1 = sampler.sample().gpus
    assert g0.memory_total_bytes == 80 * GiB
    assert g1.index == 1
    assert all(getattr(g1, f.name) is None for f in dataclasses.fields(g1) if f.name != "index")


def test_nvml_init_failure_gives_a_reason_and_host_figures_still_come():
    nvml = FakeNvml(init_error=pynvml.NVMLError_DriverNotLoaded())
    sampler = TelemetrySampler(nvml=nvml)
    t = sampler.sample()
    assert t.gpus == ()
    assert t.gpu_unavailable_reason == "NVML not available: Driver Not Loaded"
    assert t.host.ram_total_bytes > 0
    assert t.host.process_rss_bytes > 0
    # A missing driver does not appear mid-run: NVML is not retried every second.
    sampler.sample()
    assert nvml.calls == ["init"]
    missing = TelemetrySampler(nvml=FakeNvml(init_error=pynvml.NVMLError_LibraryNotFound()))
    assert missing.sample_gpus() == ((), "NVML not available: NVML Shared Library Not Found")


def test_zero_gpus_says_so():
    nvml = FakeNvml(count=0)
    t = TelemetrySampler(nvml=nvml).sample()
    assert t.gpus == ()
    assert t.gpu_unavailable_reason == "no NVIDIA GPU found"
    assert nvml.calls == ["init", "shutdown"]


def test_torch_memory_only_once_the_process_uses_cuda():
    cuda = FakeTorchCuda(initialized=False, uuids=[_uuid(1)])
    sampler = cuda.sampler(FakeNvml())
    assert all(g.torch_allocated_bytes is None for g in sampler.sample().gpus)

    cuda.initialized = True
    g0, g1 = sampler.sample().gpus
    # CUDA_VISIBLE_DEVICES=1: torch's device 0 is NVML's device 1; the UUID tells them apart.
    assert _torch_mem(g0) == (None, None, None)
    assert _torch_mem(g1) == (100, 200, 300)


def test_a_gpu_the_process_never_touched_is_na_not_zero():
    # Both GPUs visible to torch; the run uses only cuda:1, so cuda:0 has no context and no memory.
    cuda = FakeTorchCuda(initialized=True, uuids=[_uuid(0), _uuid(1)], contexts={1})
    g0, g1 = cuda.sampler(FakeNvml()).sample().gpus
    assert _torch_mem(g0) == (None, None, None)
    assert format_bytes(g0.torch_allocated_bytes) == "N/A"
    assert _torch_mem(g1) == (200, 400, 600)
    assert cuda.resets == [1]  # the untouched GPU's allocator is not even read for its peak


def test_a_gpu_holding_only_a_context_shows_zero_bytes():
    # A context without allocations (what a stray set_device leaves) is the process being there.
    cuda = FakeTorchCuda(initialized=True, uuids=[_uuid(0), _uuid(1)], contexts={0, 1},
                         allocated={1: 100}, reserved={1: 200})
    g0, g1 = cuda.sampler(FakeNvml()).sample().gpus
    assert _torch_mem(g0) == (0, 0, 0)
    assert format_bytes(g0.torch_reserved_bytes) == "0 B"
    assert g1.torch_reserved_bytes == 200


def test_memory_without_a_reported_context_still_counts():
    cuda = FakeTorchCuda(initialized=True, uuids=[_uuid(0)], contexts={0})
    cuda.contexts.clear()  # e.g. a torch without the primary-context query: the allocator decides
    g0, _ = cuda.sampler(FakeNvml()).sample().gpus
    assert _torch_mem(g0) == (100, 200, 300)


def test_the_peak_is_per_sampling_window_not_lifetime():
    cuda = FakeTorchCuda(initialized=True, uuids=[_uuid(0)], allocated={0: 5 * GiB}, reserved={0: 9 * GiB})
    cuda.peak[0] = 8 * GiB  # a start-up spike (cudnn's benchmark workspaces)
    sampler = cuda.sampler(FakeNvml())
    assert sampler.sample().gpus[0].torch_peak_bytes == 8 * GiB
    assert sampler.sample().gpus[0].torch_peak_bytes == 5 * GiB  # the spike is gone the next second
    cuda.allocated[0] = 6 * GiB
    cuda.peak[0] = 7 * GiB  # a new high during this window
    assert sampler.sample().gpus[0].torch_peak_bytes == 7 * GiB
    assert cuda.resets == [0, 0, 0]


def test_mig_slices_are_matched_by_uuid_never_by_order():
    # GPU 0 whole, GPU 1 split into two MIG slices; the process sees one slice of GPU 1
    # (CUDA_VISIBLE_DEVICES=MIG-...), which torch calls device 0. Matching by order would put its
    # memory on GPU 0.
    nvml = FakeNvml(mig={1: 2})
    slice_uuid = nvml.nvmlDeviceGetUUID(("mig", 1, 1)).removeprefix("MIG-")
    cuda = FakeTorchCuda(initialized=True, uuids=[slice_uuid])
    g0, g1 = cuda.sampler(nvml).sample().gpus
    assert _torch_mem(g0) == (None, None, None)
    assert _torch_mem(g1) == (100, 200, 300)


def test_a_torch_device_nvml_does_not_list_gets_no_figures():
    # No UUID match (e.g. an old MIG UUID format): the figures go nowhere rather than to GPU 0.
    cuda = FakeTorchCuda(initialized=True, uuids=["", "99999999-0000-0000-0000-000000000000"])
    gpus = cuda.sampler(FakeNvml()).sample().gpus
    assert [_torch_mem(g) for g in gpus] == [(None, None, None)] * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: without a GPU the sampler never reaches torch")
def test_sampling_never_creates_a_cuda_context_in_a_fresh_process():
    # The real torch and real NVML: a process that has not used CUDA must still not have touched
    # it after sampling, in a fresh interpreter where nothing else did (run by bench.gpu_check).
    code = ("import torch; from core.telemetry import TelemetrySampler as S; s = S(); s.sample(); s.sample(); "
            "s.close(); print(torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_real_nvml_on_this_machine_never_raises():
    was_initialized = torch.cuda.is_initialized()
    with TelemetrySampler() as sampler:
        t = sampler.sample()
    assert isinstance(t, Telemetry)
    if t.gpu_unavailable_reason is None:
        assert t.gpus and all(g.memory_total_bytes for g in t.gpus)
    else:
        assert t.gpus == ()
        assert t.gpu_unavailable_reason.startswith(("NVML not available: ", "no NVIDIA GPU found"))
    assert torch.cuda.is_initialized() == was_initialized


def test_snapshots_are_immutable():
    t = TelemetrySampler(nvml=FakeNvml(count=0)).sample()
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.host.workers = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.gpu_unavailable_reason = None  # type: ignore[misc]


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_host_counts_a_child_process_as_a_worker():
    sampler = TelemetrySampler(nvml=FakeNvml(count=0))
    before = sampler.sample_host()
    child = _sleeper()
    try:
        during = sampler.sample_host()
        assert during.workers == before.workers + 1
        assert during.workers_rss_bytes > before.workers_rss_bytes
        only = sampler.sample_host(worker_pids=[child.pid])
        assert only.workers == 1 and only.workers_rss_bytes > 0
    finally:
        child.kill()
        child.wait()
    after = sampler.sample_host()
    assert after.workers == before.workers
    # A pid that has gone is skipped, not an error.
    assert sampler.sample_host(worker_pids=[child.pid]).workers == 0


def test_host_counts_real_dataloader_workers():
    sampler = TelemetrySampler(nvml=FakeNvml(count=0))
    before = sampler.sample_host().workers
    loader = torch.utils.data.DataLoader(
        list(range(8)), batch_size=2, num_workers=2, persistent_workers=True
    )
    it = iter(loader)
    next(it)
    try:
        assert sampler.sample_host().workers == before + 2
    finally:
        del it, loader
    deadline = time.monotonic() + 10
    while sampler.sample_host().workers != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sampler.sample_host().workers == before


def test_host_cpu_percentages_cover_the_time_since_the_previous_sample():
    sampler = TelemetrySampler(nvml=FakeNvml(count=0))
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    host = sampler.sample_host()
    assert isinstance(host, HostSnapshot)
    # Unprimed, psutil would report 0.0 here; the busy loop makes it clearly positive even on
    # a machine shared with other jobs.
    assert host.process_cpu_percent > 5
    assert 0 < host.cpu_percent <= 100
    assert 0 < host.ram_used_bytes < host.ram_total_bytes
    assert host.process_rss_bytes == pytest.approx(psutil.Process(os.getpid()).memory_info().rss, rel=0.2)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "N/A"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (3 * GiB, "3.0 GiB"),
        (5 * 1024 * GiB, "5.0 TiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_fmt_or_na():
    assert fmt_or_na(None) == "N/A"
    assert fmt_or_na(87.0, "{:.0f}%") == "87%"
    assert fmt_or_na(0) == "0"


def test_multiprocessing_resource_tracker_is_not_a_worker():
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    children = [p.pid for p in psutil.Process().children(recursive=True)]
    assert resource_tracker._resource_tracker._pid in children
    host = TelemetrySampler(nvml=FakeNvml(count=0)).sample_host()
    assert host.workers == len(children) - 1


class FakeIo:
    """Cumulative disk and network counters, and the clock the sampler divides by."""

    def __init__(self):
        self.now = 100.0
        self.counters = IoCounters(disk_read=0, disk_written=0, net_received=0, net_sent=0)

    def advance(self, seconds, **more):
        self.now += seconds
        self.counters = IoCounters(**{k: (None if v is None or more.get(k, 0) is None else v + more.get(k, 0))
                                      for k, v in dataclasses.asdict(self.counters).items()})

    def sampler(self):
        return TelemetrySampler(nvml=FakeNvml(count=0), io_counters=lambda: self.counters, clock=lambda: self.now)


def _io(host):
    return host.disk_read_bps, host.disk_write_bps, host.net_rx_bps, host.net_tx_bps


def test_io_rates_are_bytes_per_second_between_consecutive_samples():
    io = FakeIo()
    sampler = io.sampler()
    assert _io(sampler.sample_host()) == (None,) * 4  # nothing to compare the first sample with
    io.advance(2.0, disk_read=4 * GiB, disk_written=GiB, net_received=3000, net_sent=0)
    assert _io(sampler.sample_host()) == (2 * GiB, GiB / 2, 1500.0, 0.0)
    io.advance(0.5, disk_read=GiB)
    assert _io(sampler.sample_host()) == (2 * GiB, 0.0, 0.0, 0.0)  # each rate covers its own window


def test_a_counter_that_goes_back_or_away_is_none_not_a_negative_rate():
    io = FakeIo()
    sampler = io.sampler()
    io.counters = IoCounters(disk_read=10_000, disk_written=10_000, net_received=10_000, net_sent=10_000)
    sampler.sample_host()
    io.now += 1.0
    # A NIC unplugged (its bytes leave the sum), the disk counters gone (a container without them).
    io.counters = IoCounters(net_received=4_000, net_sent=12_000)
    assert _io(sampler.sample_host()) == (None, None, None, 2_000.0)
    io.now += 1.0
    io.counters = IoCounters(disk_read=5, disk_written=5, net_received=5_000, net_sent=12_000)
    assert _io(sampler.sample_host()) == (None, None, 1_000.0, 0.0)


def test_failing_io_counters_give_none_and_the_rest_of_the_host():
    def broken():
        raise psutil.AccessDenied()

    sampler = TelemetrySampler(nvml=FakeNvml(count=0), io_counters=broken)
    for _ in range(2):
        host = sampler.sample_host()
        assert _io(host) == (None,) * 4 and host.ram_total_bytes > 0


def test_real_psutil_io_rates_from_the_second_sample_on():
    sampler = TelemetrySampler(nvml=FakeNvml(count=0))
    assert _io(sampler.sample().host) == (None,) * 4
    with open(os.devnull, "wb") as sink:  # some time to divide by, on a coarse clock too
        sink.write(b"\0" * 1024)
    time.sleep(0.02)
    host = sampler.sample().host
    counters = psutil.disk_io_counters(), psutil.net_io_counters()
    for rate, counter in zip(_io(host), [counters[0], counters[0], counters[1], counters[1]]):
        if counter is not None:
            assert isinstance(rate, float) and rate >= 0


def test_loopback_traffic_is_not_network_io():
    import socket

    from core.telemetry import _psutil_io_counters

    payload = 32 * 1024 * 1024
    server = socket.create_server(("127.0.0.1", 0))
    before = _psutil_io_counters()
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    received = 0
    sender = threading.Thread(target=lambda: client.sendall(b"x" * payload))
    sender.start()
    while received < payload:
        received += len(peer.recv(1 << 20))
    sender.join()
    for s in (client, peer, server):
        s.close()
    after = _psutil_io_counters()
    if before.net_received is None:
        pytest.skip("this platform keeps no network counters")
    # 32 MiB went through lo; what the real interfaces did meanwhile is far less.
    assert after.net_received - before.net_received < payload / 2
    assert after.net_sent - before.net_sent < payload / 2


def test_telemetry_is_plain_json_friendly_data():
    import json

    io = FakeIo()
    sampler = TelemetrySampler(nvml=FakeNvml(), torch_cuda=FakeTorchCuda(initialized=False),
                               io_counters=lambda: io.counters, clock=lambda: io.now)
    sampler.sample()
    io.advance(1.0, disk_read=1, disk_written=2, net_received=3, net_sent=4)
    t = sampler.sample()
    data = json.loads(json.dumps(dataclasses.asdict(t)))
    assert data["host"]["net_tx_bps"] == 4.0 and data["gpus"][0]["power_limit_w"] == 700.0
    rebuilt = Telemetry(**{**data, "gpus": tuple(GpuSnapshot(**g) for g in data["gpus"]),
                           "host": HostSnapshot(**data["host"])})
    assert rebuilt == t


def test_format_rate():
    assert format_rate(None) == "N/A"
    assert format_rate(512.0) == "512 B/s"
    assert format_rate(2.5 * 1024 * 1024) == "2.5 MiB/s"
