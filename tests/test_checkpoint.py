"""Checkpoint files: atomic writes under the umask, the saver's outcomes, crash during a save,
RNG states, and which file `--resume auto` may continue from (never one it would destroy)."""

from __future__ import annotations

import os
import pathlib
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

from core.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointSaver,
    capture_rng_state,
    find_resumable,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_state(step: int = 0, size: int = 4) -> dict:
    """A complete checkpoint dict of the shape the trainer writes, for a tiny model."""
    model = torch.nn.Linear(size, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 60])
    model(torch.randn(2, size)).sum().backward()
    opt.step()
    return {
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "model_name": "linear",
        "num_classes": 3,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": None,
        "epoch": 0,
        "step": step,
        "epoch_step": step,
        "rng": capture_rng_state("cpu"),
        "best_acc1": 12.5,
        "best_acc5": 50.0,
        "history": [{"epoch": 0, "step": step, "acc1": 12.5, "per_class_acc1": [1.0, float("nan")]}],
        "config": {"root": "/x", "milestones": [30, 60]},
        "world_size": 1,
    }


@pytest.fixture
def public_dir():
    """A directory that another user (nobody) can reach: pytest's own temp root is private to its owner."""
    path = tempfile.mkdtemp(prefix="wvtui-test-")
    os.chmod(path, 0o755)
    try:
        yield pathlib.Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- writing -------------------------------------------------------------------------------

def test_round_trip_keeps_every_value(tmp_path):
    state = make_state(step=7)
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(state, path)
    back = load_checkpoint(path)
    assert back["step"] == 7 and back["best_acc1"] == 12.5 and back["config"] == state["config"]
    for k, v in state["model"].items():
        assert torch.equal(back["model"][k], v)
    assert back["optimizer"]["state"][0]["momentum_buffer"].equal(state["optimizer"]["state"][0]["momentum_buffer"])
    assert back["scheduler"]["milestones"] == state["scheduler"]["milestones"]
    # No temp file is left next to the checkpoint.
    assert sorted(os.listdir(tmp_path / "ck")) == ["last.pt"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_files_follow_the_umask_like_every_other_file(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_checkpoint(make_state(), tmp_path / "last.pt")
        (tmp_path / "metrics.jsonl").write_text("{}\n")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "last.pt").st_mode & 0o777 == mode
    assert os.stat(tmp_path / "metrics.jsonl").st_mode & 0o777 == mode


def test_replacing_keeps_the_old_file_until_the_new_one_is_complete(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(make_state(step=1), path)

    class Unpicklable:
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    bad = make_state(step=2)
    bad["history"].append(Unpicklable())
    with pytest.raises(OSError):
        save_checkpoint(bad, path)
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


@pytest.mark.slow
def test_process_killed_while_writing_a_large_checkpoint_leaves_the_previous_one_usable(tmp_path):
    ck = tmp_path / "checkpoints"
    last = ck / "last.pt"
    save_checkpoint(make_state(step=5), last)
    before = last.read_bytes()
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {REPO!r})
        from core.checkpoint import load_checkpoint, save_checkpoint
        state = load_checkpoint({str(last)!r})
        state["step"] = 6
        # Large enough that the write takes a while: 16 tensors of 16 MiB.
        state["model"].update({{f"big{{i}}": torch.rand(4 * 1024 * 1024) for i in range(16)}})
        print("ready", flush=True)
        save_checkpoint(state, {str(last)!r})
        print("done", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        tmp_file = None
        while time.monotonic() < deadline and tmp_file is None:
            tmps = [n for n in os.listdir(ck) if n.endswith(".tmp")]
            if tmps and os.path.getsize(ck / tmps[0]) > 0:
                tmp_file = ck / tmps[0]
            else:
                time.sleep(0.002)
        assert tmp_file is not None, "the save never started writing its temp file"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert tmp_file.exists(), "the kill came after the rename: the test did not exercise the crash"
    assert last.read_bytes() == before
    assert load_checkpoint(last)["step"] == 5
    assert find_resumable(tmp_path) == str(last)
    # The next run clears what the killed save left behind.
    assert CheckpointSaver(ck).remove_stale_temp_files() == [str(tmp_file)]
    assert sorted(os.listdir(ck)) == ["last.pt"]


def test_process_killed_before_the_rename_leaves_the_previous_checkpoint_usable(tmp_path):
    """The temp file is complete and not yet renamed when the process dies (fast variant of the above)."""
    ck = tmp_path / "checkpoints"
    saver = CheckpointSaver(ck)
    saver.save("last.pt", lambda: make_state(step=5), None)
    before = (ck / "last.pt").read_bytes()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child saves and is killed inside fsync, before os.replace
        try:
            def blocked_fsync(fd):
                os.write(write, b"in fsync")
                time.sleep(60)
            os.fsync = blocked_fsync
            saver.save("last.pt", lambda: make_state(step=6), None)
        finally:
            os._exit(1)
    os.close(write)
    try:
        assert os.read(read, 8) == b"in fsync"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
    temps = [n for n in os.listdir(ck) if n.endswith(".tmp")]
    assert len(temps) == 1 and (ck / temps[0]).stat().st_size > 0
    assert (ck / "last.pt").read_bytes() == before and find_resumable(tmp_path) == str(ck / "last.pt")
    assert CheckpointSaver(ck).remove_stale_temp_files() == [str(ck / temps[0])]
    assert sorted(os.listdir(ck)) == ["last.pt"]


# --- the saver -----------------------------------------------------------------------------

def test_saver_saves_and_times_the_write(tmp_path):
    saver = CheckpointSaver(tmp_path / "checkpoints")
    model = torch.nn.Linear(4, 3)
    assert not saver.exists("last.pt")
    outcome = saver.save("last.pt", lambda: make_state(step=3), model)
    assert (outcome.status, outcome.path, outcome.error) == ("saved", str(tmp_path / "checkpoints" / "last.pt"), "")
    assert outcome.seconds > 0 and saver.exists("last.pt") and not saver.last_failed
    assert load_checkpoint(outcome.path)["step"] == 3


def test_saver_never_writes_a_model_with_non_finite_weights(tmp_path):
    saver = CheckpointSaver(tmp_path)
    saver.save("best.pt", lambda: make_state(step=1), torch.nn.Linear(4, 3))
    before = (tmp_path / "best.pt").read_bytes()
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    built = []
    outcome = saver.save("best.pt", lambda: built.append(1) or make_state(step=2), model)
    assert outcome.status == "skipped" and "non-finite" in outcome.error
    assert built == [], "the state was built although it was never going to be written"
    assert (tmp_path / "best.pt").read_bytes() == before
    # A buffer counts too: BatchNorm's running statistics go non-finite before the weights do.
    bn = torch.nn.BatchNorm1d(3)
    bn.running_var.fill_(float("inf"))
    assert saver.save("best.pt", make_state, bn).status == "skipped"
    assert not saver.last_failed, "a skipped save is not a failed write"


def test_saver_on_another_rank_writes_nothing(tmp_path):
    saver = CheckpointSaver(tmp_path / "checkpoints", enabled=False)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".last.pt.abc.tmp").write_bytes(b"x")
    outcome = saver.save("last.pt", make_state, torch.nn.Linear(4, 3))
    assert outcome.status == "saved"
    assert saver.remove_stale_temp_files() == []
    assert os.listdir(tmp_path / "checkpoints") == [".last.pt.abc.tmp"], "rank 0 owns the directory"


def test_saver_reports_a_failed_write_and_keeps_the_previous_file(public_dir):
    ck = public_dir / "checkpoints"
    saver = CheckpointSaver(ck)
    model = torch.nn.Linear(4, 3)
    assert saver.save("last.pt", lambda: make_state(step=1), model).status == "saved"
    before = (ck / "last.pt").read_bytes()
    os.chmod(ck, 0o555)  # no temp file can be created; root ignores that, so as root a child saves as nobody

    def save():
        outcome = saver.save("last.pt", lambda: make_state(step=2), model)
        return f"{outcome.status}|{outcome.error}|{outcome.path}|last_failed={saver.last_failed}"

    try:
        result = _as_nobody(save) if os.geteuid() == 0 else save()
    finally:
        os.chmod(ck, 0o755)
    assert result == f"failed|Permission denied|{ck / 'last.pt'}|last_failed=True"
    assert (ck / "last.pt").read_bytes() == before and sorted(os.listdir(ck)) == ["last.pt"]


# --- RNG states ----------------------------------------------------------------------------

def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    state = make_state()
    state["rng"] = capture_rng_state(torch.device("cpu"))
    assert state["rng"]["cuda"] is None
    expected = (torch.rand(3), np.random.rand(3), [random.gauss(0, 1) for _ in range(3)])
    save_checkpoint(state, tmp_path / "r.pt")
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"], torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.gauss(0, 1) for _ in range(3)] == expected[2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_is_the_given_devices_own_generator():
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    torch.cuda.manual_seed_all(5)
    torch.rand(1, device=device)  # move this device's generator away from the others
    rng = capture_rng_state(device)
    assert torch.equal(rng["cuda"], torch.cuda.get_rng_state(device))
    expected = torch.rand(4, device=device)
    torch.cuda.manual_seed_all(6)
    others = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count()) if i != device.index]
    restore_rng_state(rng, device)
    assert torch.equal(torch.rand(4, device=device), expected)
    assert others == [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count()) if i != device.index]


# --- crafted files ---------------------------------------------------------------------------

class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        # Unpickling this would create the marker file: proof that code ran.
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("container, message", [("torch_zip", "could run code; refusing to load it"),
                                                ("plain_pickle", "is a Python pickle, not a PyTorch checkpoint")])
def test_crafted_pickle_is_refused_without_running_code(tmp_path, container, message):
    marker = tmp_path / "pwned"
    state = make_state()
    state["history"] = [_Payload(str(marker))]
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    if container == "torch_zip":
        torch.save(state, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(state, f)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):
        find_resumable(tmp_path)
    assert not marker.exists()


def test_truncated_and_empty_files_are_named_as_such(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(make_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"^{path} is truncated or damaged"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\): not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file"):
        load_checkpoint(tmp_path)


# --- --resume auto: which file, or why none ---------------------------------------------------

def _ckdir(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir(exist_ok=True)
    return ck


def test_find_resumable_prefers_the_newest_checkpoint(tmp_path):
    assert find_resumable(tmp_path) is None  # no checkpoints/ at all
    ck = _ckdir(tmp_path)
    assert find_resumable(tmp_path) is None
    save_checkpoint(make_state(step=10), ck / "best.pt")
    assert find_resumable(tmp_path) == str(ck / "best.pt")
    save_checkpoint(make_state(step=20), ck / "last.pt")
    assert find_resumable(tmp_path) == str(ck / "last.pt")
    # best.pt newer than last.pt (written after it, at a later step): it wins.
    save_checkpoint(make_state(step=30), ck / "best.pt")
    assert find_resumable(tmp_path) == str(ck / "best.pt")
    # Leftover temp files of an interrupted save, and files the run never writes, are no candidates.
    (ck / ".last.pt.abc.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    save_checkpoint(make_state(step=99), ck / "manual.pt")
    assert find_resumable(tmp_path) == str(ck / "best.pt")


def test_find_resumable_reads_no_tensor_data(tmp_path, monkeypatch):
    ck = _ckdir(tmp_path)
    save_checkpoint(make_state(step=4), ck / "last.pt")
    seen = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: seen.append(kw.get("map_location")) or real_load(*a, **kw))
    assert find_resumable(tmp_path) == str(ck / "last.pt")
    assert seen == ["meta"]


def _unusable(ck, name: str, kind: str) -> str:
    """Make OUT/checkpoints/<name> unusable in the way `kind` says; the reason it must be refused for."""
    path = ck / name
    if kind == "newer":
        save_checkpoint({**make_state(step=50), "format_version": FORMAT_VERSION + 1}, path)
        return f"has a newer format_version {FORMAT_VERSION + 1} (this wvtui reads up to {FORMAT_VERSION})"
    if kind == "truncated":
        save_checkpoint(make_state(step=50), path)
        path.write_bytes(path.read_bytes()[:-100])
        return "is truncated or damaged"
    if kind == "directory":
        path.mkdir()
        return "is a directory, not a checkpoint file"
    if kind == "fifo":
        os.mkfifo(path)  # opening it would block forever: it must be refused without opening it
        return "is not a regular file"
    if kind == "text":
        path.write_text("not a checkpoint\n")
        return "is not a PyTorch checkpoint"
    if kind == "bad_field":
        save_checkpoint({**make_state(step=50), "history": 5}, path)
        return "is not a usable wvtui checkpoint: 'history' must be a list of dicts, got 5"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["newer", "truncated", "directory", "fifo", "text", "bad_field"])
def test_auto_resume_refuses_to_start_over_a_checkpoint_it_cannot_use(tmp_path, kind):
    ck = _ckdir(tmp_path)
    reason = _unusable(ck, "last.pt", kind)
    # An older usable best.pt does not make it safe: the run would overwrite last.pt at its first epoch end.
    save_checkpoint(make_state(step=10), ck / "best.pt")
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_outcome(find_resumable, tmp_path)), daemon=True)
    worker.start()
    worker.join(30)
    assert result, "find_resumable hung"
    error = result[0]
    assert isinstance(error, CheckpointError), error
    message = str(error)
    assert "\n" not in message
    assert f"{ck / 'last.pt'} {reason}" in message
    assert "best.pt" not in message
    assert message.endswith("Move it aside, or pass --resume PATH")
    assert [p for p, _ in error.problems] == [str(ck / "last.pt")]


def _outcome(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # the caller asserts on the type
        return e


def test_auto_resume_names_every_unusable_file(tmp_path):
    ck = _ckdir(tmp_path)
    newer = _unusable(ck, "last.pt", "newer")
    truncated = _unusable(ck, "best.pt", "truncated")
    with pytest.raises(CheckpointError) as info:
        find_resumable(tmp_path)
    message = str(info.value)
    assert f"{ck / 'last.pt'} {newer}" in message and f"{ck / 'best.pt'} {truncated}" in message
    assert message.endswith("Move them aside, or pass --resume PATH")


def test_auto_resume_refuses_a_checkpoint_it_may_not_read(public_dir):
    """A real permission error. Root reads any file, so as root the reader drops to `nobody`."""
    out = public_dir
    ck = _ckdir(out)
    os.chmod(ck, 0o755)
    save_checkpoint(make_state(step=20), ck / "last.pt")
    save_checkpoint(make_state(step=10), ck / "best.pt")
    os.chmod(ck / "last.pt", 0)
    os.chmod(ck / "best.pt", 0o644)
    if os.geteuid() != 0:
        with pytest.raises(CheckpointError) as info:
            find_resumable(out)
        message = str(info.value)
    else:
        message = _as_nobody(lambda: find_resumable(out))
    assert f"{ck / 'last.pt'} cannot be read: permission denied" in message, message
    assert "best.pt" not in message


def _as_nobody(fn) -> str:
    """Run fn in a forked child with the uid of `nobody`: what it returned, or its CheckpointError message."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            try:
                text = str(fn())
            except CheckpointError as e:
                text = str(e)
            except BaseException as e:  # reported to the parent, which fails the test
                text = f"unexpected {type(e).__name__}: {e}"
            os.write(write, text.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        text = f.read().decode()
    os.waitpid(pid, 0)
    if not text:
        pytest.skip("cannot switch to the nobody user here")
    return text
