"""Distributed training on CPU: gloo, 2 real processes started by torchrun.

The workers live in tests/dist_worker.py; each writes what it saw to a JSON file per rank.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from core.checkpoint import load_checkpoint
from core.config import TrainConfig
from core.distributed import DistContext
from core.engine import Trainer
from core.events import CheckpointSaved, Command, EvalResult, RunStarted, StepStats
from core.synthetic import make_webvision
from helpers import fingerprint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "dist_worker.py")


def torchrun(*args: str, nproc: int = 2, timeout: float = 120, env: dict | None = None):
    """Run a real torchrun; --standalone picks a free rendezvous port on localhost."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, **(env or {})}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(name, None)
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def read_ranks(out_dir, n: int = 2) -> list[dict]:
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(n)]


# ----- single process: everything is the identity --------------------------------------------


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def test_single_process_context_is_disabled_and_every_method_is_identity(no_torchrun_env):
    ctx = DistContext.from_env("cpu")
    assert (ctx.enabled, ctx.rank, ctx.world_size, ctx.is_main) == (False, 0, 1, True)
    assert ctx.device("auto").type in ("cpu", "cuda")
    cmds = [Command.PAUSE, Command.CHECKPOINT, Command.STOP]
    assert ctx.broadcast_commands([*cmds, (Command.SET_LR, 0.5)]) == [(c, None) for c in cmds] + [(Command.SET_LR, 0.5)]
    assert ctx.all_gather_object({"a": 1}) == [{"a": 1}]
    obj = {"out": "runs/x"}
    assert ctx.broadcast_object(obj) is obj
    t = torch.tensor([1, 2])
    assert ctx.all_reduce_sum(t) is t and t.tolist() == [1, 2]
    model = nn.Linear(2, 2)
    assert ctx.wrap(model) is model and ctx.unwrap(model) is model
    ctx.sync_buffers(model)
    assert ctx.shard(5) == range(5)
    assert ctx.explain(RuntimeError("Connection closed by peer")) is None
    ctx.barrier()
    ctx.shutdown()
    ctx.shutdown()


def test_world_size_one_under_torchrun_is_a_plain_run(no_torchrun_env, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert DistContext.from_env("cpu").enabled is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2"}, "RANK is not set"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "outside 0..WORLD_SIZE-1"),
        ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, "MASTER_ADDR is not set"),
        (
            {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": "1", "WVTUI_DIST_TIMEOUT_S": "-3"},
            "WVTUI_DIST_TIMEOUT_S must be > 0",
        ),
    ],
)
def test_bad_launch_environment_is_a_clear_error(no_torchrun_env, monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message):
        DistContext.from_env("cpu")


def test_unknown_device_is_a_clear_error(no_torchrun_env):
    with pytest.raises(ValueError, match="--device must be"):
        DistContext.from_env("tpu")


# ----- two processes: the primitives the trainer relies on ---------------------------------


@pytest.fixture(scope="module")
def primitives(tmp_path_factory):
    out = tmp_path_factory.mktemp("primitives")
    proc, seconds = torchrun(WORKER, "primitives", str(out))
    return read_ranks(out), proc, seconds


@pytest.mark.slow
def test_rank0_commands_reach_every_rank_at_the_same_boundary_in_order(primitives):
    (r0, r1), _, _ = primitives
    assert r0["commands"] == r1["commands"]
    # A value (SET_LR's lr) travels with its command, bit for bit (the other rank adds 0).
    assert r0["commands"][:3] == [["pause"], [], ["resume", ["lr", 0.0123], "evaluate", ["lr", -2.5e-300]]]
    # Ten pending commands: eight fit this boundary, the rest arrive at the next one.
    assert r0["commands"][3] == ["checkpoint"] * 8
    # A stop raised on rank 1 alone (a forwarded signal) reaches rank 0 at the same boundary.
    assert r0["commands"][4] == ["checkpoint", "checkpoint", "stop"]


@pytest.mark.slow
def test_broadcast_and_gathered_objects_and_sums_agree_on_every_rank(primitives):
    (r0, r1), _, _ = primitives
    assert r0["gathered"] == r1["gathered"] == [{"rank": 0}, {"rank": 1}]
    assert r0["object"] == r1["object"] == {"out": "runs/from-rank-0"}
    assert r0["sum"] == r1["sum"] == [1 + 2, 20]
    assert sorted(r0["shard"] + r1["shard"]) == list(range(7))


@pytest.mark.slow
def test_ddp_makes_weights_identical_and_sync_buffers_copies_rank0_statistics(primitives):
    (r0, r1), _, _ = primitives
    assert r0["wrapped_type"] == "DistributedDataParallel" and r0["unwrap_is_model"]
    assert r0["params"] == r1["params"]
    # Each rank's BatchNorm saw its own last batch ...
    assert r0["running_mean_before_sync"] != r1["running_mean_before_sync"]
    # ... until sync_buffers copied rank 0's statistics everywhere.
    assert r1["running_mean"] == r0["running_mean"] == r0["running_mean_before_sync"]


@pytest.mark.slow
def test_a_rank_that_is_killed_ends_the_other_with_a_clear_message_not_a_hang(primitives):
    (r0, _), proc, seconds = primitives
    assert proc.returncode != 0
    assert seconds < 60
    # torchrun names the rank that failed first.
    assert "exitcode  : 17" in proc.stderr, proc.stderr
    seen = r0["peer_dies"]
    assert seen["outcome"] == "PeerFailure"
    assert "lost contact with the other ranks" in seen["message"]
    assert seen["seconds"] < 30


# ----- two processes: the real Trainer ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> str:
    # 21 val images (and 21 ImageNet val images): an odd count, so an evaluation that padded
    # shards would count some twice.
    out = tmp_path_factory.mktemp("dist_webvision") / "root"
    return make_webvision(str(out), classes=7, queries_per_class=1, images_per_query=8,
                          val_per_class=3, size=40, seed=0, imagenet_per_class=3)


def tiny_config(root: str, out, **over) -> dict:
    cfg = dict(root=root, num_classes=7, epochs=1, batch_size=4, lr=0.02, model="resnet18", image_size=32,
               workers=0, device="cpu", seed=0, out=str(out), report_every=1, report_interval_s=0.0)
    cfg.update(over)
    return cfg


def torchrun_trainer(tmp_path, name: str, spec: dict, timeout: float = 150):
    out = tmp_path / name
    out.mkdir()
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec))
    proc, seconds = torchrun(WORKER, "train", str(out), str(spec_path), timeout=timeout)
    return proc, seconds, out


def events(rec: dict, kind: str) -> list[dict]:
    return [e for e in rec["events"] if e["type"] == kind]


@pytest.fixture(scope="module")
def two_rank_run(tiny_root, tmp_path_factory):
    """One epoch on 2 ranks; rank 0 pauses after step 2, sets the lr after 3, evaluates after 4,
    checkpoints after 5."""
    tmp = tmp_path_factory.mktemp("two_rank")
    spec = {
        "config": tiny_config(tiny_root, tmp / "run", imagenet_val=os.path.join(tiny_root, "imagenet_val")),
        "commands": {"2": ["pause"], "3": [["lr", 0.01]], "4": ["evaluate"], "5": ["checkpoint"]},
        "resume_after_s": 0.5,
        "keep_manual_checkpoint": str(tmp / "manual.pt"),
    }
    proc, _, out = torchrun_trainer(tmp, "out", spec)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return read_ranks(out), tmp


@pytest.mark.slow
def test_weights_are_identical_on_both_ranks_after_training(two_rank_run):
    (r0, r1), _ = two_rank_run
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["reason"] == r1["reason"] == "completed"
    assert r0["initial"] == r1["initial"]
    assert r0["final_params"] == r1["final_params"]
    # Parameters and BatchNorm statistics: the end-of-epoch evaluation synchronised the buffers.
    assert r0["final"] == r1["final"]
    assert r0["final"] != r0["initial"]


@pytest.mark.slow
def test_commands_from_rank0_take_effect_on_both_ranks_at_the_same_step(two_rank_run):
    (r0, r1), _ = two_rank_run
    # [command, epoch, global step at the boundary where it was applied]; RESUME ends the pause
    # inside it, so it shows as the paused -> running transition, and as rank 1 going on to evaluate at step 4.
    expected = [["pause", 0, 2], ["lr", 0, 3], ["evaluate", 0, 4], ["checkpoint", 0, 5]]
    assert r0["applied"] == expected
    assert r1["applied"] == expected
    # The lr reached every rank (else DDP's ranks would step apart and the weights differ).
    assert r0["final_lr"] == r1["final_lr"] == [0.01]
    assert [(e["old"], e["new"], e["step"]) for e in events(r0, "LearningRateSet")] == [(0.02, 0.01, 3)]
    # One CommandApplied per command on rank 0, with its token (the resume's is the worker's timer: none).
    applied = [(e["command"], e["step"], e["token"]) for e in events(r0, "CommandApplied")]
    assert applied == [("pause", 2, "pause@2"), ("resume", 2, None), ("lr", 3, "lr@3"),
                       ("evaluate", 4, "evaluate@4"), ("checkpoint", 5, "checkpoint@5")]
    transitions = [(e["previous"], e["state"], e["step"]) for e in events(r0, "StateChanged")
                   if "paused" in (e["previous"], e["state"])]
    assert transitions == [("running", "paused", 2), ("paused", "running", 2)]
    manual = [e for e in events(r0, "EvalResult") if e["manual"]]
    assert [(e["step"], e["images"]) for e in manual] == [(4, 21)]
    saved = [(e["reason"], e["step"]) for e in events(r0, "CheckpointSaved")]
    assert ("manual", 5) in saved
    # Only rank 0 reports; the other rank emits nothing but its end (and errors).
    assert [e["type"] for e in r1["events"]] == ["RunFinished"]


def _single_process(cfg: dict, commands: dict[int, list[Command]] | None = None, keep: str | None = None):
    seen: list = []
    commands = dict(commands or {})
    trainer: Trainer

    def sink(ev):
        seen.append(ev)
        if isinstance(ev, StepStats):
            for c in commands.pop(ev.step, []):
                trainer.submit(c)
        if isinstance(ev, CheckpointSaved) and ev.reason == "manual" and keep:
            shutil.copy(ev.path, keep)

    trainer = Trainer(TrainConfig(**cfg), sink)
    return trainer, seen


@pytest.mark.slow
def test_sharded_evaluation_equals_single_process_evaluation_of_the_same_weights(two_rank_run, tiny_root):
    (r0, _), tmp = two_rank_run
    final = [e for e in events(r0, "EvalResult") if not e["manual"]][-1]
    last = tmp / "run" / "checkpoints" / "last.pt"
    assert fingerprint(load_checkpoint(str(last))["model"]) == r0["final"]

    cfg = tiny_config(tiny_root, tmp / "single_eval", epochs=2, resume=str(last),
                      imagenet_val=os.path.join(tiny_root, "imagenet_val"))
    trainer, seen = _single_process(cfg)
    trainer.prepare()
    assert trainer.dist.enabled is False
    assert fingerprint(trainer.model.state_dict()) == r0["final"]
    # Both commands wait for the first step boundary: evaluate the loaded weights, then leave.
    trainer.submit(Command.EVALUATE)
    trainer.submit(Command.STOP_NO_SAVE)
    assert trainer.run().reason == "stopped"
    (single,) = [e for e in seen if isinstance(e, EvalResult)]
    assert single.images == final["images"] == 21
    assert (single.acc1, single.acc5) == (final["acc1"], final["acc5"])
    assert list(single.per_class_acc1) == final["per_class_acc1"]
    assert 0 < single.acc5 < 100  # a model that has learnt something, not a constant guess
    assert single.loss == pytest.approx(final["loss"], rel=1e-5)
    assert [list(c) for c in single.confusions] == final["confusions"]
    # The ILSVRC2012 val images of the same classes, scored alongside, exactly as well.
    assert single.imagenet_images == final["imagenet_images"] == 21
    assert (single.imagenet_acc1, single.imagenet_acc5) == (final["imagenet_acc1"], final["imagenet_acc5"])
    assert list(single.imagenet_per_class_acc1) == final["imagenet_per_class_acc1"]
    assert [list(c) for c in single.imagenet_confusions] == final["imagenet_confusions"]
    assert single.imagenet_loss == pytest.approx(final["imagenet_loss"], rel=1e-5)


@pytest.mark.slow
def test_a_2_rank_checkpoint_resumes_in_1_process_and_a_1_process_checkpoint_on_2_ranks(
    two_rank_run, tiny_root, tmp_path
):
    _, tmp = two_rank_run
    manual = tmp / "manual.pt"  # 2 ranks, epoch 0 after 5 steps: 5 x 4 x 2 = 40 samples seen
    state = load_checkpoint(str(manual))
    assert (state["world_size"], state["epoch"], state["step"], state["epoch_step"]) == (2, 0, 5, 5)

    # 2 ranks -> 1 process: 40 samples are 10 single-process steps into the same epoch.
    # Two steps later it saves (48 samples seen) and stops.
    one_ckpt = tmp_path / "one.pt"
    cfg = tiny_config(tiny_root, tmp_path / "one", resume=str(manual))
    trainer, seen = _single_process(cfg, {7: [Command.CHECKPOINT, Command.STOP_NO_SAVE]}, keep=str(one_ckpt))
    trainer.prepare()
    assert fingerprint(trainer.model.state_dict()) == fingerprint(state["model"])
    assert trainer.run().reason == "stopped"
    started = next(e for e in seen if isinstance(e, RunStarted))
    assert (started.start_epoch, started.start_step, started.world_size) == (0, 5, 1)
    first = next(e for e in seen if isinstance(e, StepStats))
    assert (first.epoch, first.step, first.epoch_step, first.steps_per_epoch) == (1, 6, 11, 14)

    # 1 process -> 2 ranks, through the real command line: 48 samples are 6 steps per rank
    # (of 7), so one step remains in the epoch, then the evaluation and the epoch checkpoint.
    state1 = load_checkpoint(str(one_ckpt))
    assert (state1["world_size"], state1["epoch"], state1["step"], state1["epoch_step"]) == (1, 0, 7, 12)
    out = tmp_path / "two"
    proc, _ = torchrun(
        "-m", "wvtui", "--root", tiny_root, "--out", str(out), "--resume", str(one_ckpt), "--headless",
        "--num-classes", "7", "--epochs", "1", "--batch-size", "4", "--lr", "0.02", "--model", "resnet18",
        "--image-size", "32", "--workers", "0", "--device", "cpu", "--report-every", "1",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    assert [(r["epoch"], r["step"]) for r in train] == [(1, 8)]
    # Only rank 0 writes the run directory: one end record, not one per rank.
    assert [r["reason"] for r in records if r["event"] == "finished"] == ["completed"]
    (ev,) = [r for r in records if r["event"] == "eval"]
    assert ev["step"] == 8
    last = load_checkpoint(str(out / "checkpoints" / "last.pt"))
    assert (last["world_size"], last["epoch"], last["step"], last["epoch_step"]) == (2, 1, 8, 0)
    assert fingerprint(last["model"]) != fingerprint(state1["model"])


@pytest.mark.slow
def test_one_rank_raising_ends_the_other_with_a_clear_message(tiny_root, tmp_path):
    spec = {"config": tiny_config(tiny_root, tmp_path / "run"), "fail_rank": 1, "fail_at_forward": 3}
    proc, seconds, out = torchrun_trainer(tmp_path, "out", spec, timeout=120)
    assert proc.returncode != 0
    assert seconds < 90
    r1 = json.loads((out / "rank1.json").read_text())
    (err1,) = events(r1, "RunError")
    assert "injected failure on rank 1" in err1["message"]
    # Rank 0 either saw its peer go and said so, or torchrun ended it first; never a hang.
    r0_path = out / "rank0.json"
    if r0_path.exists() and events(json.loads(r0_path.read_text()), "RunError"):
        (err0,) = events(json.loads(r0_path.read_text()), "RunError")
        assert "lost contact with the other ranks" in err0["message"]
    else:
        assert "SIGTERM" in proc.stderr or "Signal 15" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_2_ranks_record_every_sample_of_the_epoch_exactly_once_padding_dropped(tmp_path):
    # 49 images on 2 ranks: 25 each, so the padded epoch holds sample order[0] twice.
    root = make_webvision(str(tmp_path / "wv"), classes=7, queries_per_class=1, images_per_query=7,
                          val_per_class=1, size=40, seed=0)
    spec = {"config": tiny_config(root, tmp_path / "run", batch_size=5, tensorboard=False),
            "commands": {"2": ["checkpoint"]}, "keep_manual_checkpoint": str(tmp_path / "manual.pt")}
    proc, _, out = torchrun_trainer(tmp_path, "out", spec)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from core.data import ResumableSampler

    def rank_order(rank: int, count: int) -> list[int]:
        sampler = ResumableSampler(49, seed=0, rank=rank, world_size=2)
        sampler.set_epoch(0)
        return sampler.indices()[:count].tolist()

    assert len(set(rank_order(0, 25) + rank_order(1, 25))) == 49  # the whole epoch, one sample twice
    z = np.load(tmp_path / "run" / "samples" / "epoch_001.npz")
    assert z["index"].tolist() == list(range(49))
    r0, r1 = read_ranks(out)
    assert [(e["epoch"], e["samples"]) for e in events(r0, "NoiseEstimate")] == [(1, 49)]
    assert events(r1, "NoiseEstimate") == []  # rank 0 alone tells and writes
    # A checkpoint mid-epoch (rank 0 writes it) holds both ranks' first 2 steps.
    saved = load_checkpoint(str(tmp_path / "manual.pt"))["samples"]
    assert saved["epoch"] == 0
    assert saved["index"].tolist() == sorted(rank_order(0, 10) + rank_order(1, 10))
