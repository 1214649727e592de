"""A checkpoint write on a full disk: "failed" with the reason, the previous file intact and
loadable, no temp file left behind; the next save that fits clears the failure.

The real case runs on a 2 MiB tmpfs (needs the right to mount, as root in a container); the
injected case makes fsync report ENOSPC, as a filesystem that defers allocation does."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
import torch

from core.checkpoint import FORMAT_VERSION, CheckpointSaver, capture_rng_state, load_checkpoint


def state_of(model: torch.nn.Module, step: int) -> dict:
    return {
        "format_version": FORMAT_VERSION, "model": model.state_dict(), "model_name": "linear", "num_classes": 3,
        "optimizer": {"state": {}, "param_groups": []}, "scheduler": {}, "scaler": None, "epoch": 0,
        "step": step, "epoch_step": step, "rng": capture_rng_state("cpu"), "best_acc1": 0.0, "best_acc5": 0.0,
        "history": [], "config": {}, "world_size": 1,
    }


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount_point)],
                              capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                    "test_injected_enospc covers the same path")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


def _assert_failed_save_left_no_trace(saver, outcome, before: bytes, reason: str) -> None:
    ck = saver.directory
    assert (outcome.status, outcome.error) == ("failed", reason)
    assert outcome.path == os.path.join(ck, "last.pt") and saver.last_failed
    with open(outcome.path, "rb") as f:
        assert f.read() == before
    assert load_checkpoint(outcome.path)["step"] == 1
    assert sorted(os.listdir(ck)) == ["last.pt"], "a temp file was left on the full disk"


def test_real_full_disk(small_disk):
    saver = CheckpointSaver(small_disk / "checkpoints")
    small = torch.nn.Linear(4, 3)
    assert saver.save("last.pt", lambda: state_of(small, 1), small).status == "saved"
    before = (small_disk / "checkpoints" / "last.pt").read_bytes()

    big = torch.nn.Linear(1024, 1024)  # 4 MiB of weights on a 2 MiB disk
    outcome = saver.save("last.pt", lambda: state_of(big, 2), big)
    _assert_failed_save_left_no_trace(saver, outcome, before, "No space left on device")
    # The space the failed write took is free again: a save that fits succeeds and clears the flag.
    assert saver.save("last.pt", lambda: state_of(small, 3), small).status == "saved"
    assert not saver.last_failed and load_checkpoint(small_disk / "checkpoints" / "last.pt")["step"] == 3


def test_injected_enospc(tmp_path, monkeypatch):
    saver = CheckpointSaver(tmp_path / "checkpoints")
    model = torch.nn.Linear(4, 3)
    assert saver.save("last.pt", lambda: state_of(model, 1), model).status == "saved"
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()

    real_fsync = os.fsync

    def full(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    outcome = saver.save("last.pt", lambda: state_of(model, 2), model)
    _assert_failed_save_left_no_trace(saver, outcome, before, "No space left on device")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert saver.save("last.pt", lambda: state_of(model, 3), model).status == "saved" and not saver.last_failed
