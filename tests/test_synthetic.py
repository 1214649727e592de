"""The synthetic WebVision tree: complete layout, real JPEGs, a learnable signal, determinism."""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core.synthetic import make_webvision, read_manifest
from core.webvision import WebVisionIndex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_digest(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


OFFICIAL_INFO_FILES = {
    "synsets.txt", "queries_google.txt", "queries_flickr.txt", "queries_synsets_map.txt",
    "train_filelist_google.txt", "train_filelist_flickr.txt", "train_meta_list_google.txt",
    "train_meta_list_flickr.txt", "val_filelist.txt", "test_filelist.txt",
}


def test_layout_and_info_files_have_the_official_shapes(synthetic_root):
    m = read_manifest(synthetic_root)
    info = os.path.join(synthetic_root, "info")
    assert set(os.listdir(info)) == OFFICIAL_INFO_FILES
    read = lambda name: open(os.path.join(info, name)).read().splitlines()  # noqa: E731
    synsets = read("synsets.txt")
    assert len(synsets) == 1000 and synsets[7].split()[0] == "n00000007"
    for name in ("queries_google.txt", "queries_flickr.txt"):
        queries = read(name)
        # The official files give plain query numbers ("1 tench"), not folder names.
        assert [q.split()[0] for q in queries] == [str(i) for i in range(1, 9)]
        assert queries[0] == "1 synthetic class 0 view 0"  # texts hold spaces, like the real ones
    qmap = read("queries_synsets_map.txt")
    assert qmap[:3] == ["1 1", "2 1", "3 2"] and qmap[-1] == "8 4"
    train = read("train_filelist_google.txt")
    assert len(train) == sum(m["train_per_class"]) == 4 * 2 * 8
    assert train[9] == "google/q0002/000001.jpg 0" and train[-1] == "google/q0008/000007.jpg 3"
    flickr = read("train_filelist_flickr.txt")
    assert len(flickr) == 8 * m["flickr_per_query"] and flickr[-1] == "flickr/q0008/000001.jpg 3"
    for source, listed in (("google", train), ("flickr", flickr)):
        meta = read(f"train_meta_list_{source}.txt")
        assert len(meta) == len(listed) and meta[1] == f"{source}/q0001.json 2"
    val = read("val_filelist.txt")
    assert val[0] == "val000001.jpg 0" and val[-1] == "val000016.jpg 3"
    test = read("test_filelist.txt")
    assert test == [f"test{k:06d}.jpg" for k in range(1, m["test_images"] + 1)]  # no labels
    for line in train + flickr:
        assert os.path.isfile(os.path.join(synthetic_root, line.split()[0]))
    for line in val:
        assert os.path.isfile(os.path.join(synthetic_root, "val_images_256", line.split()[0]))
    for line in test:
        assert os.path.isfile(os.path.join(synthetic_root, "test_images_256", line))
    assert {int(line.split()[1]) for line in train} == {0, 1, 2, 3}  # only the first 4 labels


def test_flickr_images_join_the_index_when_asked(synthetic_root):
    m = read_manifest(synthetic_root)
    google = WebVisionIndex.load(synthetic_root, num_classes=4)
    both = WebVisionIndex.load(synthetic_root, num_classes=4, use_flickr=True)
    assert len(both.train) == len(google.train) + 8 * m["flickr_per_query"]
    flickr = [q for q in both.query_stats() if q.source == "flickr"]
    assert [(q.query_id, q.text, q.label) for q in flickr[:2]] == [
        ("q0001", "synthetic class 0 view 0", 0), ("q0002", "synthetic class 0 view 1", 0)]


def test_images_are_jpegs_with_the_requested_short_side_and_varied_aspect(synthetic_root):
    shapes = set()
    for dirpath, _, files in os.walk(os.path.join(synthetic_root, "google")):
        for name in files:
            with Image.open(os.path.join(dirpath, name)) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert min(im.size) == 48
                shapes.add(im.size)
    assert len(shapes) > 5 and any(w > h for w, h in shapes) and any(h > w for w, h in shapes)


def test_default_size_is_the_resized_webvision_short_side(tmp_path):
    assert inspect.signature(make_webvision).parameters["size"].default == 256
    root = make_webvision(str(tmp_path / "r"), classes=1, queries_per_class=1, images_per_query=1, val_per_class=1)
    with Image.open(os.path.join(root, "google", "q0001", "000000.jpg")) as im:
        assert min(im.size) == 256


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    kw = dict(classes=2, queries_per_class=1, images_per_query=3, val_per_class=2, size=32)
    a = tree_digest(make_webvision(str(tmp_path / "a"), seed=5, **kw))
    b = tree_digest(make_webvision(str(tmp_path / "b"), seed=5, **kw))
    c = tree_digest(make_webvision(str(tmp_path / "c"), seed=6, **kw))
    assert a == b
    assert a.keys() == c.keys()
    assert a["google/q0001/000000.jpg"] != c["google/q0001/000000.jpg"]


def test_class_signal_separates_the_val_images(synthetic_root):
    """A nearest-mean-colour rule trained on the train images names the val classes."""
    index = WebVisionIndex.load(synthetic_root, num_classes=4)

    def colour(path):
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)

    train = np.stack([colour(index.train.path(i)) for i in range(len(index.train))])
    centres = np.stack([train[index.train.labels == c].mean(0) for c in range(4)])
    val = np.stack([colour(index.val.path(i)) for i in range(len(index.val))])
    predicted = np.linalg.norm(val[:, None] - centres[None], axis=2).argmin(1)
    assert (predicted == index.val.labels).mean() >= 0.9


def test_planted_files(bad_synthetic_root):
    m = read_manifest(bad_synthetic_root)
    kinds = {b["kind"]: b for b in m["bad"] if b["split"] == "train"}
    assert set(kinds) == {"truncated", "zero_bytes", "missing"}
    path = lambda entry: os.path.join(bad_synthetic_root, entry["path"])  # noqa: E731
    data = open(path(kinds["truncated"]), "rb").read()
    assert data[:2] == b"\xff\xd8" and not data.endswith(b"\xff\xd9")
    assert os.path.getsize(path(kinds["zero_bytes"])) == 0
    assert not os.path.exists(path(kinds["missing"]))
    listed = open(os.path.join(bad_synthetic_root, "info", "train_filelist_google.txt")).read()
    assert all(b["path"] in listed for b in m["bad"] + m["odd"] if b["split"] == "train")
    odd = {o["kind"]: o for o in m["odd"]}
    assert open(path(odd["png_named_jpg"]), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert path(odd["png_named_jpg"]).endswith(".jpg")
    with Image.open(path(odd["grayscale"])) as im:
        assert (im.format, im.mode) == ("JPEG", "L")
    with Image.open(path(odd["cmyk"])) as im:
        assert (im.format, im.mode) == ("JPEG", "CMYK")
    val_bad = [b for b in m["bad"] if b["split"] == "val"]
    assert len(val_bad) == 1
    assert os.path.getsize(os.path.join(bad_synthetic_root, "val_images_256", val_bad[0]["path"])) == 0
    # The counts the index sees are those of the clean tree: planted files stay listed.
    assert len(WebVisionIndex.load(bad_synthetic_root, num_classes=4).train) == sum(m["train_per_class"])


def test_command_line(tmp_path):
    out = str(tmp_path / "cli")
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "core.synthetic", *args], cwd=REPO, capture_output=True, text=True
    )
    r = run(out, "--classes", "3", "--queries-per-class", "2", "--images-per-query", "2",
            "--val-per-class", "1", "--size", "32", "--seed", "1", "--bad-files")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == out
    m = read_manifest(out)
    assert (m["classes"], m["size"], m["seed"]) == (3, 32, 1) and len(m["bad"]) == 4
    assert len(WebVisionIndex.load(out, num_classes=3).train) == 12
    again = run(out)
    assert again.returncode == 2 and "already holds a dataset" in again.stderr
    bad = run(str(tmp_path / "x"), "--classes", "0")
    assert bad.returncode == 2 and "classes must be in 1..1000" in bad.stderr
    assert "Traceback" not in bad.stderr + again.stderr


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(classes=1001), "classes must be in 1..1000"),
        (dict(images_per_query=0), "images_per_query must be >= 1"),
        (dict(val_per_class=-1), "val_per_class must be >= 0"),
        (dict(flickr_per_query=-1), "flickr_per_query must be >= 0"),
        (dict(size=4), "size must be >= 8"),
        (dict(classes=1, queries_per_class=1, images_per_query=2, bad_files=True), "at least 6"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_webvision(str(tmp_path / "r"), **kwargs)


def test_an_imagenet_val_set_in_the_class_folder_layout_loads_and_keeps_the_other_bytes(tmp_path):
    from core.imagenet_val import load_imagenet_val

    plain = make_webvision(str(tmp_path / "plain"), classes=3, images_per_query=2, val_per_class=2, size=32)
    both = make_webvision(str(tmp_path / "both"), classes=3, images_per_query=2, val_per_class=2, size=32,
                          imagenet_per_class=3)
    assert not os.path.exists(os.path.join(plain, "imagenet_val"))
    index = WebVisionIndex.load(both, num_classes=3)
    inv = load_imagenet_val(os.path.join(both, "imagenet_val"), index.wnids)
    assert len(inv.samples) == 9 and inv.missing == ()
    assert np.bincount(inv.samples.labels).tolist() == [3, 3, 3]
    for rel in ("google/q0001/000000.jpg", "val_images_256/val000006.jpg"):
        a, b = (open(os.path.join(r, rel), "rb").read() for r in (plain, both))
        assert a == b, rel
