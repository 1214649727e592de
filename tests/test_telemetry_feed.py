"""One telemetry loop per process: every subscriber gets the same samples, nobody samples twice."""

from __future__ import annotations

import threading
import time

from core.telemetry import Telemetry, TelemetrySampler
from core.telemetry_feed import TelemetryFeed
from helpers import wait_until


class Counting:
    """The real sampler, counting its calls (each call is a window: two callers would split it)."""

    def __init__(self) -> None:
        self.real = TelemetrySampler()
        self.calls = 0
        self.lock = threading.Lock()

    def sample(self) -> Telemetry:
        with self.lock:
            self.calls += 1
        return self.real.sample()

    def close(self) -> None:
        self.real.close()


def test_two_subscribers_share_each_sample_and_nothing_is_sampled_without_one():
    sampler = Counting()
    feed = TelemetryFeed(sampler, interval=0.05)
    try:
        got_a, got_b = [], []
        time.sleep(0.2)
        assert sampler.calls == 0  # nobody asked yet
        stop_a = feed.subscribe(got_a.append)
        stop_b = feed.subscribe(got_b.append)
        wait_until(lambda: len(got_b) >= 5, 20, "five samples")
        stop_a()
        stop_b()
        time.sleep(0.2)  # at most the sample in flight may still land
        calls = sampler.calls
        time.sleep(0.3)
        assert sampler.calls == calls  # no subscriber: the loop sleeps
        # b subscribed after a and left after it: apart from the ends, both got the very same
        # sample objects, one window each, not one sampler call per subscriber.
        ids_a = [id(t) for t in got_a]
        shared = [id(t) for t in got_b if id(t) in ids_a]
        assert len(shared) >= len(got_b) - 1 >= 4
        assert calls <= len(set(ids_a) | {id(t) for t in got_b}) + 1
        assert isinstance(got_a[0], Telemetry) and got_a[0].host is not None
    finally:
        feed.close()


def test_a_failing_sampler_or_subscriber_stops_neither_the_loop_nor_the_others():
    class Flaky:
        n = 0

        def sample(self):
            self.n += 1
            if self.n % 2:
                raise OSError("NVML read failed")
            return self.n

    feed = TelemetryFeed(Flaky(), interval=0.01)
    got = []

    def broken(sample):
        raise RuntimeError("a console went away")

    try:
        feed.subscribe(broken)
        feed.subscribe(got.append)
        wait_until(lambda: len(got) >= 3, 20, "samples past the failures")
        assert all(n % 2 == 0 for n in got) and feed.errors >= 3
    finally:
        feed.close()


def test_the_endpoint_and_an_in_process_console_use_one_loop(tmp_path):
    from core.client import ControlClient
    from core.endpoint import ControlEndpoint
    from core.history import RunHistory

    sampler = Counting()
    feed = TelemetryFeed(sampler, interval=0.05)
    endpoint = ControlEndpoint(str(tmp_path), RunHistory(str(tmp_path)), lambda *a: None, feed=feed)
    endpoint.start()
    local = []
    try:
        feed.subscribe(local.append)  # what LocalTransport does for the in-process console
        with ControlClient(str(tmp_path)) as client:
            remote = []
            deadline = time.monotonic() + 20
            while len(remote) < 5 and time.monotonic() < deadline:
                msg = client.recv(5.0)
                if msg is not None and msg["type"] == "telemetry":
                    remote.append(msg["telemetry"])
            assert len(remote) >= 5
        # Both got the samples of one loop: the sampler ran once per sample, not once per reader.
        assert sampler.calls <= len(local) + 1, (sampler.calls, len(local))
        wait_until(lambda: feed.subscribers == 1, 10, "the endpoint unsubscribed")
    finally:
        endpoint.close()
        feed.close()
