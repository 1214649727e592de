"""Conformance with the files WebVision 1.0 ships, written here by hand in their official line
shapes (../shared/DESIGN.md section 3), independent of core.synthetic: a tree shaped like the
real release loads, names its queries, and trains with and without --flickr. Then what real
files carry beside the shapes: a BOM, whitespace-only lines, plain and huge query numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import core.listfile as listfile
from core.webvision import DatasetError, WebVisionIndex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The first synsets of the real synsets.txt, and real queries of those classes.
SYNSETS = ["n01440764 tench, Tinca tinca", "n01443537 goldfish, Carassius auratus"]
QUERIES = {1: ("tench", 1), 2: ("tinca tinca", 1), 3: ("goldfish", 2), 4: ("carassius auratus", 2)}
GOOGLE_PER_QUERY, FLICKR_PER_QUERY, VAL_PER_CLASS = 4, 2, 2


def jpeg(path: str, label: int, rng: np.random.Generator) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = rng.integers(0, 60, (40, 52, 3)) + np.array([180, 20, 20]) * (label == 0)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def official_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("official") / "webvision")
    info = os.path.join(root, "info")
    os.makedirs(info)
    rng = np.random.default_rng(0)
    files: dict[str, list[str]] = {}
    # 1000 lines, line i+1 = label i, "<wnid> <names, comma separated>".
    files["synsets.txt"] = SYNSETS + [f"n{9000000 + i:08d} filler class {i}, other" for i in range(998)]
    for source in ("google", "flickr"):
        # "<query number> <query text>": plain numbers, as released.
        files[f"queries_{source}.txt"] = [f"{n} {text}" for n, (text, _) in QUERIES.items()]
        lists, metas = [], []
        per_query = GOOGLE_PER_QUERY if source == "google" else FLICKR_PER_QUERY
        for n, (_, synset) in QUERIES.items():
            for k in range(per_query):
                rel = f"{source}/q{n:04d}/{k:06d}.jpg"  # the folder is "q%04d" % number
                jpeg(os.path.join(root, rel), synset - 1, rng)
                lists.append(f"{rel} {synset - 1}")
                metas.append(f"{source}/q{n:04d}.json {k + 1}")
        files[f"train_filelist_{source}.txt"] = lists
        files[f"train_meta_list_{source}.txt"] = metas
    files["queries_synsets_map.txt"] = [f"{n} {synset}" for n, (_, synset) in QUERIES.items()]
    files["val_filelist.txt"] = []
    for i in range(2 * VAL_PER_CLASS):
        name = f"val{i + 1:06d}.jpg"
        jpeg(os.path.join(root, "val_images_256", name), i % 2, rng)
        files["val_filelist.txt"].append(f"{name} {i % 2}")
    files["test_filelist.txt"] = [f"test{i + 1:06d}.jpg" for i in range(3)]  # no labels
    for name in files["test_filelist.txt"]:
        jpeg(os.path.join(root, "test_images_256", name), 0, rng)
    for name, lines in files.items():
        with open(os.path.join(info, name), "w") as f:
            f.write("".join(line + "\n" for line in lines))
    return root


def test_the_official_files_load_and_the_stats_name_the_query_texts(official_root):
    google = WebVisionIndex.load(official_root, num_classes=2)
    assert len(google.train) == 4 * GOOGLE_PER_QUERY and len(google.val) == 2 * VAL_PER_CLASS
    assert google.wnids == ["n01440764", "n01443537"]
    assert google.class_names == ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    assert [(q.query_id, q.text, q.label, q.images) for q in google.query_stats()] == [
        ("q0001", "tench", 0, 4), ("q0002", "tinca tinca", 0, 4),
        ("q0003", "goldfish", 1, 4), ("q0004", "carassius auratus", 1, 4),
    ]
    assert [c.queries for c in google.class_stats()] == [2, 2]

    both = WebVisionIndex.load(official_root, num_classes=2, use_flickr=True)
    assert len(both.train) == 4 * (GOOGLE_PER_QUERY + FLICKR_PER_QUERY)
    flickr = [q for q in both.query_stats() if q.source == "flickr"]
    assert [(q.query_id, q.text, q.label, q.images) for q in flickr] == [
        ("q0001", "tench", 0, 2), ("q0002", "tinca tinca", 0, 2),
        ("q0003", "goldfish", 1, 2), ("q0004", "carassius auratus", 1, 2),
    ]
    assert both.train.relpath(len(both.train) - 1) == "flickr/q0004/000001.jpg"


@pytest.mark.slow
@pytest.mark.parametrize("flickr", [False, True], ids=["google", "google+flickr"])
def test_the_cli_trains_a_step_on_the_official_files(official_root, tmp_path, flickr):
    out = str(tmp_path / "run")
    args = [sys.executable, "-m", "wvtui", "--root", official_root, "--out", out, "--headless",
            "--epochs", "1", "--steps-per-epoch", "1", "--val-batches", "1", "--model", "resnet18",
            "--image-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu",
            "--num-classes", "2"] + (["--flickr"] if flickr else [])
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    started = next(rec for rec in records if rec["event"] == "started")
    sources = ["google", "flickr"] if flickr else ["google"]
    per_query = GOOGLE_PER_QUERY + (FLICKR_PER_QUERY if flickr else 0)
    assert started["summary"]["sources"] == sources
    assert started["summary"]["train_images"] == 4 * per_query
    assert [rec["step"] for rec in records if rec["event"] == "train"] == [1]
    assert records[-1]["event"] == "finished"


# ----------------------------------------------------------------------------- line-level tolerance


def write(root: str, name: str, text: str) -> None:
    with open(os.path.join(root, "info", name), "w", newline="") as f:
        f.write(text)


def _tiny_root(tmp_path, queries: str, train: str, qmap: str | None = None) -> str:
    root = str(tmp_path / "tiny")
    os.makedirs(os.path.join(root, "info"))
    write(root, "synsets.txt", "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    write(root, "queries_google.txt", queries)
    if qmap is not None:
        write(root, "queries_synsets_map.txt", qmap)
    write(root, "train_filelist_google.txt", train)
    write(root, "val_filelist.txt", "val000001.jpg 0\nval000002.jpg 1\n")
    return root


def test_plain_query_numbers_name_zero_padded_folders(tmp_path):
    root = _tiny_root(
        tmp_path,
        "1 tench\n2 tinca tinca\n12345 goldfish\n",
        "google/q0001/000000.jpg 0\ngoogle/q0002/000000.jpg 0\ngoogle/q12345/000000.jpg 1\n"
        "google/q12345/000001.jpg 1\n",
        qmap="1 1\n2 1\n12345 2\n",
    )
    index = WebVisionIndex.load(root, num_classes=2)
    assert index.train.queries.tolist() == [0, 1, 2, 2]
    stats = [(q.query_id, q.text, q.label, q.images) for q in index.query_stats()]
    assert stats == [("q0001", "tench", 0, 1), ("q0002", "tinca tinca", 0, 1),
                     ("q12345", "goldfish", 1, 2)]
    # "q%04d" % 1 is the folder of query 1; "q1" is not.
    write(root, "train_filelist_google.txt", "google/q1/000000.jpg 0\ngoogle/q12345/0.jpg 1\n")
    with pytest.raises(DatasetError, match=r":1: query folder 'q1' has no entry in .*queries_google"):
        WebVisionIndex.load(root, num_classes=2)


@pytest.mark.parametrize("chunk", [16, 1 << 20])
def test_bom_and_whitespace_only_lines_in_every_info_file(synthetic_root, tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(listfile, "CHUNK_BYTES", chunk)
    expected = WebVisionIndex.load(synthetic_root, num_classes=4, use_flickr=True)
    root = str(tmp_path / "root")
    shutil.copytree(os.path.join(synthetic_root, "info"), os.path.join(root, "info"))
    for name in os.listdir(os.path.join(root, "info")):
        with open(os.path.join(synthetic_root, "info", name)) as f:
            lines = f.read().splitlines(keepends=True)
        lines[1:1] = ["   \n", "\t\r\n", " \t \n"]
        write(root, name, "\ufeff" + "".join(lines) + "  \n\n")
    index = WebVisionIndex.load(root, num_classes=4, use_flickr=True)
    for split in ("train", "val"):
        a, b = getattr(index, split), getattr(expected, split)
        assert [a.relpath(i) for i in range(len(a))] == [b.relpath(i) for i in range(len(b))]
        assert a.labels.tolist() == b.labels.tolist() and a.queries.tolist() == b.queries.tolist()
    assert index.wnids == expected.wnids and index.class_names == expected.class_names
    assert index.query_stats() == expected.query_stats()


def test_huge_query_numbers_cost_memory_by_count_not_by_value(tmp_path):
    import tracemalloc

    huge, beyond_int64 = 99999999999, 123456789012345678901234
    root = _tiny_root(
        tmp_path,
        f"1 tench\n{huge} x\nq{huge + 1} y\n{beyond_int64} z\n",
        f"google/q0001/a.jpg 0\ngoogle/q{huge}/a.jpg 1\ngoogle/q{huge + 1}/b.jpg 1\n"
        f"google/q{beyond_int64}/c.jpg 1\n",
        qmap=f"1 1\n{huge} 2\n",
    )
    tracemalloc.start()
    try:
        index = WebVisionIndex.load(root, num_classes=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB traced for a 4-query tree"
    assert [(q.query_id, q.text, q.images) for q in index.query_stats()] == [
        ("q0001", "tench", 1), (f"q{huge}", "x", 1), (f"q{huge + 1}", "y", 1),
        (f"q{beyond_int64}", "z", 1)]
