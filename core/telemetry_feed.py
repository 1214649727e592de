"""One telemetry sampling loop per process, shared by whoever wants the samples.

A `TelemetrySampler` sample is a window: CPU and I/O rates since the previous sample, and the
CUDA allocator's peak since the previous sample (each sample resets it). Two samplers in one
process would split those windows between them, each showing half the truth. So the process
samples in one thread, here, and hands every sample to each subscriber: the control endpoint
(while a console is attached) and the in-process console.

    feed = TelemetryFeed()                      # samples only while someone is subscribed
    unsubscribe = feed.subscribe(callback)      # callback(Telemetry), on the feed's thread
    ...
    unsubscribe(); feed.close()
"""

from __future__ import annotations

import threading
from typing import Any, Callable

__all__ = ["TelemetryFeed"]


class TelemetryFeed:
    """sampler: an object with .sample() -> Telemetry (None: a `core.telemetry.TelemetrySampler`,
    made on the feed's thread when the first subscriber arrives and closed by `close()`)."""

    def __init__(self, sampler: Any = None, interval: float = 1.0) -> None:
        self.sampler = sampler
        self.interval = interval
        self.errors = 0  # samples that raised; the subscribers keep the last good one
        self.last: Any = None
        self._own_sampler: Any = None
        self._subscribers: list[Callable[[Any], None]] = []
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call `callback(telemetry)` with every sample from now on; returns the unsubscribe."""
        with self._lock:
            self._subscribers.append(callback)
            if self._thread is None and not self._stopped.is_set():
                # A daemon: a process whose run has ended must not wait for a sample.
                self._thread = threading.Thread(target=self._loop, name="wvtui-telemetry", daemon=True)
                self._thread.start()
        self._changed.set()

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def close(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self._changed.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self) -> None:
        try:
            while not self._stopped.is_set():
                with self._lock:
                    subscribers = list(self._subscribers)
                if not subscribers:
                    self._changed.wait()
                    self._changed.clear()
                    continue
                sample = self._sample()
                if sample is not None:
                    for callback in subscribers:
                        try:
                            callback(sample)
                        except Exception:  # noqa: BLE001 - one subscriber's failure is not the others'
                            pass
                self._stopped.wait(self.interval)
        finally:
            if self._own_sampler is not None:
                try:
                    self._own_sampler.close()  # NVML's reference count, released
                except Exception:  # noqa: BLE001
                    pass

    def _sample(self) -> Any:
        try:
            if self.sampler is None:
                from core.telemetry import TelemetrySampler

                self.sampler = self._own_sampler = TelemetrySampler()
            self.last = self.sampler.sample()
            return self.last
        except Exception:  # noqa: BLE001 - counted; NVML may fail one read and answer the next
            self.errors += 1
            return None
