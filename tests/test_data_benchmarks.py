"""The data benchmarks run as the README prints them (`python bench/x.py`, from any directory),
at sizes small enough for a test. (bench/index.py: tests/test_webvision.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name: str, *args: str, cwd: str) -> str:
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", name), *args], cwd=cwd,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return r.stdout


@pytest.mark.slow
def test_bench_loader_runs_as_a_script(tmp_path):
    out = run_script("loader.py", "--images", "10", "--short-side", "48", "--image-size", "32",
                     "--repeats", "1", "--workers", "1", "--epochs", "2", "--batch-size", "4",
                     cwd=str(tmp_path))
    assert "### Train transform, one core (images/s)" in out
    assert "| 1       |" in out  # the DataLoader row for one worker


@pytest.mark.slow
def test_bench_memory_runs_as_a_script(tmp_path):
    out = run_script("memory.py", "--entries", "2000", "--variant-samples", "500", "--workers", "1",
                     "--batch-size", "64", "--probe-every", "5", cwd=str(tmp_path))
    assert "worst wvtui worker RSS growth" in out
    assert "reference list: worst worker USS growth" in out
