"""One rank of a multi-process test, started by torchrun from tests/test_distributed.py.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_worker.py SCENARIO OUT_DIR

Each rank writes OUT_DIR/rank<R>.json with what it observed; the test compares the ranks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from core.distributed import DistContext, PeerFailure  # noqa: E402
from core.events import Command  # noqa: E402
from helpers import fingerprint  # noqa: E402 - tests/ is this script's directory


def write(out_dir: str, rank: int, record: dict) -> None:
    path = os.path.join(out_dir, f"rank{rank}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)


def primitives(ctx: DistContext, out_dir: str) -> None:
    rec: dict = {"rank": ctx.rank, "world_size": ctx.world_size, "enabled": ctx.enabled}
    script = [
        [Command.PAUSE],
        [],
        [Command.RESUME, (Command.SET_LR, 0.0123), Command.EVALUATE, (Command.SET_LR, -2.5e-300)],
        [Command.CHECKPOINT] * 10,  # more than the slots: two arrive at the next boundary
        [],
    ]
    seen = []
    for step, mine in enumerate(script):
        local = mine if ctx.is_main else []
        if not ctx.is_main and step == 4:
            local = [Command.STOP]  # a signal delivered only to this rank
        seen.append([c.value if v is None else [c.value, v] for c, v in ctx.broadcast_commands(local)])
    rec["commands"] = seen
    rec["gathered"] = ctx.all_gather_object({"rank": ctx.rank})
    rec["object"] = ctx.broadcast_object({"out": f"runs/from-rank-{ctx.rank}"})
    counts = torch.tensor([ctx.rank + 1, 10], dtype=torch.int64)
    rec["sum"] = ctx.all_reduce_sum(counts).tolist()
    rec["shard"] = list(ctx.shard(7))

    torch.manual_seed(ctx.rank)  # different weights per rank: DDP must make them equal
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    wrapped = ctx.wrap(model)
    rec["wrapped_type"] = type(wrapped).__name__
    rec["unwrap_is_model"] = ctx.unwrap(wrapped) is model
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    torch.manual_seed(100 + ctx.rank)  # different data per rank
    for _ in range(3):
        loss = wrapped(torch.randn(4, 3, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    rec["params"] = [p.detach().flatten().tolist() for p in model.parameters()]
    rec["running_mean_before_sync"] = model[1].running_mean.tolist()
    ctx.sync_buffers(wrapped)
    rec["running_mean"] = model[1].running_mean.tolist()
    rec["num_batches_tracked"] = int(model[1].num_batches_tracked)
    if ctx.rank == 0:
        # torchrun SIGTERMs this rank as soon as it sees rank 1 gone; hold the signal (before the
        # barrier, so rank 1 cannot exit first) so the test observes what gloo itself reports to
        # a rank left waiting.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    ctx.barrier()
    write(out_dir, ctx.rank, rec)

    # Last, a peer killed abruptly: rank 0, waiting in the next command exchange, must get a
    # clear error at once rather than hang.
    if ctx.rank == 1:
        os._exit(17)
    start = time.monotonic()
    try:
        ctx.broadcast_commands([])
        rec["peer_dies"] = {"outcome": "returned"}
    except PeerFailure as exc:
        rec["peer_dies"] = {"outcome": "PeerFailure", "message": str(exc)}
    rec["peer_dies"]["seconds"] = time.monotonic() - start
    ctx.shutdown(abort=True)
    ctx.shutdown(abort=True)  # idempotent
    write(out_dir, ctx.rank, rec)
    sys.exit(1)


def train(out_dir: str, spec_path: str) -> int:
    """Run the real Trainer on this rank as a spec says; record what this rank saw and did.

    spec: {"config": TrainConfig fields, "commands": {step: [command or [command, value], ...]}
    submitted on rank 0 once it reports that step, "resume_after_s": RESUME this long after a pause,
    "keep_manual_checkpoint": copy the manual checkpoint there, "fail_rank"/"fail_at_forward":
    that rank's model raises in its n-th training forward}
    """
    from core.config import TrainConfig
    from core.engine import Trainer
    from core.events import (CheckpointSaved, CommandApplied, EvalResult, LearningRateSet, NoiseEstimate, RunError,
                             RunFinished, RunStarted, RunState, StateChanged, StepStats)

    with open(spec_path) as f:
        spec = json.load(f)
    rank = int(os.environ["RANK"])
    rec: dict = {"rank": rank, "applied": [], "events": [], "first_step_stats": None}
    commands = {int(k): [(Command(c), None) if isinstance(c, str) else (Command(c[0]), c[1]) for c in v]
                for k, v in spec.get("commands", {}).items()}
    trainer: Trainer

    def sink(ev) -> None:
        if isinstance(ev, (RunStarted, StateChanged, EvalResult, CheckpointSaved, RunError, RunFinished,
                           NoiseEstimate, CommandApplied, LearningRateSet)):
            r = ev.to_record()
            r.pop("config", None)
            r.pop("summary", None)
            r.pop("traceback", None)
            rec["events"].append({"type": type(ev).__name__, **r})
        if isinstance(ev, StepStats):
            if rec["first_step_stats"] is None:
                rec["first_step_stats"] = {"step": ev.step, "epoch": ev.epoch, "epoch_step": ev.epoch_step}
            for c, value in commands.pop(ev.step, []):
                trainer.submit(c, value=value, token=f"{c.value}@{ev.step}")
        if isinstance(ev, StateChanged) and ev.state is RunState.PAUSED and ev.previous is RunState.RUNNING:
            threading.Timer(spec.get("resume_after_s", 0.5), trainer.submit, (Command.RESUME,)).start()
        if isinstance(ev, CheckpointSaved) and ev.reason == "manual" and spec.get("keep_manual_checkpoint"):
            shutil.copy(ev.path, spec["keep_manual_checkpoint"])
        if isinstance(ev, RunError):
            write(out_dir, rank, rec)  # torchrun may terminate this rank before it returns

    trainer = Trainer(TrainConfig(**spec["config"]), sink)

    def recording_apply(item, *, paused, _apply=trainer._apply):
        rec["applied"].append([item.command.value, trainer.epoch, trainer.step])  # trainer.epoch: 0-based
        return _apply(item, paused=paused)

    trainer._apply = recording_apply
    trainer.prepare()
    rec["world_size"] = trainer.dist.world_size
    rec["initial"] = fingerprint(trainer.model.state_dict())
    if spec.get("fail_rank") == rank:
        calls = []

        def fail(module, args):
            if module.training:
                calls.append(1)
                if len(calls) == spec["fail_at_forward"]:
                    raise RuntimeError(f"injected failure on rank {rank}")

        trainer.model.register_forward_pre_hook(fail)
    finished = trainer.run()
    rec["reason"] = finished.reason
    rec["final"] = fingerprint(trainer.model.state_dict())
    rec["final_params"] = fingerprint(dict(trainer.model.named_parameters()))
    rec["final_lr"] = [g["lr"] for g in trainer.optimizer.param_groups]
    write(out_dir, rank, rec)
    return 1 if finished.reason == "error" else 0


SCENARIOS = {"primitives": primitives}


def main() -> None:
    scenario, out_dir = sys.argv[1], sys.argv[2]
    if scenario == "train":
        sys.exit(train(out_dir, sys.argv[3]))
    ctx = DistContext.from_env("cpu")
    SCENARIOS[scenario](ctx, out_dir)


if __name__ == "__main__":
    main()
