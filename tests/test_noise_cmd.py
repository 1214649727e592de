"""`wvtui noise`: record files written with numpy as the trainer writes them, over a real synthetic
tree, read back as a CSV and as the noisiest-classes-and-queries summary; every bad input is one
line and exit 2. Also `--no-samples`, and bench/noise.py run as the README prints it."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core.webvision import WebVisionIndex
from wvtui.noise_cmd import CSV_HEADER, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The fixture tree: 4 classes x 2 queries x 8 images; query q (0..7) holds class q // 2.
QUERY_CLEAN = [0.9, 0.8, 0.2, 0.7, 0.95, 0.5, 0.6, 0.88]  # clean probability of each query's images
QUERY_LOSS = [0.5, 0.6, 2.5, 0.9, 0.3, 1.5, 1.2, 0.4]
# Lowest clean fraction first: queries by QUERY_CLEAN; classes by their queries' mean.
QUERY_ORDER = [2, 5, 6, 3, 1, 7, 0, 4]
CLASS_ORDER = [1, 2, 3, 0]


def write_npz(path, **arrays) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def records(index: WebVisionIndex, chosen: np.ndarray, *, clean, loss, pred) -> dict[str, np.ndarray]:
    """The arrays of one epoch's file, in the contract's dtypes."""
    return {"index": chosen.astype(np.int64), "loss": np.asarray(loss, np.float16),
            "pred": np.asarray(pred, np.int16), "clean_prob": np.asarray(clean, np.float16),
            "label": index.train.labels[chosen].astype(np.int16),
            "query": index.train.queries[chosen].astype(np.int64)}


@pytest.fixture(scope="module")
def index(synthetic_root) -> WebVisionIndex:
    return WebVisionIndex.load(synthetic_root, num_classes=4)


@pytest.fixture
def run(tmp_path, synthetic_root, index):
    """A run dir with records for epochs 1 and 3 (files epoch_001 and epoch_003): epoch 1 holds
    every other sample (a capped epoch), epoch 3 every sample with the planted noise above."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"root": synthetic_root, "num_classes": 4, "use_flickr": False}))
    odd = np.arange(1, len(index.train), 2)
    write_npz(str(out / "samples" / "epoch_001.npz"),
              **records(index, odd, clean=np.linspace(0, 1, len(odd)), loss=np.linspace(4, 0, len(odd)),
                        pred=index.train.labels[odd]))
    every = np.arange(len(index.train))
    q = index.train.queries[every]
    pred = index.train.labels[every].copy()
    first = np.flatnonzero(q == 2)  # query 2 (class 1): 5 images predicted as 3, 2 as 2
    pred[first[:5]], pred[first[5:7]] = 3, 2
    write_npz(str(out / "samples" / "epoch_003.npz"),
              **records(index, every, clean=np.take(QUERY_CLEAN, q), loss=np.take(QUERY_LOSS, q), pred=pred))
    return out


def call(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def section(text: str, title: str) -> list[list[str]]:
    """The body rows of the Markdown table under the heading that starts with `title`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"### {title}"))
    rows = []
    for line in lines[start + 4:]:  # heading, blank, header, rule
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


# --------------------------------------------------------------------------- the CSV


def test_csv_of_the_last_epoch_has_one_row_per_record_with_its_path(run, index, tmp_path, capsys):
    target = tmp_path / "noise.csv"
    code, out, err = call(capsys, run, "--csv", target)
    assert (code, out, err) == (0, "", "")
    rows = read_csv(target.read_text())
    assert tuple(rows[0]) == CSV_HEADER == ("index", "path", "label", "query", "loss", "predicted", "clean_prob")
    body = rows[1:]
    assert len(body) == len(index.train)  # epoch 3's file, the last: every sample
    q = index.train.queries
    for r in body:
        i = int(r[0])
        assert r[1] == index.train.relpath(i) and os.path.isfile(os.path.join(index.root, r[1]))
        assert int(r[2]) == index.train.labels[i] and int(r[3]) == q[i]
        assert float(r[4]) == pytest.approx(QUERY_LOSS[q[i]], rel=1e-3)
        assert float(r[6]) == pytest.approx(QUERY_CLEAN[q[i]], rel=1e-3)
    predicted = [int(r[5]) for r in body if q[int(r[0])] == 2]
    assert sorted(predicted) == [1, 2, 2, 3, 3, 3, 3, 3]


def test_epoch_is_counted_from_one_and_dash_writes_stdout(run, index, capsys):
    code, out, err = call(capsys, run, "--epoch", "1", "--csv", "-")
    assert (code, err) == (0, "")
    body = read_csv(out)[1:]
    odd = list(range(1, len(index.train), 2))
    assert [int(r[0]) for r in body] == odd  # epoch 1 = epoch_001.npz, the capped epoch
    assert [r[1] for r in body] == [index.train.relpath(i) for i in odd]
    assert float(body[0][4]) == pytest.approx(4.0)


def test_moved_dataset_still_gives_the_record_columns_and_says_paths_are_unavailable(run, tmp_path, capsys):
    (run / "config.json").write_text(json.dumps({"root": str(tmp_path / "moved"), "num_classes": 4}))
    code, out, err = call(capsys, run, "--csv", "-")
    assert code == 0
    assert err.count("\n") == 1 and err.startswith("wvtui: warning: paths unavailable: ")
    assert str(tmp_path / "moved") in err
    rows = read_csv(out)
    assert tuple(rows[0]) == CSV_HEADER and len(rows) == 65  # epoch 3: every sample
    assert {r[1] for r in rows[1:]} == {""}
    assert {int(r[2]) for r in rows[1:]} == {0, 1, 2, 3}  # labels and queries come from the npz


def test_without_config_json_the_started_record_names_the_dataset(run, synthetic_root, index, capsys):
    (run / "config.json").unlink()  # a run that died before writing it
    record = {"event": "started", "config": {"root": synthetic_root, "num_classes": 4}}
    (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    code, out, err = call(capsys, run, "--csv", "-")
    assert (code, err) == (0, "")
    assert read_csv(out)[1][1] == index.train.relpath(0)


def test_records_of_another_dataset_leave_the_paths_out(run, index, capsys):
    beyond = np.array([0, len(index.train) + 5])
    write_npz(str(run / "samples" / "epoch_009.npz"), index=beyond, loss=np.ones(2, np.float16),
              pred=np.zeros(2, np.int16), clean_prob=np.ones(2, np.float16), label=np.zeros(2, np.int16),
              query=np.zeros(2, np.int64))
    code, out, err = call(capsys, run, "--csv", "-")
    assert code == 0
    assert "not the run's dataset" in err and err.count("\n") == 1
    assert [r[1] for r in read_csv(out)[1:]] == ["", ""]


def test_the_trainers_own_record_file_reads_back(tmp_path, synthetic_root, index, capsys):
    """core.noise writes the file as a run does (its split, its dtypes); the CSV carries it."""
    from core.noise import epoch_events
    from core.sample_record import Samples

    out = tmp_path / "run"
    (out).mkdir()
    (out / "config.json").write_text(json.dumps({"root": synthetic_root, "num_classes": 4}))
    n = len(index.train)
    loss = np.where(np.arange(n) % 4 == 0, 3.0, 0.2).astype(np.float32)  # every 4th sample noisy
    events = epoch_events(Samples(np.arange(n), loss, index.train.labels.astype(np.int64)), index,
                          epoch=1, step=4, out_dir=str(out))
    assert events[0].path == str(out / "samples" / "epoch_001.npz") and events[0].epoch == 1
    code, text, err = call(capsys, out, "--csv", "-")
    assert (code, err) == (0, "")
    body = read_csv(text)[1:]
    assert [int(r[0]) for r in body] == list(range(n))
    assert [r[1] for r in body] == [index.train.relpath(i) for i in range(n)]
    noisy = [float(r[6]) for r in body if int(r[0]) % 4 == 0]
    clean = [float(r[6]) for r in body if int(r[0]) % 4]
    assert max(noisy) < 0.5 < min(clean)


# --------------------------------------------------------------------------- the summary


def test_summary_lists_the_noisiest_classes_and_queries_first(run, capsys):
    code, out, err = call(capsys, run)
    assert (code, err) == (0, "")
    assert out.startswith(f"wvtui noise {run}: epoch 3 (samples/epoch_003.npz), 64 training samples")
    assert "augmented views" in out
    classes = section(out, "Noisiest classes")
    assert [int(r[0].split()[0]) for r in classes] == CLASS_ORDER
    assert classes[0][0] == "1 synthetic class 1"  # the synset's first name
    assert classes[0][1:4] == ["16", f"{(0.2 + 0.7) / 2:.3f}", f"{(2.5 + 0.9) / 2:.3f}"]
    assert classes[0][4] == "3 synthetic class 3 (5)"
    assert [r[4] for r in classes[1:]] == ["—"] * 3
    queries = section(out, "Noisiest queries")
    assert [int(r[0]) for r in queries] == QUERY_ORDER
    assert queries[0][1:5] == ["google/q0003", "synthetic class 1 view 0", "1 synthetic class 1", "8"]
    assert queries[0][7] == "3 synthetic class 3 (5)"


def test_summary_keeps_the_top_twenty_and_without_the_dataset_shows_numbers(tmp_path, capsys):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "config.json").write_text(json.dumps({"root": str(tmp_path / "gone"), "num_classes": 30}))
    n = 30 * 4
    label = np.repeat(np.arange(30), 4)
    clean = 1.0 - label / 40.0  # class 29 the noisiest
    write_npz(str(out_dir / "samples" / "epoch_001.npz"), index=np.arange(n), loss=np.ones(n, np.float16),
              pred=label.astype(np.int16), clean_prob=clean.astype(np.float16), label=label.astype(np.int16),
              query=label.astype(np.int64) * 2)
    code, out, err = call(capsys, out_dir)
    assert code == 0 and err.startswith("wvtui: warning: paths, class names and query texts unavailable")
    assert "Class names and query texts unavailable" in out
    assert "### Noisiest classes (lowest clean fraction first; 20 of 30)" in out
    classes = section(out, "Noisiest classes")
    assert [r[0] for r in classes] == [str(c) for c in range(29, 9, -1)]
    queries = section(out, "Noisiest queries")
    assert len(queries) == 20 and queries[0][:3] == ["58", "—", "—"]


# --------------------------------------------------------------------------- bad input


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2 and out == ""
    assert err.startswith("wvtui: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err


def test_missing_run_directory(tmp_path, capsys):
    assert_one_line_error(*call(capsys, tmp_path / "nope"), "does not exist")


def test_a_file_is_not_a_run_directory(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert_one_line_error(*call(capsys, tmp_path / "f"), "is not a directory")


def test_a_directory_that_is_no_run(tmp_path, capsys):
    assert_one_line_error(*call(capsys, tmp_path), "is not a run directory")


def test_a_run_written_before_the_one_epoch_numbering_counts_its_files_from_zero(run, index, capsys):
    """Older runs named the first epoch's file epoch_000.npz: --epoch 1 still means the first epoch."""
    for old, new in (("epoch_001.npz", "epoch_000.npz"), ("epoch_003.npz", "epoch_002.npz")):
        (run / "samples" / old).rename(run / "samples" / new)
    code, out, err = call(capsys, run, "--epoch", "1", "--csv", "-")
    assert (code, err) == (0, "")
    assert [int(r[0]) for r in read_csv(out)[1:]] == list(range(1, len(index.train), 2))
    code, out, err = call(capsys, run)
    assert code == 0 and out.startswith(f"wvtui noise {run}: epoch 3 (samples/epoch_002.npz)")


def test_a_run_without_records(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert_one_line_error(*call(capsys, tmp_path), "holds no per-sample records", "--no-samples")


def test_an_epoch_without_a_file_names_the_epochs_that_have_one(run, capsys):
    assert_one_line_error(*call(capsys, run, "--epoch", "2"), "--epoch 2", "epochs with records: 1, 3")


@pytest.mark.parametrize("epoch", ["0", "-1", "two"])
def test_epoch_numbers_start_at_one(run, capsys, epoch):
    assert_one_line_error(*call(capsys, run, "--epoch", epoch), "--epoch")


def test_an_unreadable_record_file(run, capsys):
    (run / "samples" / "epoch_004.npz").write_bytes(b"not a zip file at all")
    assert_one_line_error(*call(capsys, run), "cannot read", "epoch_004.npz")


def test_a_truncated_record_file(run, capsys):
    whole = (run / "samples" / "epoch_003.npz").read_bytes()
    (run / "samples" / "epoch_003.npz").write_bytes(whole[: len(whole) // 2])
    assert_one_line_error(*call(capsys, run, "--epoch", "3"), "cannot read", "epoch_003.npz")


def test_a_record_file_without_the_arrays(run, capsys):
    write_npz(str(run / "samples" / "epoch_005.npz"), index=np.arange(3), loss=np.ones(3))
    assert_one_line_error(*call(capsys, run), "not a per-sample record file", "label, query, pred, clean_prob")


def test_a_record_file_whose_arrays_differ_in_length(run, capsys):
    write_npz(str(run / "samples" / "epoch_005.npz"), index=np.arange(3), loss=np.ones(2), pred=np.ones(3),
              clean_prob=np.ones(3), label=np.ones(3), query=np.ones(3))
    assert_one_line_error(*call(capsys, run), "is damaged")


def test_a_csv_that_cannot_be_written(run, tmp_path, capsys):
    assert_one_line_error(*call(capsys, run, "--csv", tmp_path / "no" / "such" / "dir.csv"), "--csv")


def test_wvtui_noise_is_a_subcommand(run):
    """The console script's own entry: no torch import, no signal handlers, the same exit codes."""
    ok = subprocess.run([sys.executable, "-m", "wvtui", "noise", str(run), "--csv", "-"], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stderr == ""
    assert ok.stdout.splitlines()[0] == ",".join(CSV_HEADER) and len(ok.stdout.splitlines()) == 65
    bad = subprocess.run([sys.executable, "-m", "wvtui", "noise", str(run), "--epoch", "7"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("wvtui: error: --epoch 7") and bad.stderr.count("\n") == 1


# --------------------------------------------------------------------------- --no-samples, the bench


def test_no_samples_turns_the_record_off(synthetic_root, tmp_path):
    from wvtui.options import build_parser, resolve_config

    def resolved(*flags: str):
        args = build_parser().parse_args(["--root", synthetic_root, "--out", str(tmp_path / "o"),
                                          "--num-classes", "4", "--model", "resnet18", *flags])
        return resolve_config(args)

    assert resolved().record_samples is True
    assert resolved("--no-samples").record_samples is False


def test_bench_noise_help(capsys):
    from bench import noise

    with pytest.raises(SystemExit) as exit_:
        noise.parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--epoch-samples" in out and "record_samples" in out


@pytest.mark.slow
def test_bench_noise_measures_both_settings_side_by_side(tmp_path):
    """As the README runs it, from any directory, at a size a test can afford."""
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "noise.py"), "--device", "cpu", "--model", "resnet18",
                        "--image-size", "32", "--short-side", "36", "--batch-size", "4", "--steps", "2",
                        "--warmup", "1", "--report-every", "1", "--workers", "0", "--threads", "1",
                        "--repeats", "1", "--epoch-samples", "500"],
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split("|")[1].strip() for line in r.stdout.splitlines() if line.startswith("| ")]
    assert rows[1:3] == ["recording on (default)", "--no-samples"]  # after the header row
    assert "images/s with / without recording: " in r.stdout
    assert "### Once per epoch, an epoch of 500 samples" in r.stdout
    assert "target < 1%: " in r.stdout
