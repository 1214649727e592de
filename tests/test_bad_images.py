"""Image files as the real dataset has them: odd formats, 16-bit PNGs, decompression bombs,
truncated, empty and missing files. Training replaces what it cannot read; evaluation never
does (a zero image, label -1). Every refusal names the file."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import ResumableSampler, WebVisionDataset, make_loader, train_transform, val_transform
from core.images import UnreadableImage, decode_rgb
from core.synthetic import read_manifest
from core.webvision import SampleList, WebVisionIndex

SIZE = 40


@pytest.fixture(scope="module")
def bad_index(bad_synthetic_root) -> WebVisionIndex:
    return WebVisionIndex.load(bad_synthetic_root, num_classes=4)


def samples_of(directory, names: list[str], labels: list[int] | None = None) -> SampleList:
    """A SampleList of files in `directory` (as the index would build it)."""
    rel = [n.encode() for n in names]
    offsets = np.zeros(len(rel) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rel], out=offsets[1:])
    labels = labels if labels is not None else list(range(len(names)))
    return SampleList(np.frombuffer(b"".join(rel), np.uint8), offsets, np.array(labels, np.int64),
                      np.full(len(names), -1, np.int32), str(directory))


# ----------------------------------------------------------------------------- decoding


def test_grayscale_cmyk_and_png_named_jpg_decode_to_rgb(bad_synthetic_root, bad_index):
    odd = read_manifest(bad_synthetic_root)["odd"]
    assert {o["kind"] for o in odd} == {"png_named_jpg", "grayscale", "cmyk"}
    ds = WebVisionDataset(bad_index.train, train_transform(SIZE), seed=0)
    for o in odd:
        path = bad_index.train.path(o["index"])
        assert path.endswith(o["path"])
        img = decode_rgb(path)
        with Image.open(path) as im:
            ref = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        assert img.shape == ref.shape and img.shape[0] == 3
        assert (img.float() - ref.float()).abs().mean() < 3
        x, label, bad = ds[(o["index"], 0)]
        assert bad == -1 and x.shape == (3, SIZE, SIZE)


def test_a_format_torchvision_refuses_falls_back_to_pillow(synthetic_root, tmp_path):
    path = str(tmp_path / "bitmap.jpg")
    with Image.open(os.path.join(synthetic_root, "val_images_256", "val000001.jpg")) as im:
        im.save(path, format="BMP")
    with pytest.raises(RuntimeError):
        from torchvision.io import decode_image, read_file

        decode_image(read_file(path))
    img = decode_rgb(path)
    with Image.open(path) as im:
        assert torch.equal(img, torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))


@pytest.mark.parametrize("kind", ["truncated", "zero_bytes", "missing"])
def test_unreadable_files_raise_from_decode(bad_synthetic_root, bad_index, kind):
    entry = next(b for b in read_manifest(bad_synthetic_root)["bad"] if b["kind"] == kind)
    with pytest.raises((OSError, ValueError, RuntimeError)):
        decode_rgb(bad_index.train.path(entry["index"]))


# ----------------------------------------------------------------------------- bad files


def test_bad_files_are_replaced_by_the_next_readable_sample_and_reported(bad_synthetic_root, bad_index):
    bad_train = [b for b in read_manifest(bad_synthetic_root)["bad"] if b["split"] == "train"]
    ds = WebVisionDataset(bad_index.train, train_transform(SIZE), seed=0)
    for b in bad_train:
        i = b["index"]
        img, label, bad = ds[(i, 1)]
        assert bad == i and bad_index.train.relpath(bad) == b["path"]
        assert img.dtype == torch.uint8 and img.shape == (3, SIZE, SIZE)
        assert label == int(bad_index.train.labels[i + 1])  # the replacement's own label
        assert torch.equal(ds[(i, 1)][0], img)  # the replacement is deterministic


def test_a_full_pass_with_workers_reports_each_bad_file_once(bad_synthetic_root, bad_index):
    manifest = read_manifest(bad_synthetic_root)
    ds = WebVisionDataset(bad_index.train, train_transform(SIZE), seed=0)
    loader = make_loader(ds, ResumableSampler(len(ds), seed=0), 8, 2, pin_memory=True, drop_last=False)
    seen, labels = [], []
    for images, label, bad in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, SIZE, SIZE)
        seen += bad[bad >= 0].tolist()
        labels += label.tolist()
    expected = sorted(b["index"] for b in manifest["bad"] if b["split"] == "train")
    assert sorted(seen) == expected and len(labels) == len(ds)



def test_a_tree_of_only_unreadable_files_fails_clearly(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"")
    rel = b"".join(f"{i}.jpg".encode() for i in range(3))
    samples = SampleList(
        np.frombuffer(rel, np.uint8), np.array([0, 5, 10, 15]), np.zeros(3, np.int64),
        np.full(3, -1, np.int32), str(tmp_path),
    )
    ds = WebVisionDataset(samples, val_transform(SIZE), train=True)
    with pytest.raises(RuntimeError, match=r"3 consecutive unreadable images from .*0\.jpg on"):
        ds[0]


# ----------------------------------------------------------------------------- real-world files


def test_a_16_bit_png_decodes_to_the_same_picture_in_uint8(tmp_path):
    depth = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    path = str(tmp_path / "deep.png")
    Image.fromarray(depth).save(path)  # mode I;16: a real 16-bit grayscale PNG
    with Image.open(path) as im:
        assert im.mode == "I;16" and im.format == "PNG"
    img = decode_rgb(path)
    assert img.dtype == torch.uint8 and img.shape == (3, 48, 64)
    expected = torch.from_numpy((depth >> 8).astype(np.uint8))
    assert all(torch.equal(img[c], expected) for c in range(3))
    ds = WebVisionDataset(samples_of(tmp_path, ["deep.png"]), train_transform(SIZE))
    x, label, bad = ds[(0, 0)]
    assert x.dtype == torch.uint8 and x.shape == (3, SIZE, SIZE) and (label, bad) == (0, -1)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> str:
    """A real, valid 49 KB PNG whose 20000 x 20000 pixels would decode to 1.2 GB of RGB.

    Written chunk by chunk (signature, IHDR, one IDAT of zlib-compressed black 1-bit rows,
    IEND): the same file Pillow writes for Image.new("1", (20000, 20000)), in a third of the time.
    """
    width = height = 20000

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = bytes(1 + width // 8)  # filter byte 0, then 8 pixels a byte
    packer = zlib.compressobj(6)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path = str(tmp_path_factory.mktemp("bomb") / "bomb.png")
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    assert os.path.getsize(path) < 100_000
    return path


def test_a_decompression_bomb_is_refused_from_its_header(bomb, tmp_path):
    with pytest.raises(UnreadableImage) as e:
        decode_rgb(bomb)
    msg = str(e.value)
    assert msg.startswith(bomb + ": 20000x20000 = 400,000,000 pixels, over the limit of 89,478,485")
    assert "bomb" in msg
    # In a training set it is one more bad image, replaced by the next one.
    os.link(bomb, tmp_path / "a.png")
    Image.new("RGB", (50, 60), (200, 10, 10)).save(tmp_path / "b.png")
    ds = WebVisionDataset(samples_of(tmp_path, ["a.png", "b.png"]), train_transform(SIZE))
    img, label, bad = ds[(0, 0)]
    assert (label, bad) == (1, 0) and img.shape == (3, SIZE, SIZE)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])  # BMP: Pillow reads the header
def test_the_pixel_limit_is_pillows_and_its_message_gives_the_size(tmp_path, monkeypatch, fmt):
    path = str(tmp_path / f"wide.{fmt.lower()}")
    Image.new("RGB", (300, 200), (0, 90, 200)).save(path, format=fmt, progressive=True)
    assert decode_rgb(path).shape == (3, 200, 300)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    with pytest.raises(UnreadableImage, match=r"wide\.\w+: 300x200 = 60,000 pixels, over the limit of 50,000"):
        decode_rgb(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # Pillow refuses this one itself
    with pytest.raises(UnreadableImage, match=r"wide\.\w+: .*60,000 pixels, over the limit of 20,000"):
        decode_rgb(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # no limit, as Pillow allows
    assert decode_rgb(path).shape == (3, 200, 300)


@pytest.mark.parametrize("kind", ["truncated", "zero_bytes", "missing", "text", "bomb"])
def test_every_unreadable_file_error_names_the_file(bad_synthetic_root, bad_index, bomb, tmp_path, kind):
    if kind == "text":
        path = str(tmp_path / "notes.jpg")
        open(path, "w").write("not an image at all\n")
    elif kind == "bomb":
        path = bomb
    else:
        entry = next(b for b in read_manifest(bad_synthetic_root)["bad"] if b["kind"] == kind)
        path = bad_index.train.path(entry["index"])
    with pytest.raises(UnreadableImage) as e:
        decode_rgb(path)
    assert path in str(e.value) and "\n" not in str(e.value)


def test_unreadable_val_images_are_never_replaced(bad_synthetic_root, bad_index):
    """Evaluation scores each readable image once: a bad one is a zero image with label -1."""
    val_bad = [b["index"] for b in read_manifest(bad_synthetic_root)["bad"] if b["split"] == "val"]
    ds = WebVisionDataset(bad_index.val, val_transform(SIZE), train=False)
    for i in val_bad:
        img, label, bad = ds[i]
        assert (label, bad) == (-1, i)
        assert img.dtype == torch.uint8 and img.shape == (3, SIZE, SIZE) and not img.any()
    loader = make_loader(ds, ResumableSampler(len(ds), shuffle=False), 5, 2, pin_memory=False,
                         drop_last=False, persistent_workers=False)
    labels, bads = [], []
    for images, label, bad in loader:
        labels += label.tolist()
        bads += bad[bad >= 0].tolist()
    assert bads == val_bad
    expected = bad_index.val.labels.tolist()
    for i in val_bad:
        expected[i] = -1
    assert labels == expected  # every other image is scored once, under its own label
