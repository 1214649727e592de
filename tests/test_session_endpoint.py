"""A real run serves its console: a Session trained in this process, driven over its socket."""

from __future__ import annotations

import os

import pytest

from core.client import CommandRefused, ControlClient, NotLive
from core.endpoint import EndpointError
from core.events import CommandApplied, RunState, StateChanged
from core.protocol import pointer_path
from helpers import Recorder, config, one_torch_thread, root  # noqa: F401 - fixtures
from wvtui.session import Session


def until(client: ControlClient, predicate, what: str) -> dict:
    """The first message (an event's record, or a message) that satisfies predicate."""
    while (msg := client.recv(120)) is not None:
        if predicate(msg):
            return msg
    raise AssertionError(f"the run ended before {what}")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2], ids=["in-process-loading", "forked-workers"])
def test_a_console_over_the_socket_pauses_resumes_and_checkpoints_a_real_run(root, tmp_path, workers):
    # With forked DataLoader workers too: a worker holding a copy of the console's socket would
    # keep it from ever seeing the end of the run.
    out = str(tmp_path / "run")
    recorder = Recorder()
    session = Session(config(root, out, epochs=100, workers=workers), sinks=(recorder,))
    assert session.endpoint is not None and session.history is not None
    with pytest.raises(NotLive):  # not served before prepare() succeeded
        ControlClient(out)
    session.prepare()
    session.start()
    try:
        with ControlClient(out) as console:
            assert console.hello["pid"] == os.getpid()
            dataset = console.hello["dataset"]  # the dataset pane's tables, for a console without the index
            assert len(dataset["classes"]) == 5 and dataset["summary"]["num_classes"] == 5 and dataset["queries"]
            until(console, lambda m: m["type"] == "event" and m["record"]["event"] == "train", "a step")
            with pytest.raises(CommandRefused, match="unknown command 'fly'"):
                console.command("fly", timeout=60)
            paused = console.command("pause", timeout=60)
            assert session.trainer.state is RunState.PAUSED
            assert paused["command"] == "pause" and paused["step"] == session.trainer.step
            # A second console attaches to the paused run: its history holds the pause.
            with ControlClient(out) as second:
                assert second.hello["state"] == "paused" and second.hello["clients"] == 2
                assert second.hello["config"]["model"] == "resnet18"
                assert any(r["event"] == "command" and r["command"] == "pause" for r in second.hello["history"])
            saved = console.command("checkpoint", timeout=60)
            assert os.path.exists(os.path.join(out, "checkpoints", "last.pt")), saved
            assert console.command("resume", timeout=60)["command"] == "resume"
            until(console, lambda m: m["type"] == "event" and m["record"]["event"] == "train"
                  and m["record"]["step"] > paused["step"], "a step after the resume")
            assert console.command("lr", 0.001, timeout=60)["command"] == "lr"
            stopped = console.command("stop", timeout=120)
            assert stopped["command"] == "stop"
            bye = until(console, lambda m: m["type"] == "bye", "the bye")
            assert bye["reason"] == "stopped"
    finally:
        session.close(120)
    result = session.wait()
    assert result is not None and result.reason == "stopped"
    applied = recorder.of(CommandApplied)
    assert [e.command for e in applied] == ["pause", "checkpoint", "resume", "lr", "stop"]
    assert len({e.token for e in applied}) == 5  # each the endpoint's own token, matched to its client
    assert recorder.of(StateChanged)  # the run went through its states as ever
    # The run has ended: it is no longer listed as live, and nothing is left behind.
    assert not os.path.exists(pointer_path(out)) and not os.path.exists(os.path.join(out, "control", "wvtui.sock"))
    with pytest.raises(NotLive, match="no live run"):
        ControlClient(out)


@pytest.mark.slow
def test_a_second_run_into_a_live_out_is_refused_and_serve_false_serves_nothing(root, tmp_path):
    out = str(tmp_path / "run")
    first = Session(config(root, out, epochs=100))
    first.prepare()
    first.start()
    try:
        with pytest.raises(EndpointError, match=rf"another wvtui \(pid {os.getpid()}\) is serving"):
            Session(config(root, out, epochs=100))
        quiet = Session(config(root, str(tmp_path / "quiet")), serve=False)
        assert quiet.endpoint is None and quiet.history is not None
    finally:
        first.close(120)
    assert not os.path.exists(pointer_path(out))
