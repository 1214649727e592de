"""bench/gpu_check.py works before a GPU is spent on it: its smoke mode runs every check's code path
on CPU and writes its table into the file it is given, never into the real bench/RESULTS.md."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import pytest

from bench import gpu_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_RESULTS = os.path.join(REPO, "bench", "RESULTS.md")

ROWS = [
    "CUDA tests (pytest -p bench.cuda_tests)",
    "fp16, first steps overflow (item 1)",
    "syncs per training step (item 3)",
    "syncs per evaluation batch (item 3)",
    "CUDA contexts after a run on cuda:N (item 2)",
    "telemetry after a run on cuda:N (item 7)",
    "torchrun --nproc_per_node=1 against a plain run",
    "bench.step, compile off: full loop / model only",
    "bench.step, compile off: data-wait",
    "bench.step, compile off: peak memory, timed window",
    "bench.step, compile off: cudnn.benchmark / TF32",
    "bench.engine: Trainer overhead against a bare loop",
    "bench.console: console cost against headless",
    "bench.step, compile on",
]


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 5 and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
def test_smoke_run_goes_through_every_check_on_cpu(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nearlier figures stay\n")
    before = _digest(REAL_RESULTS)

    out = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--smoke", "--results", str(results)],
                         cwd=REPO, capture_output=True, text=True, timeout=900)

    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    printed = _table_rows(out.stdout)
    written = results.read_text()
    assert written.startswith("# Benchmark results\n\nearlier figures stay\n")
    assert written.count(gpu_check.BEGIN) == 1 and written.count(gpu_check.END) == 1
    rows = _table_rows(written)
    assert rows == printed
    assert list(rows)[1:] == ROWS  # [0] is the header
    statuses = {name: cells[2] for name, cells in rows.items()}
    assert not [n for n, s in statuses.items() if s in (gpu_check.FAIL, "error")]
    # What only CUDA can show says so; what CPU can run either passes or is a smoke figure.
    for name in ("CUDA tests (pytest -p bench.cuda_tests)", "syncs per training step (item 3)",
                 "CUDA contexts after a run on cuda:N (item 2)", "telemetry after a run on cuda:N (item 7)"):
        assert statuses[name] == gpu_check.NO_CUDA
    assert statuses["fp16, first steps overflow (item 1)"] == gpu_check.PASS
    assert statuses["bench.step, compile off: cudnn.benchmark / TF32"] == gpu_check.PASS
    assert statuses["bench.engine: Trainer overhead against a bare loop"] == gpu_check.SMOKE
    found = re.match(r"(\d+) selected", rows["CUDA tests (pytest -p bench.cuda_tests)"][0])
    assert found and int(found.group(1)) >= 1
    assert _digest(REAL_RESULTS) == before


def test_results_section_is_replaced_and_the_rest_kept(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nbefore\n")
    gpu_check.write_section(str(path), "first table")
    gpu_check.write_section(str(path), "second table")
    text = path.read_text()
    assert text.startswith("# Results\n\nbefore\n")
    assert "first table" not in text and text.count("second table") == 1
    path.write_text(text + "\n## After\n\nkept too\n")
    gpu_check.write_section(str(path), "third")
    text = path.read_text()
    assert "second table" not in text and "third" in text and text.endswith("kept too\n")


def test_without_cuda_the_full_run_refuses_in_one_line(capsys):
    if gpu_check.torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the full run would start")
    with pytest.raises(SystemExit) as exc:
        gpu_check.main([])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["gpu_check: error: CUDA is not available on this machine; use --smoke for the CPU run"]


def test_a_results_file_in_a_missing_directory_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--smoke", "--results", str(tmp_path / "nowhere" / "RESULTS.md")])
    assert exc.value.code == 2
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.slow  # a pytest subprocess: seconds of start-up
def test_cuda_test_selection_keeps_only_tests_that_need_cuda(tmp_path):
    (tmp_path / "test_mixed.py").write_text(
        "import pytest\n"
        "needs = pytest.mark.skipif(True, reason='needs a CUDA device')\n"
        "def test_cpu(): pass\n"
        "@needs\n"
        "def test_gpu_only(): pass\n"
        "@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=needs)])\n"
        "def test_both(device): pass\n"
        "@pytest.mark.skipif(True, reason='slow disk')\n"
        "def test_other_skip(): pass\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "bench.cuda_tests", "--collect-only", "-q",
                          "-p", "no:cacheprovider", str(tmp_path / "test_mixed.py")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    ids = sorted(line.split("::", 1)[1] for line in out.stdout.splitlines() if "::" in line)
    assert ids == ["test_both[cuda]", "test_gpu_only"]
