"""The ILSVRC2012 val set of the trained synsets, in both layouts, from real JPEGs on disk."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import WebVisionDataset, make_loader, val_transform
from core.imagenet_val import load_imagenet_val
from core.webvision import DatasetError, SampleList, WebVisionIndex

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]  # labels 0..3
OTHER = "n09999999"  # a synset that is not trained


def write_image(path: str, label: int, fmt: str = "JPEG") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (40, 32), (60 * label, 10, 200 - 40 * label)).save(path, fmt)


def write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def labels_by_name(samples: SampleList) -> dict[str, int]:
    return {os.path.basename(samples.path(i)): int(samples.labels[i]) for i in range(len(samples))}


def flat_images(directory: str, truth: dict[int, str]) -> None:
    for number, wnid in truth.items():
        label = WNIDS.index(wnid) if wnid in WNIDS else 0
        write_image(os.path.join(directory, f"ILSVRC2012_val_{number:08d}.JPEG"), label)


# Images 1..6: two untrained, one per trained synset except the last, an extra for label 1.
TRUTH = {1: WNIDS[1], 2: OTHER, 3: WNIDS[0], 4: WNIDS[2], 5: OTHER, 6: WNIDS[1]}
EXPECTED = {"ILSVRC2012_val_00000001.JPEG": 1, "ILSVRC2012_val_00000003.JPEG": 0,
            "ILSVRC2012_val_00000004.JPEG": 2, "ILSVRC2012_val_00000006.JPEG": 1}


def test_class_folders_feed_the_val_dataset_with_the_index_labels(synthetic_root, tmp_path):
    wnids = WebVisionIndex.load(synthetic_root, num_classes=4).wnids
    d = str(tmp_path / "imagenet" / "val")
    for label in range(3):  # the 4th trained synset has no folder
        write_image(os.path.join(d, wnids[label], f"ILSVRC2012_val_{label:08d}.JPEG"), label)
        write_image(os.path.join(d, wnids[label], f"extra_{label}.png"), label, fmt="PNG")
    write_image(os.path.join(d, OTHER, "ILSVRC2012_val_00000099.JPEG"), 0)  # not trained: ignored
    write(os.path.join(d, wnids[0], "notes.txt"), "not an image")

    val = load_imagenet_val(d, wnids)

    assert isinstance(val.samples, SampleList) and val.layout == "class folders"
    assert len(val) == 6 and val.samples.labels.dtype == np.int64
    assert sorted(val.samples.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    for i in range(len(val)):
        path = val.samples.path(i)
        assert os.path.isfile(path) and os.path.basename(os.path.dirname(path)) == wnids[val.samples.labels[i]]
    assert val.missing == (wnids[3],)
    assert len(val.warnings) == 1 and wnids[3] in val.warnings[0] and "\n" not in val.warnings[0]

    # The same dataset class, transform and loader (a real worker process) as WebVision val.
    dataset = WebVisionDataset(val.samples, val_transform(32), seed=0, train=False)
    loader = make_loader(dataset, range(len(dataset)), batch_size=3, workers=1, pin_memory=False,
                         persistent_workers=False, drop_last=False)
    images, labels, bad = zip(*[(x, y, b) for x, y, b in loader])
    images, labels = torch.cat(images), torch.cat(labels)
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == val.samples.labels.tolist()
    assert torch.cat(bad).eq(-1).all()


def test_flat_layout_with_kaggle_solution_three_folders_up(tmp_path):
    top = tmp_path / "imagenet-object-localization-challenge"
    d = str(top / "ILSVRC" / "Data" / "CLS-LOC" / "val")
    flat_images(d, TRUTH)
    rows = "".join(f"ILSVRC2012_val_{n:08d},{w} 12 30 200 180 {w} 1 2 3 4\n" for n, w in TRUTH.items())
    csv = write(str(top / "LOC_val_solution.csv"), "ImageId,PredictionString\n" + rows)

    val = load_imagenet_val(d, WNIDS)

    assert labels_by_name(val.samples) == EXPECTED
    assert val.layout == f"flat, {csv}"
    assert val.missing == (WNIDS[3],)


def test_flat_layout_with_devkit_ground_truth_in_devkit_order(tmp_path):
    d = str(tmp_path / "ILSVRC2012_img_val")
    flat_images(d, TRUTH)
    data = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    # The devkit numbers synsets in its own order, not synsets.txt's: ID 1 is WNIDS[2], ...
    devkit_order = [WNIDS[2], OTHER, WNIDS[0], WNIDS[3], WNIDS[1]]
    write(str(data / "map_clsloc.txt"),
          "".join(f"{w} {i} name_{i}\n" for i, w in enumerate(devkit_order, 1)))
    ids = {w: i for i, w in enumerate(devkit_order, 1)}
    write(str(data / "ILSVRC2012_validation_ground_truth.txt"),
          "".join(f"{ids[TRUTH[n]]}\n" for n in sorted(TRUTH)))

    val = load_imagenet_val(d, WNIDS)

    assert labels_by_name(val.samples) == EXPECTED
    assert val.layout.endswith("ILSVRC2012_validation_ground_truth.txt")


def test_devkit_synset_order_from_meta_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    d = str(tmp_path / "val")
    flat_images(d, TRUTH)
    devkit_order = [WNIDS[3], WNIDS[1], OTHER, WNIDS[2], WNIDS[0]]
    synsets = np.array([(i, w) for i, w in enumerate(devkit_order, 1)],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    scipy_io.savemat(str(tmp_path / "val" / "meta.mat"), {"synsets": synsets})
    ids = {w: i for i, w in enumerate(devkit_order, 1)}
    write(os.path.join(d, "ILSVRC2012_validation_ground_truth.txt"),
          "".join(f"{ids[TRUTH[n]]}\n" for n in sorted(TRUTH)))

    assert labels_by_name(load_imagenet_val(d, WNIDS).samples) == EXPECTED


def _empty(d):
    os.makedirs(d)


def _untrained_folders(d):
    write_image(os.path.join(d, OTHER, "a.JPEG"), 0)


def _empty_trained_folders(d):
    os.makedirs(os.path.join(d, WNIDS[0]))
    write(os.path.join(d, WNIDS[1], "readme.txt"), "no images")


def _flat_without_truth(d):
    flat_images(d, TRUTH)


def _kaggle(header, rows):
    def make(d):
        flat_images(d, TRUTH)
        write(os.path.join(d, "LOC_val_solution.csv"), header + rows)
    return make


def _devkit(truth_text, order_text):
    def make(d):
        flat_images(d, TRUTH)
        write(os.path.join(d, "ILSVRC2012_validation_ground_truth.txt"), truth_text)
        if order_text is not None:
            write(os.path.join(d, "map_clsloc.txt"), order_text)
    return make


def _only_untrained_flat(d):
    flat_images(d, {2: OTHER})
    write(os.path.join(d, "LOC_val_solution.csv"), f"ImageId,PredictionString\nILSVRC2012_val_00000002,{OTHER} 1 2 3 4\n")


GOOD_ROWS = "".join(f"ILSVRC2012_val_{n:08d},{w} 1 2 3 4\n" for n, w in TRUTH.items())
ORDER = "".join(f"{w} {i} x\n" for i, w in enumerate(WNIDS + [OTHER], 1))


@pytest.mark.parametrize("make, says", [
    (None, "does not exist"),
    (_empty, "no ImageNet val images"),
    (_untrained_folders, "none of the 4 trained synsets"),
    (_empty_trained_folders, "none of the 4 trained synsets"),
    (_flat_without_truth, "no LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt"),
    (_kaggle("image,label\n", GOOD_ROWS), "LOC_val_solution.csv:1: expected the header"),
    (_kaggle("ImageId,PredictionString\n", GOOD_ROWS + "ILSVRC2012_val_00000007,tench\n"),
     "LOC_val_solution.csv:8: malformed line"),
    (_kaggle("ImageId,PredictionString\n", GOOD_ROWS.split("\n", 1)[1]), "no label for"),
    (_devkit("2\n1\n3\n1\n5\n2\n", None), "no map_clsloc.txt or synsets_devkit.txt or meta.mat"),
    (_devkit("2\n1\nthree\n", ORDER), "ground_truth.txt:3: malformed line"),
    (_devkit("2\n5\n1\n3\n5\n77\n", ORDER), "ground_truth.txt:6: ILSVRC2012_ID 77 is not in"),
    (_only_untrained_flat, "none of the 4 trained synsets"),
], ids=["missing", "empty", "untrained-folders", "empty-folders", "flat-no-truth", "csv-header",
        "csv-line", "csv-incomplete", "devkit-no-order", "devkit-line", "devkit-id", "flat-untrained"])
def test_bad_layouts_are_one_line_naming_the_path(tmp_path, make, says):
    d = str(tmp_path / "val")
    if make is not None:
        make(d)
    with pytest.raises(DatasetError) as e:
        load_imagenet_val(d, WNIDS)
    message = str(e.value)
    assert says in message
    assert "\n" not in message and str(tmp_path) in message


def test_a_file_is_not_a_directory(tmp_path):
    path = write(str(tmp_path / "val.tar"), "x")
    with pytest.raises(DatasetError, match="is not a directory"):
        load_imagenet_val(path, WNIDS)
