"""The ILSVRC2012 val images of the trained synsets: the second evaluation set of the papers.

    wnids = WebVisionIndex.load(root, num_classes=50).wnids   # label i = line i+1 of synsets.txt
    val = load_imagenet_val("/data/imagenet/val", wnids)
    WebVisionDataset(val.samples, val_transform(299), train=False)   # same as index.val

mini-WebVision results are reported on two sets: WebVision val and the ILSVRC2012 val images of
the same 50 synsets (DivideMix, ELR+, Co-teaching, D2L). Two layouts of DIR are accepted:

- class folders, as the noisy-label code bases keep them: `DIR/<wnid>/*.JPEG` (also .jpg, .jpeg,
  .png, any case). Folders of other synsets are ignored; trained synsets without a folder or
  without images are reported in `warnings` (an error only when none has images).
- the flat release: `DIR/ILSVRC2012_val_00000001.JPEG` ... with one ground-truth file, looked up
  in DIR and up to four folders above it (Kaggle keeps the csv four levels above
  `ILSVRC/Data/CLS-LOC/val`), each also under `ILSVRC2012_devkit_t12/data/`:
  * `LOC_val_solution.csv` (Kaggle): header `ImageId,PredictionString`, the prediction string
    starting with the wnid; or
  * `ILSVRC2012_validation_ground_truth.txt` (devkit): line n = the ILSVRC2012_ID (1-based) of
    image n, plus the devkit's synset order from a text file `map_clsloc.txt` or
    `synsets_devkit.txt` next to it (lines `n02119789 1 kit_fox`; a line without a number
    means ID = line number), or from the devkit's `meta.mat` when scipy is installed.

The result is a `SampleList`, the type of `WebVisionIndex.val` (one path buffer, numpy labels;
queries are -1), so the val dataset, transform and loader apply unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.infofiles import read_text_lines
from core.webvision import DatasetError, SampleList

__all__ = ["ImageNetVal", "load_imagenet_val", "IMAGE_EXTENSIONS", "LAYOUTS"]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
LAYOUTS = (
    "expected DIR/<wnid>/*.JPEG, or DIR/ILSVRC2012_val_*.JPEG with LOC_val_solution.csv or "
    "ILSVRC2012_validation_ground_truth.txt + map_clsloc.txt in DIR or a folder above it"
)
KAGGLE_SOLUTION = "LOC_val_solution.csv"
DEVKIT_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_ORDER_FILES = ("map_clsloc.txt", "synsets_devkit.txt")
DEVKIT_META = "meta.mat"
_WNID = re.compile(r"n\d{8}\Z")
_FLAT = re.compile(r"ILSVRC2012_val_(\d{8})\.(jpeg|jpg|png)\Z", re.IGNORECASE)
_IMAGE_ID = re.compile(r"ILSVRC2012_val_(\d{8})\Z")
_PARENTS = 4


@dataclass(frozen=True)
class ImageNetVal:
    samples: SampleList  # label = position of the image's wnid among the trained wnids
    layout: str  # "class folders" or "flat, <ground-truth file>"
    missing: tuple[str, ...]  # trained wnids without images
    warnings: tuple[str, ...]  # one line each, for the run's warning events

    def __len__(self) -> int:
        return len(self.samples)


def load_imagenet_val(directory: str | os.PathLike, wnids: Sequence[str]) -> ImageNetVal:
    """The images of `wnids` (label i = wnids[i]) under `directory`; DatasetError (one line,
    naming the path) for a layout that yields none of them."""
    directory = os.path.abspath(os.fspath(directory))
    wnids = list(wnids)
    if not wnids:
        raise DatasetError("no trained synsets to look for in the ImageNet val set")
    if not os.path.exists(directory):
        raise DatasetError(f"ImageNet val dir {directory} does not exist; {LAYOUTS}")
    if not os.path.isdir(directory):
        raise DatasetError(f"ImageNet val dir {directory} is not a directory; {LAYOUTS}")
    try:
        entries = list(os.scandir(directory))
    except OSError as e:
        raise DatasetError(f"cannot list {directory}: {e.strerror}") from None
    folders = {e.name for e in entries if _WNID.match(e.name) and e.is_dir()}
    if folders:
        names, labels, layout = _class_folders(directory, folders, wnids)
    else:
        flat = {}
        for e in entries:
            m = _FLAT.match(e.name)
            if m and e.is_file():
                flat[int(m.group(1))] = e.name
        if not flat:
            raise DatasetError(f"no ImageNet val images in {directory}; {LAYOUTS}")
        names, labels, layout = _flat(directory, flat, wnids)

    counts = np.bincount(labels, minlength=len(wnids)) if len(labels) else np.zeros(len(wnids))
    missing = tuple(w for w, n in zip(wnids, counts) if n == 0)
    if len(missing) == len(wnids):
        raise DatasetError(
            f"none of the {len(wnids)} trained synsets ({_first(wnids)}) has images in "
            f"{directory} ({layout})"
        )
    warnings = ()
    if missing:
        warnings = (
            f"ImageNet val {directory}: no images for {len(missing)} of the {len(wnids)} "
            f"trained synsets ({_first(missing)}); they are not scored",
        )
    return ImageNetVal(_sample_list(names, labels, directory), layout, missing, warnings)


def _first(wnids: Sequence[str], n: int = 3) -> str:
    more = f", ... {len(wnids) - n} more" if len(wnids) > n else ""
    return ", ".join(wnids[:n]) + more


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _class_folders(directory: str, folders: set[str], wnids: list[str]):
    names: list[str] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        if wnid not in folders:
            continue
        sub = os.path.join(directory, wnid)
        try:
            files = sorted(e.name for e in os.scandir(sub) if _is_image(e.name) and e.is_file())
        except OSError as e:
            raise DatasetError(f"cannot list {sub}: {e.strerror}") from None
        names += [f"{wnid}/{f}" for f in files]
        labels += [label] * len(files)
    return names, np.asarray(labels, dtype=np.int64), "class folders"


def _flat(directory: str, flat: dict[int, str], wnids: list[str]):
    truth_file, truth = _ground_truth(directory)
    by_wnid = {w: i for i, w in enumerate(wnids)}
    names: list[str] = []
    labels: list[int] = []
    for number in sorted(flat):
        wnid = truth.get(number)
        if wnid is None:
            raise DatasetError(f"{truth_file}: no label for {os.path.join(directory, flat[number])}")
        label = by_wnid.get(wnid)
        if label is not None:
            names.append(flat[number])
            labels.append(label)
    return names, np.asarray(labels, dtype=np.int64), f"flat, {truth_file}"


def _candidates(directory: str):
    d = directory
    for _ in range(_PARENTS + 1):
        yield d
        yield os.path.join(d, "ILSVRC2012_devkit_t12", "data")
        parent = os.path.dirname(d)
        if parent == d:
            return
        d = parent


def _ground_truth(directory: str) -> tuple[str, dict[int, str]]:
    """(file, {image number: wnid}) from the first ground-truth file found near `directory`."""
    for d in _candidates(directory):
        csv_path = os.path.join(d, KAGGLE_SOLUTION)
        if os.path.isfile(csv_path):
            return csv_path, _parse_kaggle(csv_path)
        txt_path = os.path.join(d, DEVKIT_TRUTH)
        if os.path.isfile(txt_path):
            order_file, order = _devkit_order(d, txt_path)
            return txt_path, _parse_devkit(txt_path, order, order_file)
    raise DatasetError(
        f"{directory} holds flat ILSVRC2012_val_*.JPEG images but no {KAGGLE_SOLUTION} or "
        f"{DEVKIT_TRUTH} was found in it or up to {_PARENTS} folders above; put one there, or "
        f"sort the images into DIR/<wnid>/ folders"
    )


def _image_number(image_id: str) -> int | None:
    m = _IMAGE_ID.match(image_id)
    return int(m.group(1)) if m else None


def _parse_kaggle(path: str) -> dict[int, str]:
    lines = read_text_lines(path)
    if not lines or lines[0].replace(" ", "").lower() != "imageid,predictionstring":
        raise DatasetError(f"{path}:1: expected the header 'ImageId,PredictionString'")
    truth: dict[int, str] = {}
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        image_id, _, prediction = line.partition(",")
        number = _image_number(image_id.strip())
        wnid = prediction.split(None, 1)[0] if prediction.strip() else ""
        if number is None or not _WNID.match(wnid):
            raise DatasetError(
                f"{path}:{lineno}: malformed line {line[:60]!r}; expected "
                f"'ILSVRC2012_val_NNNNNNNN,<wnid> <box> ...'"
            )
        truth[number] = wnid
    if not truth:
        raise DatasetError(f"{path}: no images listed")
    return truth


def _devkit_order(d: str, truth_path: str) -> tuple[str, dict[int, str]]:
    """(file, {ILSVRC2012_ID: wnid}) of the devkit's synset order next to `truth_path`."""
    for name in DEVKIT_ORDER_FILES:
        path = os.path.join(d, name)
        if os.path.isfile(path):
            return path, _parse_order(path)
    meta = os.path.join(d, DEVKIT_META)
    if os.path.isfile(meta):
        return meta, _parse_meta(meta)
    raise DatasetError(
        f"{truth_path} numbers synsets in the devkit's order, but no {' or '.join(DEVKIT_ORDER_FILES)} "
        f"or {DEVKIT_META} is next to it; add map_clsloc.txt ('n02119789 1 kit_fox' lines)"
    )


def _parse_order(path: str) -> dict[int, str]:
    order: dict[int, str] = {}
    for lineno, line in enumerate(read_text_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        wnid = parts[0]
        number = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else lineno
        if not _WNID.match(wnid):
            raise DatasetError(f"{path}:{lineno}: malformed line {line[:60]!r}; expected "
                               f"'<wnid> <ILSVRC2012_ID> <name>'")
        order[number] = wnid
    if not order:
        raise DatasetError(f"{path}: no synsets")
    return order


def _parse_meta(path: str) -> dict[int, str]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetError(
            f"reading {path} needs scipy (pip install scipy); or put map_clsloc.txt "
            f"('n02119789 1 kit_fox' lines) next to it"
        ) from None
    try:
        synsets = loadmat(path, squeeze_me=True)["synsets"]
        ids = np.atleast_1d(synsets["ILSVRC2012_ID"])
        names = np.atleast_1d(synsets["WNID"])
        return {int(i): str(w) for i, w in zip(ids, names)}
    except Exception as e:  # scipy raises many types for a damaged or foreign .mat file
        raise DatasetError(f"{path}: not the devkit's meta.mat ({type(e).__name__}: {e})".splitlines()[0]) from None


def _parse_devkit(path: str, order: dict[int, str], order_file: str) -> dict[int, str]:
    truth: dict[int, str] = {}
    for lineno, line in enumerate(read_text_lines(path), 1):
        text = line.strip()
        if not text:
            continue
        if not text.isdigit():
            raise DatasetError(f"{path}:{lineno}: malformed line {text[:60]!r}; expected an ILSVRC2012_ID")
        wnid = order.get(int(text))
        if wnid is None:
            raise DatasetError(f"{path}:{lineno}: ILSVRC2012_ID {text} is not in {order_file}")
        truth[lineno] = wnid
    if not truth:
        raise DatasetError(f"{path}: no images listed")
    return truth


def _sample_list(names: list[str], labels: np.ndarray, base: str) -> SampleList:
    encoded = [os.fsencode(n) for n in names]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    paths = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    queries = np.full(len(encoded), -1, dtype=np.int32)
    return SampleList(paths, offsets, labels, queries, base)
