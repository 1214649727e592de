"""pytest plugin: keep only the tests that need CUDA, the ones a CPU-only run skips.

    python -m pytest -p bench.cuda_tests tests/        # on a GPU machine: run them all

A test counts as needing CUDA when it carries a `cuda` marker, or a `skipif` mark whose reason
names CUDA or a GPU (the form the suite uses: `skipif(not torch.cuda.is_available(), reason=...)`,
also on a `pytest.param`). bench/gpu_check.py runs this selection; on a CPU it only collects it.
"""

from __future__ import annotations

import pytest


def needs_cuda(item: pytest.Item) -> bool:
    if item.get_closest_marker("cuda") is not None:
        return True
    for mark in item.iter_markers("skipif"):
        reason = str(mark.kwargs.get("reason", "")).lower()
        if "cuda" in reason or "gpu" in reason:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep = [item for item in items if needs_cuda(item)]
    dropped = [item for item in items if not needs_cuda(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep
