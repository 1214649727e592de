"""Crafted checkpoints, written with the real torch.save: each is refused with one line that names
the file and what is wrong, never a traceback; the real CLI exits 2 on them, and `--resume auto`
leaves a checkpoint it cannot use exactly as it was."""

from __future__ import annotations

import decimal
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from core.checkpoint import FORMAT_VERSION, CheckpointError, capture_rng_state, load_checkpoint, save_checkpoint
from core.synthetic import make_webvision

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD = "is not a usable wvtui checkpoint: "


def good_state() -> dict:
    """A complete checkpoint of the shape the trainer writes, for a resnet-free tiny model."""
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1])
    return {
        "format_version": FORMAT_VERSION, "model": model.state_dict(), "model_name": "resnet18",
        "num_classes": 4, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": None,
        "epoch": 0, "step": 3, "epoch_step": 3, "rng": capture_rng_state("cpu"), "best_acc1": 25.0,
        "best_acc5": 100.0, "history": [], "config": {"lr": 0.1}, "world_size": 1,
    }


def _with(**changes):
    def make():
        state = good_state()
        state.update(changes)
        return state
    return make


def _without(key):
    def make():
        state = good_state()
        del state[key]
        return state
    return make


def _rng(part, value):
    def make():
        state = good_state()
        state["rng"][part] = value
        return state
    return make


class Gadget:
    """Any class: unpickling one would import and call code named by the file."""


# name -> (build the object torch.save writes, the reason that follows the path in the message)
CRAFTED = {
    "rng_empty": (_with(rng={}), BAD + "'rng' must be a dict with torch, numpy and python states, got {}"),
    "history_int": (_with(history=5), BAD + "'history' must be a list of dicts, got 5"),
    "best_acc1_text": (_with(best_acc1="abc"), BAD + "'best_acc1' must be a percentage, got 'abc'"),
    "best_acc5_nan": (_with(best_acc5=float("nan")), BAD + "'best_acc5' must be a percentage, got nan"),
    "epoch_negative": (_with(epoch=-1), BAD + "'epoch' must be a non-negative integer, got -1"),
    "epoch_bool": (_with(epoch=True), BAD + "'epoch' must be a non-negative integer, got True"),
    "step_text": (_with(step="x"), BAD + "'step' must be a non-negative integer, got 'x'"),
    "num_classes_zero": (_with(num_classes=0), BAD + "'num_classes' must be a positive integer, got 0"),
    "world_size_zero": (_with(world_size=0), BAD + "'world_size' must be a positive integer, got 0"),
    "elapsed_negative": (_with(elapsed_s=-5.0), BAD + "'elapsed_s' must be a finite number of seconds >= 0, got -5.0"),
    "elapsed_inf": (_with(elapsed_s=float("inf")), BAD + "'elapsed_s' must be a finite number of seconds >= 0, got inf"),
    "elapsed_text": (_with(elapsed_s="1h"), BAD + "'elapsed_s' must be a finite number of seconds >= 0, got '1h'"),
    "missing_optimizer": (_without("optimizer"), "is not a complete wvtui checkpoint (missing optimizer)"),
    "model_ints": (_with(model={"w": 3}), BAD + "'model' must be a state_dict (a dict of tensors), got {'w': 3}"),
    "model_list": (_with(model=[torch.zeros(2)]),
                   BAD + "'model' must be a state_dict (a dict of tensors), got [tensor([0., 0.])]"),
    "optimizer_list": (_with(optimizer=[]), BAD + "'optimizer' must be an optimizer state_dict, got []"),
    "scheduler_text": (_with(scheduler="x"), BAD + "'scheduler' must be a scheduler state_dict, got 'x'"),
    "scaler_int": (_with(scaler=1), BAD + "'scaler' must be None or a GradScaler state_dict, got 1"),
    "config_list": (_with(config=[1]), BAD + "'config' must be a dict, got [1]"),
    "rng_torch_float": (_rng("torch", torch.zeros(5056)), BAD + "'rng' holds a torch state that is not a generator state"),
    "rng_python_short": (_rng("python", {"version": 3, "state": [1, 2], "gauss_next": None}),
                         BAD + "'rng' holds a Python state that is not a generator state"),
    "rng_cuda_text": (_rng("cuda", "x"), BAD + "'rng' holds a CUDA state that is not a generator state"),
    "format_newer": (_with(format_version=FORMAT_VERSION + 1),
                     f"has a newer format_version {FORMAT_VERSION + 1} (this wvtui reads up to {FORMAT_VERSION}): "
                     "resume it with the wvtui that wrote it"),
    "format_text": (_with(format_version="1"), "is not a wvtui checkpoint (format_version '1')"),
    "no_format_version": (lambda: {"model": {}}, "is not a wvtui checkpoint (it has no format_version)"),
    "a_tensor": (lambda: torch.zeros(3), "is not a wvtui checkpoint (it holds a Tensor, not a dict)"),
    "a_class": (_with(history=[Gadget()]),
                "is not a wvtui checkpoint: it holds a Python object (test_checkpoint_attacks.Gadget), "
                "and loading that could run code; refusing to load it"),
    "a_stdlib_class": (_with(best_acc1=decimal.Decimal("50")),
                       "is not a wvtui checkpoint: it holds a Python object (decimal.Decimal), "
                       "and loading that could run code; refusing to load it"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_checkpoint_is_refused_in_one_line(tmp_path, name):
    build, reason = CRAFTED[name]
    path = tmp_path / f"{name}.pt"
    torch.save(build(), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert type(info.value) is CheckpointError
    assert str(info.value) == f"{path} {reason}"
    assert info.value.problems == [(str(path), reason)]


def _write_file(path, kind):
    if kind == "passwd":
        path.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes/readme.txt", "a zip, not a checkpoint")
    elif kind == "pickle":
        with open(path, "wb") as f:
            pickle.dump(good_state(), f)
    elif kind == "legacy":
        torch.save(good_state(), path, _use_new_zipfile_serialization=False)
    elif kind == "truncated":
        save_checkpoint(good_state(), path)
        path.write_bytes(path.read_bytes()[:1000])


@pytest.mark.parametrize("kind, reason", [
    ("passwd", "is not a PyTorch checkpoint (it starts with b'root:x:0:0:r')"),
    ("empty", "is empty (0 bytes): not a PyTorch checkpoint"),
    ("zip", "is a zip archive, not a PyTorch checkpoint"),
    ("pickle", "is a Python pickle, not a PyTorch checkpoint"),
    ("legacy", "is a PyTorch file in the legacy (pre-1.6) format, not a wvtui checkpoint"),
    ("truncated", "is truncated or damaged (its zip directory cannot be read)"),
])
def test_a_file_that_is_not_a_checkpoint_says_so_in_words(tmp_path, kind, reason):
    path = tmp_path / "x.pt"
    _write_file(path, kind)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path} {reason}"


def test_etc_passwd_itself(tmp_path):
    if not os.path.isfile("/etc/passwd"):
        pytest.skip("no /etc/passwd here")
    with pytest.raises(CheckpointError, match=r"^/etc/passwd is not a PyTorch checkpoint \(it starts with b'"):
        load_checkpoint("/etc/passwd")


# --- the real CLI --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_webvision(str(tmp_path_factory.mktemp("attack") / "root"), classes=4, queries_per_class=1,
                          images_per_query=4, val_per_class=2, size=40, seed=0)


def _wvtui(cwd, *args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", XDG_CACHE_HOME=str(cwd / "cache"))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "WVTUI_DEBUG"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, "-m", "wvtui", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow  # three wvtui processes, each importing torch (several seconds on 2 shared cores)
def test_the_cli_exits_2_with_one_line_and_destroys_nothing(tiny_root, tmp_path):
    quick = ["--root", tiny_root, "--num-classes", "4", "--model", "resnet18", "--image-size", "32",
             "--batch-size", "4", "--workers", "0", "--epochs", "1", "--headless"]
    runs = {}
    # --resume FILE on a crafted checkpoint and on a file that is not one.
    for name in ("rng_empty",):
        path = tmp_path / name / "checkpoints" / "last.pt"
        path.parent.mkdir(parents=True)
        torch.save(CRAFTED[name][0](), path)
        runs[name] = (path, CRAFTED[name][1], ["--out", str(tmp_path / name), "--resume", str(path)])
    passwd = tmp_path / "passwd"
    _write_file(passwd, "passwd")
    runs["passwd"] = (passwd, "is not a PyTorch checkpoint", ["--out", str(tmp_path / "p"), "--resume", str(passwd)])
    # --resume auto over a checkpoint from a newer wvtui: refused, never a fresh start over it.
    out = tmp_path / "newer"
    newer = out / "checkpoints" / "last.pt"
    save_checkpoint(CRAFTED["format_newer"][0](), newer)
    runs["auto_newer"] = (newer, CRAFTED["format_newer"][1], ["--out", str(out), "--resume", "auto"])
    before = newer.read_bytes()

    procs = {name: _wvtui(tmp_path, *quick, *extra) for name, (_, _, extra) in runs.items()}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        path, reason, _ = runs[name]
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, (name, stderr)
        assert "Traceback" not in stderr + stdout, name
        assert len(lines) == 1 and lines[0].startswith("wvtui: error: "), (name, stderr)
        assert f"{path} {reason}" in lines[0], (name, lines[0])
    assert newer.read_bytes() == before
    assert os.listdir(out / "checkpoints") == ["last.pt"]
