"""Checkpoint files: atomic writes, safe loads, crash during a save, finding the newest good one."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from core.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    capture_rng_state,
    find_latest_checkpoint,
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
        "rng": capture_rng_state(),
        "best_acc1": 12.5,
        "best_acc5": 50.0,
        "history": [{"epoch": 0, "step": step, "acc1": 12.5, "per_class_acc1": [1.0, float("nan")]}],
        "config": {"root": "/x", "milestones": [30, 60]},
        "world_size": 1,
    }


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


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = make_state()
    state["rng"] = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    save_checkpoint(state, tmp_path / "r.pt")
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        # Unpickling this would create the marker file: proof that code ran.
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("container", ["torch_zip", "plain_pickle"])
def test_crafted_pickle_is_refused_without_running_code(tmp_path, container):
    marker = tmp_path / "pwned"
    state = make_state()
    state["history"] = [_Payload(str(marker))]
    path = tmp_path / "evil.pt"
    if container == "torch_zip":
        torch.save(state, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(state, f)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()
    assert find_latest_checkpoint(tmp_path) is None


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(make_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "obj, message",
    [
        (torch.zeros(3), "not a wvtui checkpoint"),
        ({"model": {}}, "no format_version"),
        ({**make_state(), "format_version": 2}, "format version 2"),
        ({k: v for k, v in make_state().items() if k != "optimizer"}, "missing: optimizer"),
        ({**make_state(), "model": {"w": 3}}, "state_dict of tensors"),
        ({**make_state(), "step": -1}, "'step' must be a non-negative integer"),
    ],
)
def test_foreign_objects_are_refused(tmp_path, obj, message):
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)


def test_find_latest_prefers_the_newest_valid_checkpoint(tmp_path):
    ck = tmp_path / "checkpoints"
    assert find_latest_checkpoint(tmp_path) is None
    save_checkpoint(make_state(step=10), ck / "best.pt")
    save_checkpoint(make_state(step=20), ck / "last.pt")
    assert find_latest_checkpoint(tmp_path) == str(ck / "last.pt")
    # A damaged newer file is skipped; the older good one is used.
    (ck / "last.pt").write_bytes(b"PK\x03\x04 not really a zip")
    assert find_latest_checkpoint(tmp_path) == str(ck / "best.pt")
    # Leftover temp files of an interrupted save are never candidates.
    save_checkpoint(make_state(step=99), ck / "other.pt")
    os.replace(ck / "other.pt", ck / ".last.pt.abc.tmp")
    assert find_latest_checkpoint(tmp_path) == str(ck / "best.pt")


def test_process_killed_during_a_save_leaves_the_previous_checkpoint_usable(tmp_path):
    ck = tmp_path / "checkpoints"
    last = ck / "last.pt"
    save_checkpoint(make_state(step=5), last)
    before = last.read_bytes()
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {REPO!r})
        from core.checkpoint import save_checkpoint
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_checkpoint import make_state
        state = make_state(step=6)
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
    assert find_latest_checkpoint(tmp_path) == str(last)
