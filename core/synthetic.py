"""A small WebVision-format dataset whose images carry a class signal a CNN learns in minutes.

    python -m core.synthetic /tmp/wv --classes 5 --queries-per-class 2 --images-per-query 20

writes every official info file in its official line shapes (../shared/DESIGN.md section 3):
ROOT/info/synsets.txt (all 1000 lines; only the first `classes` labels have images),
queries_google.txt and queries_flickr.txt (`1 synthetic class 0 view 0`: plain query numbers),
queries_synsets_map.txt (`1 1`), train_filelist_{google,flickr}.txt, train_meta_list_{google,
flickr}.txt, val_filelist.txt and test_filelist.txt (no labels); JPEGs under ROOT/google/qNNNN/,
ROOT/flickr/qNNNN/, ROOT/val_images_256/ and ROOT/test_images_256/; and ROOT/synthetic.json
with the true counts and the planted files, for tests. Each class has its own hue and stripe
frequency spread over the whole image, under noise and a randomly placed blob, so any
RandomResizedCrop and flip still shows it. The same arguments and seed give the same bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys

import numpy as np
from PIL import Image

TOTAL_SYNSETS = 1000


def _class_look(label: int) -> tuple[np.ndarray, float]:
    """A colour and a stripe frequency (cycles per short side) unique to the class."""
    hue = (label * 0.618034) % 1.0  # golden-ratio hues stay apart for any class count
    h6 = hue * 6
    k = np.array([5.0, 3.0, 1.0])
    rgb = 1 - np.clip(np.minimum((k + h6) % 6, 4 - (k + h6) % 6), 0, 1)
    colour = 40 + 180 * rgb
    freq = 2.0 + (label % 4) * 2.5
    return colour, freq


def _image(label: int, size: int, rng: np.random.Generator) -> Image.Image:
    colour, freq = _class_look(label)
    colour = colour * rng.uniform(0.8, 1.15)  # lighting varies within a class
    aspect = rng.uniform(1.0, 1.5)
    long = int(round(size * aspect))
    h, w = (size, long) if rng.random() < 0.7 else (long, size)  # mostly landscape, like photos
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi)
    # Vertical stripes stay stripes of the same frequency under a horizontal flip.
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * x + phase)
    img = colour[None, None, :] * (0.55 + 0.45 * stripes[..., None])
    cy, cx = rng.uniform(0.2, 0.8) * h / size, rng.uniform(0.2, 0.8) * w / size
    r = rng.uniform(0.1, 0.3)
    blob = ((y - cy) ** 2 + (x - cx) ** 2) < r * r
    img[blob] = 255 - img[blob]
    img += rng.normal(0, 18, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _jpeg(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def make_webvision(
    out_dir: str,
    classes: int = 5,
    queries_per_class: int = 2,
    images_per_query: int = 20,
    val_per_class: int = 10,
    size: int = 256,
    seed: int = 0,
    bad_files: bool = False,
    total_synsets: int = TOTAL_SYNSETS,
    flickr_per_query: int = 2,
    test_images: int = 4,
    imagenet_per_class: int = 0,
    label_noise: float = 0.0,
) -> str:
    """Write the tree under out_dir (created; must not hold a dataset already) and return it.

    bad_files plants, in the train list: a truncated JPEG, a zero-byte file and a listed file
    that is missing (all unreadable), plus a PNG named .jpg, a grayscale and a CMYK JPEG (odd
    but readable); and a zero-byte file in the val list. synthetic.json names them.

    label_noise P flips round(P x images) Google training labels to another class (uniformly),
    in the filelist only: each image keeps the look of its true class, as a web image keeps its
    content whatever its query says. The flips are planted in a third of the queries (spread
    over the classes; more queries when those cannot hold them all), so that a per-query noise
    ranking has a truth to find. ROOT/label_noise.json names them (outside info/).
    """
    if not 1 <= classes <= total_synsets:
        raise ValueError(f"classes must be in 1..{total_synsets}, got {classes}")
    counts = (("queries_per_class", queries_per_class), ("images_per_query", images_per_query))
    for name, v in counts:
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    for name, v in (("val_per_class", val_per_class), ("flickr_per_query", flickr_per_query),
                    ("test_images", test_images), ("imagenet_per_class", imagenet_per_class)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    if not (0.0 <= label_noise < 1.0):
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise}")
    if label_noise > 0 and classes < 2:
        raise ValueError("label_noise needs at least 2 classes")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    if bad_files and classes * queries_per_class * images_per_query < 6:
        raise ValueError("bad_files needs at least 6 train images")
    out_dir = os.fspath(out_dir)
    info = os.path.join(out_dir, "info")
    if os.path.exists(os.path.join(info, "synsets.txt")):
        raise FileExistsError(f"{out_dir} already holds a dataset")
    os.makedirs(info, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "val_images_256"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "test_images_256"), exist_ok=True)
    rng = np.random.default_rng(seed)

    with open(os.path.join(info, "synsets.txt"), "w") as f:
        for i in range(total_synsets):
            f.write(f"n{i:08d} synthetic class {i}, pattern {i}\n")

    def write_image(rel: str, label: int) -> None:
        os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
        with open(os.path.join(out_dir, rel), "wb") as f:
            f.write(_jpeg(_image(label, size, rng)))

    def write_query_images(source: str, label: int, number: int, count: int) -> None:
        # The official tree: query number n's images live in the folder "q%04d" % n.
        rels = [f"{source}/q{number:04d}/{k:06d}.jpg" for k in range(count)]
        for rel in rels:
            write_image(rel, label)
        lines[f"train_filelist_{source}.txt"] += [f"{rel} {label}\n" for rel in rels]
        # Never read by wvtui (training needs no meta data): one line per image, naming the
        # meta file of its query and its place there.
        lines[f"train_meta_list_{source}.txt"] += [
            f"{source}/q{number:04d}.json {k + 1}\n" for k in range(count)
        ]

    lines: dict[str, list[str]] = {
        name: []
        for name in ("queries_google.txt", "queries_flickr.txt", "queries_synsets_map.txt",
                     "train_filelist_google.txt", "train_filelist_flickr.txt",
                     "train_meta_list_google.txt", "train_meta_list_flickr.txt",
                     "val_filelist.txt", "test_filelist.txt")
    }
    train_lines = lines["train_filelist_google.txt"]
    per_query, per_class_train = {}, [0] * classes
    for label in range(classes):
        for j in range(queries_per_class):
            number = label * queries_per_class + j + 1
            for source in ("google", "flickr"):
                lines[f"queries_{source}.txt"].append(
                    f"{number} synthetic class {label} view {j}\n"
                )
            lines["queries_synsets_map.txt"].append(f"{number} {label + 1}\n")
            write_query_images("google", label, number, images_per_query)
            per_query[f"q{number:04d}"] = images_per_query
            per_class_train[label] += images_per_query

    val_lines = lines["val_filelist.txt"]
    for label in range(classes):
        for _ in range(val_per_class):
            rel = f"val{len(val_lines) + 1:06d}.jpg"
            write_image(os.path.join("val_images_256", rel), label)
            val_lines.append(f"{rel} {label}\n")

    # Drawn after the Google and val images, so adding these kept those bytes as they were.
    for label in range(classes):
        for j in range(queries_per_class):
            write_query_images("flickr", label, label * queries_per_class + j + 1, flickr_per_query)
    for k in range(test_images):
        rel = f"test{k + 1:06d}.jpg"
        write_image(os.path.join("test_images_256", rel), k % classes)
        lines["test_filelist.txt"].append(f"{rel}\n")
    # Drawn last, so the other images keep their bytes whether or not this set is written.
    for label in range(classes if imagenet_per_class else 0):
        for k in range(imagenet_per_class):
            number = label * imagenet_per_class + k + 1
            write_image(os.path.join("imagenet_val", f"n{label:08d}", f"ILSVRC2012_val_{number:08d}.JPEG"), label)

    bad, odd = [], []
    if bad_files:
        # Spread over the list so replacements (the next index) are readable images.
        n = len(train_lines)
        picks = [int(p) for p in np.linspace(0, n - 1, 6).round()]
        picks = sorted(set(picks))
        while len(picks) < 6:
            picks.append(next(i for i in range(n) if i not in picks))
        rels = [train_lines[i].split()[0] for i in picks]
        full = [os.path.join(out_dir, r) for r in rels]
        data = open(full[0], "rb").read()
        open(full[0], "wb").write(data[: max(len(data) // 3, 64)])
        open(full[1], "wb").write(b"")
        os.remove(full[2])
        bad += [{"split": "train", "index": picks[i], "path": rels[i], "kind": kind}
                for i, kind in enumerate(("truncated", "zero_bytes", "missing"))]
        img = Image.open(full[3]).convert("RGB")
        img.save(full[3], format="PNG")
        img = Image.open(full[4]).convert("L")
        img.save(full[4], format="JPEG", quality=90)
        img = Image.open(full[5]).convert("CMYK")
        img.save(full[5], format="JPEG", quality=90)
        odd += [{"split": "train", "index": picks[3 + i], "path": rels[3 + i], "kind": kind}
                for i, kind in enumerate(("png_named_jpg", "grayscale", "cmyk"))]
        if val_lines:
            rel = val_lines[-1].split()[0]
            open(os.path.join(out_dir, "val_images_256", rel), "wb").write(b"")
            bad.append(
                {"split": "val", "index": len(val_lines) - 1, "path": rel, "kind": "zero_bytes"}
            )

    if label_noise > 0:
        noise = _flip_labels(train_lines, classes, queries_per_class, images_per_query, label_noise, seed)
        with open(os.path.join(out_dir, "label_noise.json"), "w") as f:
            json.dump(noise, f, indent=1)

    for name, text in lines.items():
        with open(os.path.join(info, name), "w") as f:
            f.writelines(text)

    manifest = {
        "classes": classes,
        "queries_per_class": queries_per_class,
        "images_per_query": images_per_query,
        "val_per_class": val_per_class,
        "size": size,
        "seed": seed,
        "train_per_class": per_class_train,
        "val_per_class_counts": [val_per_class] * classes,
        "train_per_query": per_query,
        "flickr_per_query": flickr_per_query,
        "test_images": test_images,
        "imagenet_per_class": imagenet_per_class,
        "label_noise": label_noise,
        "bad": bad,
        "odd": odd,
    }
    with open(os.path.join(out_dir, "synthetic.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return out_dir


def _flip_labels(train_lines: list[str], classes: int, queries_per_class: int, images_per_query: int,
                 fraction: float, seed: int) -> dict:
    """Flip labels of `train_lines` (Google, in query order) in place; what label_noise.json holds."""
    # Its own generator: the image bytes are the same with or without label noise.
    rng = np.random.default_rng([seed, 13])
    queries = classes * queries_per_class
    flips = int(round(fraction * len(train_lines)))
    # Round robin over the classes (in a random order), a random unchosen query of each, so no
    # class loses its clean majority before every class has a noisy query.
    per_class = [list(rng.permutation(queries_per_class)) for _ in range(classes)]
    round_robin: list[int] = []
    while any(per_class):
        for label in rng.permutation(classes).tolist():
            if per_class[label]:
                round_robin.append(label * queries_per_class + int(per_class[label].pop()))
    target = max(1, round(queries / 3))
    picked: list[int] = []
    for q in round_robin:
        if len(picked) >= target and len(picked) * images_per_query >= flips:
            break
        picked.append(q)
    candidates = np.concatenate([np.arange(q * images_per_query, (q + 1) * images_per_query) for q in picked])
    chosen = np.sort(rng.choice(candidates, size=min(flips, len(candidates)), replace=False))
    flipped = []
    for i in chosen.tolist():
        rel, true = train_lines[i].split()
        label = (int(true) + int(rng.integers(1, classes))) % classes  # any class but the true one
        train_lines[i] = f"{rel} {label}\n"
        flipped.append({"index": i, "path": rel, "true": int(true), "label": label})
    return {"fraction": fraction, "flipped_images": len(flipped),
            "noisy_queries": sorted(f"q{q + 1:04d}" for q in picked), "flipped": flipped}


def read_manifest(root: str) -> dict:
    """The true counts and planted files that make_webvision wrote to ROOT/synthetic.json."""
    with open(os.path.join(root, "synthetic.json")) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--queries-per-class", type=int, default=2)
    p.add_argument("--images-per-query", type=int, default=20)
    p.add_argument("--val-per-class", type=int, default=10)
    p.add_argument(
        "--size", type=int, default=256, help="short side in pixels (256 like resized WebVision)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flickr-per-query", type=int, default=2, help="Flickr images per query")
    p.add_argument("--test-images", type=int, default=4, help="images of the unlabelled test set")
    p.add_argument("--imagenet-per-class", type=int, default=0,
                   help="also write ROOT/imagenet_val/<wnid>/*.JPEG (ILSVRC2012 val class-folder layout)")
    p.add_argument("--label-noise", type=float, default=0.0, metavar="P",
                   help="flip a fraction P of the Google training labels, planted in a third of the queries; "
                        "ROOT/label_noise.json names them")
    p.add_argument(
        "--bad-files", action="store_true", help="plant unreadable and odd files for tests"
    )
    a = p.parse_args(argv)
    try:
        root = make_webvision(
            a.out_dir, a.classes, a.queries_per_class, a.images_per_query, a.val_per_class,
            a.size, a.seed, a.bad_files, flickr_per_query=a.flickr_per_query,
            test_images=a.test_images, imagenet_per_class=a.imagenet_per_class, label_noise=a.label_noise,
        )
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
