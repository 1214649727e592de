"""The result sinks: TensorBoard files (read back with TensorBoard's own reader), summary.csv,
per-evaluation details, and the confusion counting they are built from."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch

from core.confusions import EvalDetailsWriter, add_confusions, per_class_acc1, top_confusions
from core.events import EpochEnd, EvalResult, RunFinished, RunStarted, StepStats
from core.summary_csv import COLUMNS, IMAGENET_COLUMNS, SummaryCsv
from core.tb_writer import TensorBoardWriter

SPE = 10  # steps per epoch
CONFIG = {"model": "resnet18", "image_size": 32, "batch_size": 4, "lr": 0.1, "epochs": 3,
          "milestones": [2], "use_flickr": False, "root": "/data"}


def started(start_step=0, start_epoch=0):
    return RunStarted(config=CONFIG, summary={}, device="cpu", model="resnet18", num_params=1,
                      steps_per_epoch=SPE, total_steps=3 * SPE, start_epoch=start_epoch,
                      start_step=start_step, out_dir="out", world_size=2)


def step(s, loss, lr=0.1):
    return StepStats(epoch=(s - 1) // SPE + 1, step=s, epoch_step=(s - 1) % SPE + 1, steps_per_epoch=SPE,
                     total_steps=3 * SPE, loss=loss, last_loss=loss, lr=lr, img_per_s=100.0 + s,
                     data_wait=s / 100, eta_epoch_s=1.0, eta_run_s=1.0, elapsed_s=s, bad_images=0)


def evaluation(s, acc1, imagenet=None, manual=False, epoch=None):
    extra = {}
    if imagenet is not None:
        extra = dict(imagenet_loss=imagenet / 10, imagenet_acc1=imagenet, imagenet_acc5=imagenet + 1,
                     imagenet_images=8)
    return EvalResult(epoch=(s - 1) // SPE + 1 if epoch is None else epoch, step=s, loss=acc1 / 10,
                      acc1=acc1, acc5=acc1 + 1, best_acc1=acc1, best_acc5=acc1 + 1, manual=manual,
                      is_best=True, seconds=0.1, images=8, **extra)


def epoch_end(e):
    """The end of epoch e (1-based)."""
    return EpochEnd(epoch=e, step=e * SPE, seconds=1.0, img_per_s=100.0)


# ------------------------------------------------------------------------------ TensorBoard


def scalars(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_curves_continue_across_a_resume_without_duplicates(tmp_path):
    out = str(tmp_path)
    first = TensorBoardWriter(out)
    first(started())
    for s in range(2, 21, 2):
        first(step(s, loss=float(s)))
        if s % SPE == 0:
            first(evaluation(s, acc1=float(s), imagenet=float(s) / 2))
            first(epoch_end(s // SPE))
    first.close()  # the process dies here: what it flushed is on disk

    _, seg1 = scalars(os.path.join(out, "tb"))
    assert seg1["train/loss"] == [(s, float(s)) for s in range(2, 21, 2)]
    assert seg1["train/lr"] == [(s, pytest.approx(0.1)) for s in range(2, 21, 2)]
    assert seg1["train/img_per_s"] == [(s, 100.0 + s) for s in range(2, 21, 2)]
    assert seg1["train/data_wait"] == [(s, pytest.approx(s / 100)) for s in range(2, 21, 2)]
    assert seg1["val/acc1"] == [(10, 10.0), (20, 20.0)]
    assert seg1["val/acc5"] == [(10, 11.0), (20, 21.0)]
    assert seg1["val/loss"] == [(10, 1.0), (20, 2.0)]
    assert seg1["imagenet/acc1"] == [(10, 5.0), (20, 10.0)]
    assert seg1["imagenet/acc5"] == [(10, 6.0), (20, 11.0)]

    second = TensorBoardWriter(out)  # resumed from the checkpoint at step 12
    second(started(start_step=12, start_epoch=1))
    for s in range(13, 31):
        second(step(s, loss=1000.0 + s))
        if s % SPE == 0:
            # the last evaluation has no ImageNet set: no imagenet point at step 30
            second(evaluation(s, acc1=500.0 + s, imagenet=300.0 + s if s < 30 else None))
            second(epoch_end(s // SPE))
    second(RunFinished(reason="completed", epoch=3, step=30, best_acc1=530.0, best_acc5=531.0,
                       seconds=5.0))

    acc, tags = scalars(os.path.join(out, "tb"))
    assert tags["train/loss"] == ([(s, float(s)) for s in range(2, 13, 2)]
                                  + [(s, 1000.0 + s) for s in range(13, 31)])
    assert tags["val/acc1"] == [(10, 10.0), (20, 520.0), (30, 530.0)]
    assert tags["imagenet/acc1"] == [(10, 5.0), (20, 320.0)]
    assert tags["imagenet/acc5"] == [(10, 6.0), (20, 321.0)]
    assert tags["hparam/best_acc1"] == [(30, 530.0)]
    assert tags["hparam/imagenet_acc1"] == [(30, 320.0)]

    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(0.1)
    assert hparams["model"].string_value == "resnet18"
    assert hparams["milestones"].string_value == "2"
    assert hparams["use_flickr"].string_value == "false"
    assert hparams["world_size"].number_value == 2
    assert "root" not in hparams


def test_an_unwritable_tb_dir_is_one_warning_and_the_run_goes_on(tmp_path):
    (tmp_path / "tb").write_text("a file where the directory should be")
    warnings = []
    sink = TensorBoardWriter(str(tmp_path), warn=warnings.append)
    sink(started())
    sink(step(1, 1.0))
    sink(evaluation(10, 1.0))
    assert sink.failed and len(warnings) == 1
    assert warnings[0].startswith(f"cannot write TensorBoard files in {tmp_path / 'tb'}: ")


# ------------------------------------------------------------------------------ summary.csv


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_summary_csv_one_row_per_epoch_replaced_not_duplicated_on_resume(tmp_path):
    out = str(tmp_path)
    first = SummaryCsv(out)
    first(started())
    first(step(5, 2.0, lr=0.1))
    first(step(10, 1.0, lr=0.1))
    first(evaluation(10, 40.0, imagenet=30.0))
    first(epoch_end(1))
    first(step(15, 0.8))
    first(step(20, 0.4, lr=0.01))
    first(evaluation(20, 50.0, imagenet=35.0))
    first(epoch_end(2))
    first(step(25, 0.3))  # dies in epoch 2

    header, rows = read_csv(os.path.join(out, "summary.csv"))
    assert header == list(COLUMNS + IMAGENET_COLUMNS)
    assert [r["epoch"] for r in rows] == ["1", "2"]  # counted from 1, unlike timm's file
    assert float(rows[0]["train_loss"]) == pytest.approx(1.5)
    assert float(rows[1]["train_loss"]) == pytest.approx(0.6)
    assert (float(rows[1]["eval_loss"]), float(rows[1]["eval_top1"]), float(rows[1]["eval_top5"])) \
        == (5.0, 50.0, 51.0)
    assert float(rows[1]["lr"]) == 0.01
    assert (float(rows[0]["imagenet_top1"]), float(rows[0]["imagenet_top5"])) == (30.0, 31.0)

    # Resumed from a checkpoint in the middle of epoch 2 (step 13): the row of epoch 2 is redone.
    second = SummaryCsv(out)
    second(started(start_step=13, start_epoch=1))
    second(step(15, 0.5))  # a window of 2 steps (14, 15)
    second(evaluation(17, 99.0, manual=True))  # a manual evaluation does not win over the epoch's
    second(step(20, 0.3))  # 5 steps
    second(evaluation(20, 60.0, imagenet=45.0))
    second(evaluation(20, 98.0, manual=True, epoch=2))
    second(epoch_end(2))

    header, rows = read_csv(os.path.join(out, "summary.csv"))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[0]["train_loss"]) == pytest.approx(1.5) and float(rows[0]["eval_top1"]) == 40.0
    assert float(rows[1]["train_loss"]) == pytest.approx((0.5 * 2 + 0.3 * 5) / 7)
    assert float(rows[1]["eval_top1"]) == 60.0 and float(rows[1]["imagenet_top1"]) == 45.0
    assert not os.path.exists(os.path.join(out, "summary.csv.tmp"))


def test_summary_csv_of_an_older_run_counted_from_zero_is_renumbered_on_resume(tmp_path):
    (tmp_path / "summary.csv").write_text("epoch,train_loss,eval_loss,eval_top1,eval_top5,lr\n"
                                          "0,1.5,4.0,40.0,41.0,0.1\n1,0.6,5.0,50.0,51.0,0.01\n")
    sink = SummaryCsv(str(tmp_path))
    sink(started(start_step=20, start_epoch=2))  # two epochs done
    sink(step(30, 0.2))
    sink(evaluation(30, 70.0))
    sink(epoch_end(3))
    _, rows = read_csv(os.path.join(str(tmp_path), "summary.csv"))
    assert [(r["epoch"], r["eval_top1"]) for r in rows] == [("1", "40.0"), ("2", "50.0"), ("3", "70.0")]


def test_summary_csv_without_imagenet_has_timms_columns_only(tmp_path):
    sink = SummaryCsv(str(tmp_path))
    sink(started())
    sink(step(10, float("nan")))
    sink(epoch_end(1))  # the row exists before its evaluation arrives ...
    sink(evaluation(10, 40.0))  # ... and is rewritten with it
    header, rows = read_csv(os.path.join(str(tmp_path), "summary.csv"))
    assert header == list(COLUMNS)
    assert rows[0]["train_loss"] == "nan" and rows[0]["eval_top1"] == "40.0"


# ------------------------------------------------------------------------------ confusions


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])  # float64: a slice of evaluate's totals
def test_confusion_counts_per_class_accuracy_and_top_pairs(dtype):
    c = 4
    counts = torch.zeros(c, c, dtype=dtype)
    batches = [([0, 0, 1, 2, -1, 2], [0, 1, 1, 1, 3, 1]), ([2, 2, 0, -1], [2, 1, 1, 0])]
    for labels, preds in batches:
        add_confusions(counts, torch.tensor(labels), torch.tensor(preds))
    expected = torch.zeros(c, c, dtype=dtype)
    for labels, preds in batches:
        for t, p in zip(labels, preds):
            if t >= 0:
                expected[t, p] += 1
    assert torch.equal(counts, expected)
    acc = per_class_acc1(counts)
    assert acc[:3] == (pytest.approx(100 / 3), 100.0, pytest.approx(100 / 4)) and math.isnan(acc[3])
    assert top_confusions(counts) == ((2, 1, 3), (0, 1, 2))
    assert top_confusions(counts, k=1) == ((2, 1, 3),)


def test_eval_details_are_kept_per_evaluation_and_dropped_after_a_resume_point(tmp_path):
    out = str(tmp_path)
    sink = EvalDetailsWriter(out, classes=["n1", "n2"])
    sink(started())
    ev = EvalResult(epoch=1, step=10, loss=1.0, acc1=50.0, acc5=100.0, best_acc1=50.0, best_acc5=100.0,
                    manual=False, is_best=True, seconds=0.1, images=4, per_class_acc1=(100.0, 0.0),
                    confusions=((1, 0, 2),), imagenet_loss=float("nan"), imagenet_acc1=25.0,
                    imagenet_acc5=100.0, imagenet_images=4, imagenet_per_class_acc1=(50.0, float("nan")),
                    imagenet_confusions=((0, 1, 1),))
    sink(ev)
    sink(evaluation(20, 60.0))
    with open(os.path.join(out, "evals", "epoch_001_step_0000010.json")) as f:
        record = json.load(f)
    assert record["webvision"]["per_class_acc1"] == [100.0, 0.0]
    assert record["webvision"]["confusions"] == [[1, 0, 2]]
    assert record["imagenet"]["per_class_acc1"] == [50.0, None] and record["imagenet"]["loss"] is None
    assert record["imagenet"]["confusions"] == [[0, 1, 1]] and record["classes"] == ["n1", "n2"]
    with open(os.path.join(out, "evals", "epoch_002_step_0000020.json")) as f:
        assert json.load(f)["imagenet"] is None

    EvalDetailsWriter(out)(started(start_step=12, start_epoch=1))
    assert sorted(os.listdir(os.path.join(out, "evals"))) == ["epoch_001_step_0000010.json"]
