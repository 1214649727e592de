"""`wvtui attach`: the console as a client of its run.

The fast tests serve a real `ControlEndpoint` from the test process (real socket, real
`RunHistory`), fed the events a trainer would emit; the submit callback records what the
console asked for, and the test answers with the trainer's CommandApplied through the sink.
The slow ones attach to a real headless `wvtui` process: the Pilot-driven app, a second
console in a pseudo-terminal killed with SIGKILL, and `wvtui ctl` style clients beside them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import threading
import time

import pytest
from textual.widgets import Button

from core.client import ControlClient
from core.endpoint import ControlEndpoint
from core.events import (CheckpointSaved, CommandApplied, EvalResult, RunFinished, RunStarted, RunState,
                         StateChanged, StepStats, fanout)
from core.history import RunHistory
from core.telemetry import HostSnapshot, Telemetry
from helpers import wait_until
from test_app import asyncio_test, notes, status_text, until
from wvtui import attach
from wvtui.app import QuitReason, TrainingApp, closing_summary
from wvtui.transport import LocalTransport, SocketTransport
from wvtui.widgets.quit_screen import QuitScreen
from wvtui_process import QUICK, Live, Terminal, cli_env, console, records

SPE = 10  # steps per epoch of the event stream
TELEMETRY = Telemetry(time=0.0, gpus=(), gpu_unavailable_reason="no NVIDIA GPU found",
                      host=HostSnapshot(12.0, 1 << 30, 4 << 30, 1 << 29, 50.0, 0, 0))


class FixedSampler:
    """The training machine's telemetry, as the endpoint samples it (no NVML in tests)."""

    def sample(self):
        return TELEMETRY


def started(out: str, start_step: int = 0) -> RunStarted:
    return RunStarted(config={"epochs": 3, "root": "/data/wv"}, summary={}, device="cpu", model="resnet18",
                      num_params=11_000_000, steps_per_epoch=SPE, total_steps=3 * SPE, start_epoch=start_step // SPE,
                      start_step=start_step, out_dir=out, resumed_from="x.pt" if start_step else None)


def tick(step: int) -> StepStats:
    return StepStats(epoch=(step - 1) // SPE + 1, step=step, epoch_step=(step - 1) % SPE + 1, steps_per_epoch=SPE,
                     total_steps=3 * SPE, loss=2.0 / step, last_loss=2.0 / step, lr=0.1, img_per_s=100.0,
                     data_wait=0.01, eta_epoch_s=1.0, eta_run_s=10.0, elapsed_s=float(step), bad_images=0)


def evaluated(step: int) -> EvalResult:
    acc = 10.0 * step / SPE
    return EvalResult(epoch=step // SPE, step=step, loss=1.0, acc1=acc, acc5=2 * acc, best_acc1=acc, best_acc5=2 * acc,
                      manual=False, is_best=True, seconds=0.1, images=16)


def progress(out: str, steps: int, start: int = 0) -> list:
    """A run from step start+1 to `steps`: ticks, and an evaluation and checkpoint per epoch."""
    events: list = [started(out, start),
                    StateChanged(state=RunState.RUNNING, epoch=start // SPE + 1, step=start,
                                 previous=RunState.STARTING)]
    for step in range(start + 1, steps + 1):
        events.append(tick(step))
        if step % SPE == 0:
            events += [evaluated(step), CheckpointSaved(path=os.path.join(out, "checkpoints", "last.pt"),
                                                        reason="epoch", epoch=step // SPE, step=step, seconds=0.1)]
    return events


class Served:
    """A run's endpoint and history in this process; `submitted` is what clients asked for."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.history = RunHistory(out)
        self.submitted: list[tuple[str, float | None, str]] = []
        self.endpoint = ControlEndpoint(out, self.history, lambda c, v, t: self.submitted.append((c, v, t)),
                                        sampler=FixedSampler(), telemetry_interval=0.2)
        self.sink = fanout(self.history, self.endpoint)
        self.endpoint.start()

    def emit(self, *events) -> None:
        for event in events:
            self.sink(event)

    def apply(self, command: str, step: int) -> None:
        """The trainer's word that the last `command` a client sent has been applied."""
        token = next(t for c, _, t in reversed(self.submitted) if c == command)
        self.emit(CommandApplied(command=command, epoch=step // SPE + 1, step=step, token=token))

    def attached_app(self) -> TrainingApp:
        return TrainingApp(transport=SocketTransport(ControlClient(self.out)), chart_budget=None)


@pytest.fixture
def served(tmp_path):
    made: list[Served] = []

    def make(name: str = "run") -> Served:
        s = Served(str(tmp_path / name))
        made.append(s)
        return s

    yield make
    for s in made:
        s.endpoint.close()


# -- fast: a served endpoint, no training ----------------------------------------------------------


@asyncio_test
async def test_an_attached_console_starts_complete_and_follows_the_run(served):
    s = served()
    s.emit(*progress(s.out, 25))
    app = s.attached_app()
    async with app.run_test(size=(80, 24)) as pilot:
        # Complete at once, from the hello: no event came live yet.
        assert app.training_pane.steps == list(range(1, 26))
        assert [e.step for e in app.accuracy_pane.evals] == [10, 20]
        assert app.run_state is RunState.RUNNING
        assert sum("Acc@1" in line for line in app.event_log.plain) == 2
        assert not app._notifications, "a replayed event raised a toast"
        await until(lambda: app.system_pane.telemetry is not None, "telemetry from the run", pilot)
        assert app.system_pane.telemetry.host.cpu_percent == 12.0

        s.emit(tick(26))
        await until(lambda: app.training_pane.steps[-1] == 26, "a live tick", pilot)

        # q asks: stop, detach or cancel; "detach" has the focus, so enter never stops a run.
        await pilot.press("q")
        assert isinstance(app.screen, QuitScreen)
        assert {b.id for b in app.screen.query(Button)} == {"save", "detach", "cancel"}
        assert app.screen.focused.id == "detach"
        await pilot.press("n")  # the in-process "quit without saving" is no choice here
        assert isinstance(app.screen, QuitScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, QuitScreen) and "Quit cancelled" in notes(app)

        # A command the run refuses: said, and the request cleared.
        submit = s.endpoint.submit
        s.endpoint.submit = lambda c, v, t: (_ for _ in ()).throw(RuntimeError("the trainer is stopping"))
        await pilot.press("c")
        await until(lambda: app.pending is None, "the refusal", pilot)
        assert any(n.severity == "error" and "the trainer is stopping" in n.message for n in app._notifications)
        s.endpoint.submit = submit

        await pilot.press("p")
        await until(lambda: s.submitted, "the pause to reach the run", pilot)
        assert s.submitted[0][:2] == ("pause", None)
        assert app.pending is not None and "Pause requested" in notes(app)
        s.emit(StateChanged(state=RunState.PAUSED, epoch=3, step=26, previous=RunState.RUNNING))
        s.apply("pause", 26)
        await until(lambda: app.pending is None and app.run_state is RunState.PAUSED, "the pause applied", pilot)
        await until(lambda: "PAUSED" in status_text(app), "PAUSED in the header", pilot)

        # The run ends: the console says so and stays open until q.
        s.emit(RunFinished(reason="completed", epoch=3, step=26, best_acc1=20.0, best_acc5=40.0, seconds=9.0))
        s.endpoint.close("completed")
        await until(lambda: app.gone, "the end of the connection", pilot)
        assert app.run_state is RunState.FINISHED and app.return_code is None
        await pilot.press("p")
        assert any("has ended" in n for n in notes(app))
        await pilot.press("q")
        await until(lambda: app.return_code is not None, "the app to exit")
    assert app.quit_reason is QuitReason.ENDED
    assert app.summary_lines()[0].startswith("wvtui: run finished at epoch 3, step 26")
    report = app.summary_lines()[-1].split()
    assert report[:3] == ["report", "wvtui", "report"] and os.path.abspath(report[3]) == s.out


@pytest.mark.slow
@asyncio_test
async def test_d_detaches_and_the_run_goes_on(served):
    s = served()
    s.emit(*progress(s.out, 5))
    app = s.attached_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(lambda: s.endpoint.clients == 1, "the console connected", pilot)
        await pilot.press("d")
        await until(lambda: app.return_code is not None, "the app to exit")
    assert app.quit_reason is QuitReason.DETACHED and not s.submitted
    wait_until(lambda: s.endpoint.clients == 0, 10, "the endpoint to see the console go")
    lines = app.summary_lines()
    assert lines[0] == "wvtui: the run goes on at epoch 1, step 5"
    *command, where = lines[-1].split()
    assert command == ["attach", "wvtui", "attach"] and os.path.abspath(where) == s.out
    # Another client still finds the run live.
    with ControlClient(s.out) as again:
        assert again.hello["history"][-1]["step"] == 5


@pytest.mark.slow  # about a second each: the fast loop has the story above
@asyncio_test
async def test_ctrl_c_twice_detaches_an_attached_console(served):
    # Killing a console (ctrl+c, ctrl+c) must never stop the run it watches.
    s = served()
    s.emit(*progress(s.out, 3))
    app = s.attached_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+c")
        assert isinstance(app.screen, QuitScreen)
        await pilot.press("ctrl+c")
        await until(lambda: app.return_code is not None, "the app to exit")
    assert app.quit_reason is QuitReason.DETACHED and not s.submitted


@pytest.mark.slow
@asyncio_test
async def test_q_then_stop_waits_for_the_run_to_end(served):
    s = served()
    s.emit(*progress(s.out, 3))
    app = s.attached_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("q", "s")
        await until(lambda: s.submitted, "the stop to reach the run", pilot)
        assert s.submitted[0][0] == "stop" and app.stopping
        s.apply("stop", 3)
        await pilot.pause(0.2)
        assert app.return_code is None, "the console left before the run had ended"
        assert "stopping" in status_text(app)
        s.emit(RunFinished(reason="stopped", epoch=1, step=3, best_acc1=0.0, best_acc5=0.0, seconds=1.0))
        s.endpoint.close("stopped")
        await until(lambda: app.return_code is not None, "the app to exit")
    assert app.quit_reason is QuitReason.SAVED
    assert app.summary_lines()[-1].split()[:2] == ["resume", "wvtui"]


class HandMadeRun:
    """A run's socket that says hello and then hangs up without a bye, as a killed run's
    connection ends (or a server that drops a console, while it keeps serving others)."""

    def __init__(self, out: str) -> None:
        from core.protocol import encode, pointer_path

        os.makedirs(os.path.join(out, "control"), mode=0o700)
        self.path = os.path.join(out, "control", "wvtui.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(4)
        with open(pointer_path(out), "w") as f:
            json.dump({"protocol": 1, "pid": os.getpid(), "socket": self.path}, f)
        hello = {"type": "hello", "protocol": 1, "pid": os.getpid(), "out_dir": out, "state": "running",
                 "config": None, "history": [r.to_record() for r in progress(out, 3)], "noise_details": None,
                 "telemetry": None, "clients": 1}
        self.conn: socket.socket | None = None
        self._accepted = threading.Thread(target=self._accept, args=(encode(hello),), daemon=True)
        self._accepted.start()

    def _accept(self, hello: bytes) -> None:
        self.conn, _ = self.listener.accept()
        self.conn.sendall(hello)

    def hang_up(self, *, still_serving: bool) -> None:
        self._accepted.join(10)
        if not still_serving:
            self.listener.close()
        self.conn.close()


@pytest.mark.slow
@asyncio_test
async def test_a_connection_that_ends_without_a_bye_says_whether_the_run_goes_on(tmp_path):
    for still_serving in (True, False):
        out = str(tmp_path / f"run-{still_serving}")
        run = HandMadeRun(out)
        app = TrainingApp(transport=SocketTransport(ControlClient(out)), telemetry=TELEMETRY)
        async with app.run_test(size=(80, 24)) as pilot:
            assert app.training_pane.steps == [1, 2, 3]
            run.hang_up(still_serving=still_serving)
            await until(lambda: app.gone, "the end of the connection", pilot)
            if still_serving:
                assert app.run_state is RunState.RUNNING
                assert any("wvtui attach" in n for n in notes(app)), "no word on how to come back"
            else:
                assert app.run_state is RunState.ERROR
                assert any(n.title == "The run is gone" for n in app._notifications)
            assert app.return_code is None
            await pilot.press("q")
            await until(lambda: app.return_code is not None, "the app to exit")
        run.listener.close()


@pytest.mark.slow
@asyncio_test
async def test_a_resumed_run_in_process_starts_with_its_earlier_segments(tmp_path):
    out = str(tmp_path / "run")
    os.makedirs(out)
    t0 = time.mktime((2026, 1, 1, 9, 15, 0, 0, 0, -1))
    first = [*progress(out, 20), RunFinished(reason="stopped", epoch=2, step=20, best_acc1=20.0, best_acc5=40.0,
                                             seconds=5.0)]
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for i, event in enumerate(first):
            f.write(json.dumps({**event.to_record(), "time": t0 + i}) + "\n")
    app = TrainingApp(transport=LocalTransport(history=RunHistory(out)), telemetry=TELEMETRY, chart_budget=None)
    async with app.run_test(size=(80, 24)):
        assert app.training_pane.steps == list(range(1, 21))
        assert len(app.accuracy_pane.evals) == 2
        # The earlier segment's end is not this one's state, and it raises no toast.
        assert app.run_state is RunState.STARTING and not app._notifications
        assert app.best == (20.0, 40.0)
        # The log places each replayed event at the time the run logged it.
        eval_lines = [line for line in app.event_log.plain if "Acc@1" in line]
        assert eval_lines and time.strftime("%H:%M", time.localtime(t0)) in eval_lines[0]


@pytest.mark.slow
@asyncio_test
async def test_a_resumed_session_shows_its_first_segment_from_the_start(tmp_path, synthetic_root):
    from helpers import config
    from wvtui.session import Session

    out = str(tmp_path / "run")
    first = Session(config(synthetic_root, out, num_classes=4, epochs=1, batch_size=4, max_val_batches=1))
    first.prepare()
    assert first.run().reason == "completed"
    steps = [r["step"] for r in records(out, "train")]
    second = Session(config(synthetic_root, out, num_classes=4, epochs=2, batch_size=4, max_val_batches=1,
                            resume="auto"))
    second.prepare()
    app = TrainingApp(transport=LocalTransport(second), telemetry=TELEMETRY, chart_budget=None)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            # Before the second segment has said anything, the first is on the charts.
            assert app.training_pane.steps[:len(steps)] == steps
            assert app.accuracy_pane.evals and app.accuracy_pane.evals[0].epoch == 1
            await until(lambda: app.run_state is RunState.FINISHED, "the second segment to finish", pilot)
            assert app.training_pane.steps[-1] == 2 * steps[-1]
            assert not [n for n in app._notifications if n.severity == "error"]
            await pilot.press("q")
            await until(lambda: app.return_code is not None, "the app to exit")
    finally:
        second.close()


def test_the_closing_summary_names_the_next_command():
    live = closing_summary(state="running", out_dir="runs/a", root="/d", best=None, epoch=2, step=40, running=True)
    assert live == ["wvtui: the run goes on at epoch 2, step 40", "  best    no evaluation yet", "  run dir runs/a",
                    "  attach  wvtui attach runs/a"]
    stopped = closing_summary(state="stopped", out_dir="runs/a", root="/d", best=(41.5, 80.25), epoch=2, step=40,
                              running=False)
    assert stopped[1] == "  best    Acc@1 41.500  Acc@5 80.250"
    assert stopped[-1] == "  resume  wvtui --root /d --out runs/a --resume auto"


def test_attach_without_a_live_run_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    assert attach.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wvtui: no live run at")
    monkeypatch.chdir(tmp_path)
    assert attach.main([]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no live run under ./runs" in err[0]


def test_several_live_runs_without_a_terminal_list_them_and_exit_2(tmp_path, capsys, monkeypatch, served):
    monkeypatch.chdir(tmp_path)
    for name in ("runs/a", "runs/b"):
        s = served(name)
        s.emit(*progress(s.out, 2))  # metrics.jsonl is what makes a run directory
        with open(os.path.join(s.out, "metrics.jsonl"), "w") as f:
            f.write(json.dumps(started(s.out).to_record()) + "\n")
    assert attach.main([]) == 2
    captured = capsys.readouterr()
    listed = captured.out.strip().splitlines()
    assert len(listed) == 2 and {line.split()[1] for line in listed} == {"runs/a", "runs/b"}
    assert "wvtui attach OUT" in captured.err
    # On a terminal the user picks one by its number; anything else is a usage error.
    second = listed[1].split()[1]
    monkeypatch.setattr("builtins.input", lambda prompt: "2")
    assert attach.choose_run(interactive=True) == second
    monkeypatch.setattr("builtins.input", lambda prompt: "3")
    assert attach.choose_run(interactive=True) == 2
    assert "not a number from 1 to 2" in capsys.readouterr().err


# -- slow: a real headless run in another process --------------------------------------------------


def _headless(tmp_path, root: str, out: str, epochs: int) -> Live:
    run = Live(tmp_path, "--root", root, "--num-classes", "4", "--epochs", str(epochs), "--val-batches", "1",
               "--out", out, "--headless", *QUICK)
    wait_until(lambda: os.path.exists(os.path.join(out, "control", "endpoint.json")) and records(out, "train"),
               120, "the run to serve its endpoint and train")
    return run


def _attach_in_terminal(tmp_path, out: str) -> Terminal:
    env = {**cli_env(tmp_path), "TERM": "xterm-256color"}
    return Terminal([sys.executable, "-m", "wvtui", "attach", out], cwd=tmp_path, env=env, size=(24, 80))


def _resume_and_finish(run: Live, out: str) -> None:
    """A script resumes the paused run (as `wvtui ctl` does); it trains on and ends by itself."""
    with ControlClient(out) as ctl:
        before = len(records(out, "train"))
        assert ctl.command("resume", timeout=60)["type"] == "done"
    wait_until(lambda: len(records(out, "train")) > before, 60, "training after the resume")
    code, err = run.finish(240)
    assert code == 0, err
    assert records(out, "finished")[-1]["reason"] == "completed"


@pytest.mark.slow
@asyncio_test
async def test_pilot_console_attached_to_a_headless_run_pauses_and_detaches(tmp_path, synthetic_root):
    out = str(tmp_path / "run")
    run = _headless(tmp_path, synthetic_root, out, epochs=6)
    try:
        app = TrainingApp(transport=SocketTransport(ControlClient(out)), chart_budget=None)
        async with app.run_test(size=(80, 24)) as pilot:
            assert app.training_pane.steps, "the chart started empty"
            assert app.run_state is RunState.RUNNING
            await pilot.press("p")
            await until(lambda: app.run_state is RunState.PAUSED and app.pending is None, "the pause", pilot)
            paused = [r for r in records(out, "state") if r["state"] == "paused"]
            assert paused and any(r["command"] == "pause" for r in records(out, "command"))
            await until(lambda: "PAUSED" in status_text(app), "PAUSED in the header", pilot)
            await pilot.press("d")
            await until(lambda: app.return_code is not None, "the app to exit")
        assert app.quit_reason is QuitReason.DETACHED
        assert run.proc.poll() is None, "detaching ended the run"

        # `wvtui attach OUT` in a terminal: d, and it says where the run is and how to come back.
        console = _attach_in_terminal(tmp_path, out)
        try:
            wait_until(lambda: b"PAUSED" in console.screen, 60, "the attached console to draw")
            console.type("d")
            assert console.proc.wait(30) == 0
            # The run directory as the user may type it here (the console runs in tmp_path).
            again = f"wvtui attach {os.path.relpath(out, tmp_path)}".encode()
            wait_until(lambda: again in console.screen, 10, "the summary")
            assert b"the run goes on" in console.screen
        finally:
            console.close()
        _resume_and_finish(run, out)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()


@pytest.mark.slow
@asyncio_test
async def test_two_consoles_see_one_pause_and_a_killed_console_leaves_the_run_alone(tmp_path, synthetic_root):
    out = str(tmp_path / "run")
    run = _headless(tmp_path, synthetic_root, out, epochs=6)
    other = _attach_in_terminal(tmp_path, out)
    try:
        wait_until(lambda: b"epoch" in other.screen, 60, "the other console to draw")
        app = TrainingApp(transport=SocketTransport(ControlClient(out)), chart_budget=None)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("p")
            await until(lambda: app.run_state is RunState.PAUSED, "the pause in this console", pilot)
            await until(lambda: b"PAUSED" in other.screen, "the pause in the other console", pilot)
            # The other console dies without a word; the run must not notice.
            os.kill(other.proc.pid, signal.SIGKILL)
            other.proc.wait(10)
            await pilot.pause(0.5)
            assert run.proc.poll() is None and not app.gone
            await pilot.press("p")
            await until(lambda: app.run_state is RunState.RUNNING, "the resume", pilot)
            step = app.training_pane.steps[-1]
            await until(lambda: app.training_pane.steps[-1] > step, "training after the kill", pilot)
            await pilot.press("d")
            await until(lambda: app.return_code is not None, "the app to exit")
        code, err = run.finish(240)
        assert code == 0, err
        assert records(out, "finished")[-1]["reason"] == "completed"
    finally:
        other.close()
        if run.proc.poll() is None:
            run.proc.kill()


@pytest.mark.slow
def test_the_in_process_console_prints_a_summary_when_it_closes(tmp_path, synthetic_root):
    out = str(tmp_path / "run")
    term = console(tmp_path, ["--root", synthetic_root, "--num-classes", "4", "--epochs", "50", "--val-batches", "1",
                              "--out", out, *QUICK], size=(24, 80))
    try:
        wait_until(lambda: records(out, "train"), 120, "training in the console")
        term.type("q")
        wait_until(lambda: b"Save a checkpoint and quit" in term.screen, 30, "the quit dialog")
        term.type("s")
        assert term.proc.wait(120) == 0
        wait_until(lambda: b"--resume auto" in term.screen, 10, "the summary")
        text = term.screen.decode(errors="replace")
        assert re.search(r"wvtui: run stopped at epoch \d+, step \d+", text)
        assert f"wvtui --root {synthetic_root} --out {out} --resume auto" in text
    finally:
        term.close()
