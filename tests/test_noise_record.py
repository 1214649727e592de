"""The noisy-label lens underneath the console: per-sample losses recorded from the training
forward pass, the clean/noisy split after every epoch, OUT/samples/epoch_NNN.npz, resume, and the
synthetic label noise that scores it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from core.data import ResumableSampler
from core.events import Command, NoiseDetails, NoiseEstimate, StepStats
from core.noise import HISTOGRAM_BINS, fit_split
from core.runlog import read_metrics
from core.synthetic import main as synthetic_main
from core.synthetic import make_webvision
from core.webvision import WebVisionIndex
from helpers import Recorder, config, make_trainer, running
from helpers import one_torch_thread, root  # noqa: F401 - fixtures

NPZ_ARRAYS = {"index": np.int32, "loss": np.float16, "pred": np.int16, "clean_prob": np.float16,
              "label": np.int16, "query": np.int32}


# ----- the split ---------------------------------------------------------------------------------
def test_the_lower_mean_component_of_a_bimodal_loss_array_is_the_clean_one():
    rng = np.random.default_rng(0)
    clean = rng.normal(0.3, 0.1, 700).clip(0.01)
    noisy = rng.normal(3.0, 0.4, 300)
    split = fit_split(np.concatenate([clean, noisy]))
    assert split.means[0] < split.means[1]
    assert split.means[0] < 0.2 and split.means[1] > 0.7  # normalised losses
    assert split.weights[0] == pytest.approx(0.7, abs=0.03)
    assert (split.clean_prob[:700] > 0.5).mean() > 0.98
    assert (split.clean_prob[700:] < 0.5).mean() > 0.98
    assert abs(sum(split.weights) - 1) < 1e-6 and all(v > 0 for v in split.variances)


@pytest.mark.parametrize("losses", [np.full(50, 0.7), np.array([2.5]), np.array([np.inf, np.nan, 1.0, 1.0])],
                         ids=["all_equal", "one_sample", "nonfinite_rest_equal"])
def test_nothing_to_split_means_every_sample_is_clean(losses):
    split = fit_split(losses)
    assert split.clean_prob.shape == (len(losses),)
    assert np.all(split.clean_prob == 1.0)
    assert split.weights == (1.0, 0.0)


def test_an_empty_loss_array_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        fit_split(np.zeros(0))


# ----- synthetic label noise ---------------------------------------------------------------------
def test_label_noise_flips_planted_queries_in_the_filelist_and_says_which(tmp_path):
    clean = make_webvision(str(tmp_path / "clean"), classes=4, queries_per_class=3, images_per_query=10, size=16)
    noisy = make_webvision(str(tmp_path / "noisy"), classes=4, queries_per_class=3, images_per_query=10, size=16,
                           label_noise=0.25)
    truth = json.load(open(os.path.join(noisy, "label_noise.json")))
    assert not os.path.exists(os.path.join(clean, "label_noise.json"))
    assert truth["flipped_images"] == len(truth["flipped"]) == 30  # round(0.25 x 120)
    assert truth["noisy_queries"] == sorted(truth["noisy_queries"]) and len(truth["noisy_queries"]) == 4
    # A third of the queries, one per class: every class keeps its clean majority.
    assert len({int(q[1:]) - 1 for q in truth["noisy_queries"]}) == 4
    assert sorted((int(q[1:]) - 1) // 3 for q in truth["noisy_queries"]) == [0, 1, 2, 3]
    clean_lines = open(os.path.join(clean, "info", "train_filelist_google.txt")).read().splitlines()
    noisy_lines = open(os.path.join(noisy, "info", "train_filelist_google.txt")).read().splitlines()
    changed = [i for i, (a, b) in enumerate(zip(clean_lines, noisy_lines)) if a != b]
    assert changed == [f["index"] for f in truth["flipped"]]
    for f in truth["flipped"]:
        assert clean_lines[f["index"]] == f"{f['path']} {f['true']}"
        assert noisy_lines[f["index"]] == f"{f['path']} {f['label']}" and f["label"] != f["true"]
        assert f["path"].split("/")[1] in truth["noisy_queries"]
        # The image is the clean tree's: it still shows its true class.
        assert open(os.path.join(noisy, f["path"]), "rb").read() == open(os.path.join(clean, f["path"]), "rb").read()
    index = WebVisionIndex.load(noisy, num_classes=4)
    assert [int(index.train.labels[f["index"]]) for f in truth["flipped"]] == [f["label"] for f in truth["flipped"]]


def test_label_noise_out_of_range_is_one_line_and_exit_2(tmp_path, capsys):
    assert synthetic_main([str(tmp_path / "wv"), "--label-noise", "1.0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: label_noise must be in [0, 1), got 1.0"
    assert not os.path.exists(tmp_path / "wv" / "info")


# ----- recording in the real trainer -------------------------------------------------------------
def epoch_files(out: str) -> list[str]:
    return sorted(os.listdir(os.path.join(out, "samples")))


def seen_indices(n: int, epoch: int, samples: int) -> np.ndarray:
    """The dataset indices a single-process epoch trains on: the first `samples` of its order."""
    sampler = ResumableSampler(n, seed=0)
    sampler.set_epoch(epoch)
    return np.sort(sampler.indices().numpy()[:samples])


def stop_at(steps: set[int]):
    """A Recorder whose trainer gets STOP after reporting each of `steps`."""
    holder = {}

    def on_event(ev):
        if isinstance(ev, StepStats) and ev.step in steps:
            holder["trainer"].submit(Command.STOP)

    return Recorder(on_event), holder


def run(cfg, recorder: Recorder, holder: dict | None = None):
    trainer = make_trainer(cfg, recorder)
    if holder is not None:
        holder["trainer"] = trainer
    with running(trainer, recorder):
        pass
    return recorder.finished


@pytest.mark.slow
def test_epoch_files_hold_every_seen_sample_once_and_survive_stops_mid_epoch_and_at_its_end(root, tmp_path):
    n = len(WebVisionIndex.load(root, num_classes=5).train)
    cfg = dict(epochs=2, max_steps_per_epoch=4, max_val_batches=1, tensorboard=False)
    straight = Recorder()
    assert run(config(root, str(tmp_path / "straight"), **cfg), straight).reason == "completed"

    out = str(tmp_path / "stopped")
    # Stops at step 2 (mid epoch 1), 4 (epoch 1's last step) and 6 (mid epoch 2).
    reasons = []
    for resume in (None, "auto", "auto", "auto"):
        recorder, holder = stop_at({2, 4, 6})
        reasons.append(run(config(root, out, resume=resume, **cfg), recorder, holder).reason)
    assert reasons == ["stopped", "stopped", "stopped", "completed"]

    assert epoch_files(out) == epoch_files(str(tmp_path / "straight")) == ["epoch_001.npz", "epoch_002.npz"]
    noise_records = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["event"] == "noise"]
    assert [r["epoch"] for r in noise_records] == [1, 2]  # no double epoch
    for epoch, name in enumerate(epoch_files(out)):  # 0-based here: the sampler's epoch
        z = np.load(os.path.join(out, "samples", name))
        assert {k: z[k].dtype for k in z.files} == {k: np.dtype(v) for k, v in NPZ_ARRAYS.items()}
        assert np.array_equal(z["index"], seen_indices(n, epoch, 4 * 16))  # sorted, no gap, no double
        # CPU resumes are bit-identical, so the stopped run recorded exactly the straight run's values.
        ref = np.load(os.path.join(tmp_path, "straight", "samples", name))
        for key in NPZ_ARRAYS:
            assert np.array_equal(z[key], ref[key]), key
        index = WebVisionIndex.load(root, num_classes=5)
        assert np.array_equal(z["label"], index.train.labels[z["index"]])
        assert np.array_equal(z["query"], index.train.queries[z["index"]])
        assert np.all((z["pred"] >= 0) & (z["pred"] < 5)) and np.all(np.isfinite(z["loss"]))


@pytest.mark.slow
def test_events_follow_the_evaluation_and_describe_the_file(root, tmp_path):
    recorder = Recorder()
    cfg = config(root, str(tmp_path / "run"), epochs=1, max_steps_per_epoch=3, max_val_batches=1, tensorboard=False)
    assert run(cfg, recorder).reason == "completed"
    (estimate,), (details,) = recorder.of(NoiseEstimate), recorder.of(NoiseDetails)
    kinds = [type(e).__name__ for e in recorder.events]
    assert kinds.index("EvalResult") < kinds.index("NoiseEstimate") == kinds.index("NoiseDetails") - 1
    z = np.load(estimate.path)
    assert estimate.path == os.path.join(cfg.out, "samples", "epoch_001.npz")
    assert estimate.samples == len(z["index"]) == 48 and estimate.epoch == 1 and estimate.step == 3
    assert details.epoch == 1
    assert estimate.clean_fraction == pytest.approx(float(z["clean_prob"].astype(np.float64).mean()), abs=1e-3)
    assert estimate.means[0] <= estimate.means[1]
    assert sum(details.histogram) == 48 and len(details.histogram) == HISTOGRAM_BINS
    assert sum(row[1] for row in details.classes) == 48
    assert sum(row[3] for row in details.queries) == 48
    fractions = [row[4] for row in details.queries]
    assert fractions == sorted(fractions)  # noisiest first
    worst_index = {row[0] for row in details.worst}
    assert worst_index <= set(z["index"].tolist())
    for index, path, label, query_id, predicted, loss, clean_prob in details.worst:
        assert os.path.isfile(path) and f"/{query_id}/" in path
    logged = [r for r in read_metrics(os.path.join(cfg.out, "metrics.jsonl"))
              if r["event"] in ("noise", "noise_details")]
    assert [r["event"] for r in logged] == ["noise"]  # the details are for the console only


@pytest.mark.slow
def test_record_samples_false_writes_no_files_and_tells_no_split(root, tmp_path):
    recorder = Recorder()
    cfg = config(root, str(tmp_path / "run"), epochs=1, max_steps_per_epoch=2, max_val_batches=1,
                 tensorboard=False, record_samples=False)
    assert run(cfg, recorder).reason == "completed"
    assert not os.path.exists(os.path.join(cfg.out, "samples"))
    assert recorder.of(NoiseEstimate) == [] and recorder.of(NoiseDetails) == []
    assert not any(r["event"] == "noise" for r in read_metrics(os.path.join(cfg.out, "metrics.jsonl")))


# ----- the lens on planted noise -----------------------------------------------------------------
# 4 classes x 3 queries x 16 images, 30% flipped (90% of one query per class); 12 steps an epoch.
# Two epochs at lr 0.01 learn the class looks before the flipped labels are memorised; two more
# at lr 0.001 settle the losses: measured AUC 0.957 (seed 0) and 0.943 (seed 1), about 25 s.
NOISY = dict(classes=4, queries_per_class=3, images_per_query=16, val_per_class=4, size=40, seed=0, label_noise=0.3)


@pytest.mark.slow
def test_the_split_finds_flipped_labels_and_the_planted_noisy_queries(tmp_path):
    from sklearn.metrics import roc_auc_score  # here: a second of import the fast loop does not need

    root_dir = make_webvision(str(tmp_path / "wv"), **NOISY)
    truth = json.load(open(os.path.join(root_dir, "label_noise.json")))
    recorder = Recorder()
    cfg = config(root_dir, str(tmp_path / "run"), num_classes=NOISY["classes"], epochs=4, batch_size=16,
                 lr=0.01, milestones=(2,), gamma=0.1, max_val_batches=1, tensorboard=False)
    assert run(cfg, recorder).reason == "completed"
    z = np.load(recorder.of(NoiseEstimate)[-1].path)
    flipped = np.isin(z["index"], [f["index"] for f in truth["flipped"]])
    assert flipped.sum() > 0.25 * len(flipped)
    auc = roc_auc_score(flipped, -z["clean_prob"].astype(np.float64))
    assert auc >= 0.9, auc
    details = recorder.of(NoiseDetails)[-1]
    ranked = [row[0] for row in details.queries]
    planted = truth["noisy_queries"]
    assert sorted(ranked[:len(planted)]) == planted, details.queries


def test_a_run_starting_at_an_epoch_drops_the_sample_files_from_that_epoch_on(root, tmp_path):
    """Files of an overwritten run, or of a process that went past the checkpoint a run resumes
    from, must not be read (by `wvtui noise`, by a user) as this run's."""
    out = tmp_path / "run"
    samples = out / "samples"
    samples.mkdir(parents=True)
    for epoch in range(3):
        np.savez(samples / f"epoch_{epoch:03d}.npz", index=np.arange(3))
    (samples / "notes.txt").write_text("kept")
    trainer = make_trainer(config(root, str(out)), Recorder())
    trainer.prepare()  # a fresh run: starts at epoch 0
    assert sorted(os.listdir(samples)) == ["notes.txt"]

    from core.noise import drop_epoch_files_from

    for epoch in range(1, 4):
        np.savez(samples / f"epoch_{epoch:03d}.npz", index=np.arange(3))
    drop_epoch_files_from(str(out), 3)  # resuming inside epoch 3 (1-based)
    assert sorted(os.listdir(samples)) == ["epoch_001.npz", "epoch_002.npz", "notes.txt"]
    # A run written before the one epoch numbering (epoch_000 = the first epoch): renamed first.
    for name in os.listdir(samples):
        if name.endswith(".npz"):
            os.unlink(samples / name)
    for epoch in range(3):
        np.savez(samples / f"epoch_{epoch:03d}.npz", index=np.full(3, epoch))
    drop_epoch_files_from(str(out), 3)
    assert sorted(os.listdir(samples)) == ["epoch_001.npz", "epoch_002.npz", "notes.txt"]
    assert np.load(samples / "epoch_002.npz")["index"].tolist() == [1, 1, 1]
