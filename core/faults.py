"""What the trainer says when a run goes wrong: one line each, naming what to change.

A message never claims a file that is not there (a `last.pt` to resume from, a `best.pt`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from core.checkpoint import SaveOutcome
from core.events import RunError, RunWarning

if TYPE_CHECKING:
    from core.engine import Trainer

__all__ = ["one_line", "oom_message", "nonfinite_error", "nonfinite_message", "resume_hint", "save_problem"]


def one_line(e: BaseException) -> str:
    """`Type: first line of the message`, for an event a user reads."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def oom_message(t: Trainer) -> str:
    """Out of memory in trainer `t`: the batch size to try, and the checkpoint to continue from."""
    batch_size, epoch, step = t.config.batch_size, t.epoch_no, t.step
    where = f" on {t.device}" if t.device.type == "cuda" else ""
    per = " per GPU" if t.dist.world_size > 1 else ""
    last = os.path.join(t.checkpoint_dir, "last.pt")
    keep = f"; {last} is unchanged: add --resume auto to continue from it" if os.path.exists(last) else ""
    return (f"out of GPU memory{where} at batch size {batch_size}{per} (epoch {epoch}, step {step}): "
            f"try --batch-size {max(1, batch_size // 2)}{keep}")


def nonfinite_message(*, reads: int | None, epoch: int, step: int, lr: float) -> str:
    """What happened: `reads` non-finite reports in a row, or (None) the run's latest report."""
    what = (f"the training loss was not finite in {reads} reports in a row" if reads is not None
            else "the latest training loss was not finite")
    return f"{what} (epoch {epoch}, step {step}, lr {lr:g})"


def nonfinite_error(what: str, *, latest: bool, checkpoint_dir: str) -> RunError:
    """The run ends "nonfinite": stopped by the policy, or its latest loss was not finite."""
    ended = "the run counts as failed" if latest else "stopped without saving"
    return RunError(kind="nonfinite", message=f"{what}; {ended}. {resume_hint(checkpoint_dir)}")


def resume_hint(checkpoint_dir: str) -> str:
    """Where to continue from, naming only files that exist."""
    names = [n for n in ("last.pt", "best.pt") if os.path.exists(os.path.join(checkpoint_dir, n))]
    if not names:
        return "Lower --lr and start again (no checkpoint was written)."
    return f"Lower --lr, or --resume from {os.path.join(checkpoint_dir, names[0])}."


def save_problem(outcome: SaveOutcome, name: str, *, previous_kept: bool) -> RunWarning | RunError | None:
    """The event for a checkpoint that was not written (None when it was): training goes on."""
    kept = f"the previous {name} is intact" if previous_kept else f"there is no {name} yet"
    if outcome.status == "skipped":
        return RunWarning(kind="checkpoint", message=f"not writing {outcome.path}: {outcome.error}; {kept}")
    if outcome.status == "failed":
        return RunError(kind="checkpoint",
                        message=f"could not write {outcome.path}: {outcome.error}; training goes on and {kept}")
    return None
