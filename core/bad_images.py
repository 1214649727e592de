"""Unreadable images met during a run: counted once each, named once each, remembered on resume.

The loaders report, per batch, the dataset indices of the files they could not read (a host
tensor, -1 where the image was fine). Training replaces such an image by the next readable one;
evaluation scores only readable images. Either way the user hears about each file once.
"""

from __future__ import annotations

from typing import Any

import torch

from core.events import RunWarning

__all__ = ["BadImages"]

_WHAT = {
    "train": "replaced by the next readable one",
    "val": "left out of the evaluation",
}


class BadImages:
    """Which files of each split were unreadable; `collect` names the new ones in a warning."""

    def __init__(self) -> None:
        self.count = 0
        self.seen: dict[str, set[int]] = {}
        self.pending: list[torch.Tensor] = []  # train batches' bad slots not looked at yet

    def add(self, bad: torch.Tensor | None) -> None:
        if bad is not None:
            self.pending.append(bad)

    def collect_pending(self, samples: Any) -> RunWarning | None:
        found, self.pending = self.pending, []
        return self.collect(found, samples, "train")

    def collect(self, bads: list[torch.Tensor], samples: Any, split: str) -> RunWarning | None:
        """A warning naming the files not reported before, or None."""
        if not bads:
            return None
        flat = torch.cat([b.reshape(-1) for b in bads])
        found = flat[flat >= 0].unique().tolist()
        seen = self.seen.setdefault(split, set())
        new = [i for i in found if i not in seen]
        if not new:
            return None
        seen.update(new)
        self.count += len(new)
        return RunWarning(
            kind="bad_images",
            message=f"{len(new)} unreadable {split} image(s) {_WHAT.get(split, 'skipped')} ({self.count} so far)",
            paths=tuple(samples.path(i) for i in new),
        )

    def state(self) -> dict[str, Any]:
        return {"bad_images": self.count,
                "bad_indices": {split: sorted(seen) for split, seen in self.seen.items()}}

    def load(self, state: dict[str, Any]) -> None:
        self.count = int(state.get("bad_images", 0))
        self.seen = {split: set(map(int, seen)) for split, seen in state.get("bad_indices", {}).items()}
