"""Multi-GPU and multi-node training on torch.distributed, launched by torchrun.

    torchrun --nproc_per_node=4 -m wvtui --root DIR ...

torchrun starts one process per GPU and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; `DistContext.from_env` reads them. Every rank runs the same `Trainer`; rank 0 is
the one that talks to the user and writes files.

Two process groups: the default one (NCCL on GPUs, gloo on CPU) carries gradients and tensor
reductions; a gloo group carries the small per-step control messages (commands, small
objects, barriers), so they cost no host-device synchronisation and never queue behind gradient traffic.

When one rank fails, the others must not hang:
- a rank that raises ends its run, calls `shutdown(abort=True)` and exits non-zero; torchrun
  sees the failed worker and terminates the remaining ones (SIGTERM, then SIGKILL);
- a rank blocked in a collective with a peer that died gets an error from gloo as soon as the
  peer's sockets close; our collectives turn it into `PeerFailure` with a clear message;
- as the last resort (a peer that hangs without dying, or a lost node) every collective has a
  bounded timeout (`WVTUI_DIST_TIMEOUT_S`, default 600 s) after which it raises.
Checkpoints are written by rank 0 only with an atomic rename, so the last one stays usable.

With one process (no torchrun, or --nproc_per_node=1) the context is disabled and every method
is the identity or a no-op, so the single-GPU path pays nothing.

How the trainer uses it (every collective must be reached by every rank in the same order):
- `dist = DistContext.from_env(cfg.device)`; `device = dist.device(cfg.device)`; load weights
  into the plain model, then `model = dist.wrap(model)`. Sampler shard: rank/world_size. The
  trainer also makes `device` current on the thread that trains (the current CUDA device is
  per thread; `from_env` can only set it on the thread that builds the context).
- Each step boundary: `broadcast_commands(local)` on every rank (core.commands); every rank
  applies the same list in order.
- Paused: rank 0 waits on its command condition for at most `core.commands.PAUSE_POLL_S`
  (0.5 s) and exchanges again; the other ranks wait inside the exchange. Each collective stays
  short, so a pause of any length never meets the process-group timeout.
- The loss of a reporting window: `all_reduce_sum` after the same number of steps on every
  rank, so the non-finite decision is the same everywhere; only rank 0 emits the report, so
  its clock decides nothing the other ranks must follow.
- Evaluation (core.evaluate): `sync_buffers(model)`, forward with the plain module over
  `shard(len(val))`, then one `all_reduce_sum` of the float64 counts and loss sum.
- Checkpoint: rank 0 saves `unwrap(model).state_dict()` (DDP gives every rank rank 0's
  buffers at each forward); the CUDA generator states come from every rank through
  `all_gather_object`, so each rank resumes its own stream.
- Exceptions: message = `dist.explain(exc) or str(exc)`; then `dist.shutdown(abort=True)` and
  no further collective; the process then exits non-zero and torchrun ends the others.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.events import Command

DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "WVTUI_DIST_TIMEOUT_S"

# Rank 0's commands travel as codes in a fixed number of ordered slots, each with a value slot
# (the float64 bits of SET_LR's lr); a longer backlog waits for the next step boundary. The tail holds one counter per command kind so that a command
# raised locally on another rank (a signal torchrun forwarded, say) is not lost.
COMMAND_SLOTS = 8
_COMMANDS = tuple(Command)
_CODE = {c: i + 1 for i, c in enumerate(_COMMANDS)}
_HAS_VALUE = 1 << 16  # or-ed into a slot's code when the value slot holds a value

_ACTIVE: DistContext | None = None


class PeerFailure(RuntimeError):
    """Another rank failed, was killed or stopped answering while this one waited for it."""


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ValueError(
                f"{name} is not set: start multi-process runs with torchrun, "
                "e.g. torchrun --nproc_per_node=2 -m wvtui --root DIR"
            )
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def _timeout_s() -> float:
    value = os.environ.get(TIMEOUT_ENV)
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be > 0, got {value}")
    return seconds


def _resolve_device(pref: str, local_rank: int, distributed: bool) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "cuda" or pref.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {pref} was asked for but no CUDA GPU is available")
        if not distributed:
            return torch.device(pref)
        if pref != "cuda":
            raise ValueError(
                f"--device {pref} cannot be used under torchrun: each rank uses the GPU of its "
                "LOCAL_RANK; pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
            )
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"LOCAL_RANK {local_rank} has no GPU: only {count} visible on this node; "
                f"use --nproc_per_node={count} or fewer"
            )
        return torch.device("cuda", local_rank)
    raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {pref!r}")


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    enabled: bool = False
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    _device: torch.device | None = None
    _control: Any = None  # gloo ProcessGroup for control messages
    _backlog: list[tuple[Command, float | None]] = field(default_factory=list)
    _closed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ----- set-up --------------------------------------------------------------------------
    @classmethod
    def from_env(cls, device: str = "auto") -> DistContext:
        """A context from torchrun's environment; WORLD_SIZE unset or 1 gives a disabled one.

        Safe to call more than once per process: later calls return the live context.
        """
        global _ACTIVE
        if _ACTIVE is not None and not _ACTIVE._closed:
            return _ACTIVE
        world_size = _env_int("WORLD_SIZE", 1)
        if world_size < 1:
            raise ValueError(f"WORLD_SIZE must be >= 1, got {world_size}")
        if world_size == 1:
            local_rank = _env_int("LOCAL_RANK", 0)
            return cls(local_rank=local_rank, _device=_resolve_device(device, local_rank, False))

        rank = _env_int("RANK")
        local_rank = _env_int("LOCAL_RANK")
        local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK={rank} is outside 0..WORLD_SIZE-1 ({world_size - 1})")
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise ValueError(f"{name} is not set: start multi-process runs with torchrun")
        dev = _resolve_device(device, local_rank, True)
        timeout_s = _timeout_s()
        timeout = datetime.timedelta(seconds=timeout_s)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            # Before init, so NCCL binds each rank to its own GPU rather than all to cuda:0.
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(
                backend=backend,
                timeout=timeout,
                device_id=dev if dev.type == "cuda" else None,
            )
        control = dist.new_group(backend="gloo", timeout=timeout)
        ctx = cls(
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            local_world_size=local_world_size,
            enabled=True,
            backend=backend,
            timeout_s=timeout_s,
            _device=dev,
            _control=control,
        )
        _ACTIVE = ctx
        return ctx

    def device(self, pref: str = "auto") -> torch.device:
        """The device this rank trains on: cuda:LOCAL_RANK under torchrun on GPUs."""
        if self.enabled and self._device is not None:
            if pref not in ("auto", "cuda", self._device.type, str(self._device)):
                raise ValueError(
                    f"--device {pref} differs from the device this rank was started on "
                    f"({self._device})"
                )
            return self._device
        return _resolve_device(pref, self.local_rank, False)

    # ----- model ---------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around a model already on this rank's device."""
        if not self.enabled:
            return model
        dev = next(model.parameters()).device
        return DistributedDataParallel(
            model,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            # Gradients live in the all-reduce buckets: no copy in or out each step.
            gradient_as_bucket_view=True,
        )

    @property
    def grads_are_bucket_views(self) -> bool:
        """Whether `wrap` made gradients views into DDP's buckets: then zero them in place
        (`zero_grad(set_to_none=False)`); setting them to None makes DDP copy every gradient
        into its bucket again at each step."""
        return self.enabled

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        """The plain module under DDP and torch.compile wrappers (what checkpoints hold).

        Evaluate with the unwrapped module: a DDP forward may broadcast buffers, a collective
        that would hang when ranks run different numbers of evaluation batches.
        """
        while True:
            if isinstance(model, DistributedDataParallel):
                model = model.module
            elif hasattr(model, "_orig_mod"):
                model = model._orig_mod
            else:
                return model

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

        DDP broadcasts buffers at the start of each forward, so after the last step each rank
        holds statistics updated by its own last batch. Call before evaluating or saving, so
        every rank evaluates the same model and the checkpoint matches it.
        """
        if not self.enabled:
            return
        buffers = [b for b in self.unwrap(model).buffers() if b.numel() > 0]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for b in buffers:
            by_dtype.setdefault(b.dtype, []).append(b)
        for group in by_dtype.values():
            flat = torch.cat([b.reshape(-1) for b in group])
            self._collective("sync buffers", dist.broadcast, flat, src=0, group=self._group_for(flat))
            offset = 0
            for b in group:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()

    # ----- control messages -----------------------------------------------------------------
    def broadcast_commands(self, commands: list[Command | tuple[Command, float | None]]
                           ) -> list[tuple[Command, float | None]]:
        """The commands every rank applies at this step boundary: rank 0's, in order, each with
        its value (SET_LR's lr; None for a command without one).

        Call once per step boundary on every rank. Commands given on other ranks are applied
        too (once each, after rank 0's, without a value), so a signal delivered to any rank
        stops every rank at the same step. Cost: one all-reduce of 2 x COMMAND_SLOTS + one
        integer per command kind on the gloo group; a value travels as the bits of its float64
        (the other ranks add 0).
        """
        items = [c if isinstance(c, tuple) else (c, None) for c in commands]
        items = [(Command(c), None if v is None else float(v)) for c, v in items]
        if not self.enabled:
            return items
        codes = torch.zeros(2 * COMMAND_SLOTS + len(_COMMANDS), dtype=torch.int64)
        kinds = 2 * COMMAND_SLOTS
        if self.is_main:
            pending = self._backlog + items
            send, self._backlog = pending[:COMMAND_SLOTS], pending[COMMAND_SLOTS:]
            for i, (c, v) in enumerate(send):
                codes[i] = _CODE[c] | (_HAS_VALUE if v is not None else 0)
                if v is not None:
                    codes[COMMAND_SLOTS + i] = torch.tensor(v, dtype=torch.float64).view(torch.int64)
        else:
            for c, _ in items:
                codes[kinds + _CODE[c] - 1] = 1
        self._collective("command exchange", dist.all_reduce, codes, group=self._control)
        out: list[tuple[Command, float | None]] = []
        values = codes[COMMAND_SLOTS:kinds].view(torch.float64).tolist()
        for i, code in enumerate(codes[:COMMAND_SLOTS].tolist()):
            if code:
                out.append((_COMMANDS[(code & ~_HAS_VALUE) - 1], values[i] if code & _HAS_VALUE else None))
        for i, count in enumerate(codes[kinds:].tolist()):
            if count and all(c is not _COMMANDS[i] for c, _ in out):
                out.append((_COMMANDS[i], None))
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's picklable value on every rank (run directory, resolved resume path, ...)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        self._collective(
            "object broadcast", dist.broadcast_object_list, box, src=0, group=self._control
        )
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable value, indexed by rank, on every rank (e.g. CUDA RNG states)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._collective("object gather", dist.all_gather_object, out, obj, group=self._control)
        return out

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place, and returned. GPU tensors go over NCCL, CPU ones over gloo.

        Reduce counts (int64) rather than averages so that results are exact.
        """
        if not self.enabled:
            return t
        self._collective("all-reduce", dist.all_reduce, t, group=self._group_for(t))
        return t

    def barrier(self) -> None:
        if self.enabled:
            self._collective("barrier", dist.barrier, group=self._control)

    def shard(self, n: int) -> range:
        """This rank's share of n evaluation items: every world_size-th one, no padding.

        Unlike the training sampler nothing is repeated, so summed counts equal those of a
        single-process pass over all n items.
        """
        return range(self.rank, n, self.world_size) if self.enabled else range(n)

    # ----- failure and shutdown -------------------------------------------------------------
    def explain(self, exc: BaseException) -> str | None:
        """A one-line message for an error from a collective (e.g. DDP's gradient all-reduce),
        or None when the error is not about the other ranks."""
        if not self.enabled:
            return None
        if isinstance(exc, PeerFailure):
            return str(exc)
        if isinstance(exc, dist.DistError) or (
            isinstance(exc, RuntimeError)
            and any(
                s in str(exc)
                for s in ("Connection closed by peer", "Connection reset", "gloo", "NCCL", "Timed out")
            )
        ):
            return self._peer_message("a collective", exc)
        return None

    def shutdown(self, *, abort: bool = False) -> None:
        """Leave the process groups. Idempotent.

        abort=True is for the error path: it runs no collective and does not wait for
        in-flight NCCL work that a dead peer will never complete.
        """
        global _ACTIVE
        if not self.enabled or self._closed:
            return
        self._closed = True
        if _ACTIVE is self:
            _ACTIVE = None
        if not dist.is_initialized():
            return
        if abort and self.backend == "nccl":
            dist.distributed_c10d._abort_process_group()
        else:
            dist.destroy_process_group()

    # ----- internals ------------------------------------------------------------------------
    def _group_for(self, t: torch.Tensor) -> Any:
        return self._control if t.device.type == "cpu" else None

    def _peer_message(self, what: str, exc: BaseException) -> str:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if len(first) > 160:
            first = first[:157] + "..."
        return (
            f"rank {self.rank}/{self.world_size}: lost contact with the other ranks during "
            f"{what}: another rank failed, was killed or stopped answering "
            f"(timeout {self.timeout_s:.0f}s); see that rank's error. The last checkpoint "
            f"is intact: resume with --resume auto. [{first}]"
        )

    def _collective(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self._closed:
            raise PeerFailure(f"rank {self.rank}: {what} after the process group was shut down")
        try:
            fn(*args, **kwargs)
        except RuntimeError as exc:
            raise PeerFailure(self._peer_message(what, exc)) from exc
