"""Results where researchers read them, from real runs of the `wvtui` command: both evaluation
sets in every eval record, summary.csv, OUT/evals/ and TensorBoard files (read with
TensorBoard's own reader) that continue across a resume without duplicate steps; a bad
--imagenet-val is one line and exit 2."""

from __future__ import annotations

import csv
import os

import pytest

from core.synthetic import make_webvision
from wvtui_process import QUICK, records, run_wvtui

TINY = ["--num-classes", "3", "--steps-per-epoch", "3", *QUICK]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return make_webvision(str(tmp_path_factory.mktemp("results") / "wv"), classes=3, queries_per_class=1,
                          images_per_query=12, val_per_class=2, size=40, seed=0, imagenet_per_class=3)


def tb_scalars(tb_dir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_run_and_its_resume_leave_one_curve_one_row_per_epoch_and_both_sets_scored(root, tmp_path):
    out = str(tmp_path / "run")
    first = run_wvtui(tmp_path, "--root", root, "--out", out, "--epochs", "1", "--headless",
                      "--imagenet-val", os.path.join(root, "imagenet_val"), *TINY)
    assert first.returncode == 0, first.stderr
    second = run_wvtui(tmp_path, "--root", root, "--out", out, "--epochs", "2", "--headless", "--resume", "auto",
                       "--imagenet-val", os.path.join(root, "imagenet_val"), *TINY)
    assert second.returncode == 0, second.stderr
    assert "ImageNet Acc@1" in second.stdout

    evals = records(out, "eval")
    assert [e["step"] for e in evals] == [3, 6]
    for e in evals:
        assert e["imagenet_images"] == 9 and e["images"] == 6
        assert 0 <= e["imagenet_acc1"] <= 100 and e["imagenet_acc5"] >= e["imagenet_acc1"]

    with open(os.path.join(out, "summary.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr",
                             "imagenet_top1", "imagenet_top5"]
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [float(r["imagenet_top1"]) for r in rows] == pytest.approx([e["imagenet_acc1"] for e in evals])
    assert sorted(os.listdir(os.path.join(out, "evals"))) == ["epoch_001_step_0000003.json",
                                                              "epoch_002_step_0000006.json"]

    tb = tb_scalars(os.path.join(out, "tb"))
    for tag in ("train/loss", "train/lr", "train/img_per_s", "train/data_wait", "val/loss", "val/acc1",
                "val/acc5", "imagenet/acc1", "imagenet/acc5"):
        steps = [s for s, _ in tb[tag]]
        assert steps == sorted(set(steps)), (tag, steps)  # one point a step, across both processes
    assert [s for s, _ in tb["val/acc1"]] == [3, 6]
    assert [v for _, v in tb["imagenet/acc1"]] == pytest.approx([e["imagenet_acc1"] for e in evals])
    assert max(s for s, _ in tb["train/loss"]) == 6


@pytest.mark.slow  # starts wvtui
def test_an_imagenet_val_dir_without_the_trained_synsets_is_one_line_and_exit_2(root, tmp_path):
    empty = tmp_path / "imagenet"
    (empty / "n99999999").mkdir(parents=True)
    proc = run_wvtui(tmp_path, "--root", root, "--out", str(tmp_path / "run"), "--epochs", "1", "--headless",
                     "--imagenet-val", str(empty), *TINY)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wvtui: error:") and str(empty) in lines[0], proc.stderr
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
