"""Random number generator states as plain data, so a checkpoint can hold them under weights_only.

One process trains on one device, so it saves and restores that device's own CUDA generator
(not `get_rng_state_all()`: every rank would save the same GPU-0 state and restore it onto GPUs
it never used). Each rank captures its own state; the trainer gathers them per rank.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "rng_state_problem"]

_MT_WORDS = 624  # Mersenne Twister state words of numpy's and Python's generators


def _cuda_device(device: torch.device | str | None) -> torch.device | None:
    if device is None:
        return None
    device = torch.device(device)
    return device if device.type == "cuda" else None


def capture_rng_state(device: torch.device | str | None = None) -> dict[str, Any]:
    """CPU torch, numpy and Python states, plus the CUDA generator of `device` when it is a GPU."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    cuda = _cuda_device(device)
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_state[0]), "state": list(py_state[1]), "gauss_next": py_state[2]},
        "cuda": torch.cuda.get_rng_state(cuda) if cuda is not None else None,
    }


def restore_rng_state(rng: dict[str, Any], device: torch.device | str | None = None) -> None:
    """Undo `capture_rng_state`: the CUDA state goes to `device`'s generator, no other GPU's.

    `rng["cuda"]` is this process's state (a tensor) or None: a checkpoint's per-rank list is
    resolved to one entry first (`core.resume.own_cuda_rng`). A state saved on the CPU leaves a
    GPU's generator as seeded; a GPU state is ignored on the CPU.
    """
    torch.set_rng_state(rng["torch"].cpu())
    n = rng["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = rng["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    cuda = _cuda_device(device)
    state = rng.get("cuda")
    if cuda is None or state is None:
        return
    if not isinstance(state, torch.Tensor):
        raise ValueError("restore_rng_state: rng['cuda'] must be one device's state; pick this rank's entry first")
    torch.cuda.set_rng_state(state.cpu(), cuda)


def _byte_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 1 and x.numel() > 0


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def rng_state_problem(rng: Any) -> str | None:
    """None when `rng` can be restored, else what is wrong with it (a phrase after "'rng' ")."""
    if not isinstance(rng, dict) or not {"torch", "numpy", "python"} <= rng.keys():
        return f"must be a dict with torch, numpy and python states, got {_short(rng)}"
    if not (_byte_tensor(rng["torch"]) and rng["torch"].numel() == torch.get_rng_state().numel()):
        return "holds a torch state that is not a generator state"
    n = rng["numpy"]
    if not (isinstance(n, dict) and isinstance(n.get("keys"), torch.Tensor) and n["keys"].numel() == _MT_WORDS
            and _int(n.get("pos")) and 0 <= n["pos"] <= _MT_WORDS and _int(n.get("has_gauss"))
            and isinstance(n.get("cached_gaussian"), (int, float))):
        return "holds a numpy state that is not a generator state"
    p = rng["python"]
    if not (isinstance(p, dict) and _int(p.get("version")) and isinstance(p.get("state"), (list, tuple))
            and len(p["state"]) == _MT_WORDS + 1 and all(_int(w) and 0 <= w < 2**32 for w in p["state"])
            and (p.get("gauss_next") is None or isinstance(p["gauss_next"], float))):
        return "holds a Python state that is not a generator state"
    cuda = rng.get("cuda")
    states = cuda if isinstance(cuda, (list, tuple)) else [cuda]
    if cuda is not None and not all(_byte_tensor(s) for s in states):
        return "holds a CUDA state that is not a generator state"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
