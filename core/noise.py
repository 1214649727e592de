"""The clean/noisy split of an epoch's per-sample training losses, and what the run records of it.

`fit_split` is DivideMix's `eval_train`: a two-component Gaussian mixture on min-max normalised
losses, the clean probability being the posterior of the lower-mean component. `epoch_events`
writes OUT/samples/epoch_NNN.npz (atomically; NNN: the 1-based epoch) and builds the NoiseEstimate and NoiseDetails
events: per class and per Google query, the clean fraction (mean clean probability), the mean
loss and the class predicted most often instead; the loss histogram; the highest-loss samples.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

import numpy as np

from core.atomic import atomic_write
from core.distributed import DistContext
from core.events import Event, NoiseDetails, NoiseEstimate, RunWarning
from core.sample_record import SampleRecord, Samples
from core.webvision import WebVisionIndex

__all__ = ["Split", "fit_split", "normalise", "record_epoch", "epoch_events", "write_epoch_file", "epoch_path",
           "HISTOGRAM_BINS"]

HISTOGRAM_BINS = 40
WORST_PER_CLASS = 20
WORST_PER_QUERY = 10


@dataclass(frozen=True)
class Split:
    clean_prob: np.ndarray  # float64, one per loss
    means: tuple[float, float]  # (clean, noisy) components, on normalised loss
    variances: tuple[float, float]
    weights: tuple[float, float]


def normalise(losses: np.ndarray) -> np.ndarray:
    """Min-max normalised losses in [0, 1]; a non-finite loss counts as the highest, all-equal as 0."""
    x = np.asarray(losses, dtype=np.float64).ravel()
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros_like(x)
    lo, hi = x[finite].min(), x[finite].max()
    x = np.where(finite, x, hi)
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def fit_split(losses: np.ndarray) -> Split:
    """Each sample's clean probability from a 2-component mixture on normalised losses.

    Fewer than two distinct losses leave nothing to split: every sample is clean (probability
    1.0), one component holds all the weight.
    """
    norm = normalise(losses)
    if len(norm) == 0:
        raise ValueError("fit_split needs at least one loss")
    if len(norm) < 2 or norm.max() == norm.min():
        m = float(norm.mean())
        return Split(np.ones(len(norm)), (m, m), (0.0, 0.0), (1.0, 0.0))
    from sklearn.mixture import GaussianMixture  # a second to import; only runs that record pay it

    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 10 iterations is the recipe; not converging is expected
        gmm.fit(norm.reshape(-1, 1))
        prob = gmm.predict_proba(norm.reshape(-1, 1))
    means = gmm.means_.ravel()
    order = np.argsort(means)  # clean = the lower mean
    variances = gmm.covariances_.ravel()
    pair = lambda a: (float(a[order[0]]), float(a[order[1]]))  # noqa: E731
    return Split(prob[:, order[0]].astype(np.float64), pair(means), pair(variances), pair(gmm.weights_))


def epoch_path(out_dir: str, epoch: int) -> str:
    return os.path.join(out_dir, "samples", f"epoch_{epoch:03d}.npz")


def drop_epoch_files_from(out_dir: str, epoch: int) -> None:
    """Remove OUT/samples/epoch_NNN.npz for NNN >= epoch (1-based): a run starting (or resuming)
    there writes them anew, and files left by an overwritten run, or by a process that went past
    the checkpoint it is resumed from, must not be read as this run's.

    A run written before the one epoch numbering named the first epoch's file epoch_000.npz: its
    files are first renamed to the 1-based names, so a resumed run continues one sequence.
    """
    directory = os.path.dirname(epoch_path(out_dir, 0))
    try:
        names = os.listdir(directory)
    except OSError:
        return
    files = {int(m.group(1)): os.path.join(directory, n) for n in names if (m := re.fullmatch(r"epoch_(\d+)\.npz", n))}
    if 0 in files:
        for e in sorted(files, reverse=True):  # the highest first: no rename onto a file not yet moved
            os.replace(files[e], epoch_path(out_dir, e + 1))
        files = {e + 1: epoch_path(out_dir, e + 1) for e in files}
    for e, path in files.items():
        if e >= epoch:
            os.unlink(path)


def write_epoch_file(path: str, arrays: dict[str, np.ndarray]) -> None:
    """The npz at `path`, whole or not at all (`core.atomic.atomic_write`).

    Compressed: the index and label columns run in order, so mini-WebVision's 66k samples take
    a few hundred KB instead of 1.6 MB, and the full 2.4 M lists tens of MB, not 60."""
    with atomic_write(path) as f:
        np.savez_compressed(f, **arrays)


def _other_label(labels: np.ndarray, preds: np.ndarray) -> int:
    wrong = preds[preds != labels]
    if len(wrong) == 0:
        return -1
    values, counts = np.unique(wrong, return_counts=True)
    return int(values[np.argmax(counts)])


def _groups(keys: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(key, positions) for each key >= 0, positions into `keys`."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    return [(int(sorted_keys[a]), order[a:b]) for a, b in zip(starts, ends) if sorted_keys[a] >= 0]


def epoch_events(samples: Samples, index: WebVisionIndex, *, epoch: int, step: int, out_dir: str) -> list[Event]:
    """Fit the split of one epoch, write its file, and return [NoiseEstimate, NoiseDetails]
    (a RunWarning instead when the file cannot be written: training goes on)."""
    split = fit_split(samples.loss)
    labels = index.train.labels[samples.index].astype(np.int64)
    queries = index.train.queries[samples.index].astype(np.int64)
    path = epoch_path(out_dir, epoch)
    try:
        write_epoch_file(path, {
            "index": samples.index.astype(np.int32), "loss": samples.loss.astype(np.float16),
            "pred": samples.pred.astype(np.int16), "clean_prob": split.clean_prob.astype(np.float16),
            "label": labels.astype(np.int16), "query": queries.astype(np.int32),
        })
    except OSError as e:
        return [RunWarning(kind="noise", message=f"could not write {path}: {e.strerror or e}; training goes on")]
    clean, loss, pred = split.clean_prob, samples.loss.astype(np.float64), samples.pred
    estimate = NoiseEstimate(epoch=epoch, step=step, samples=len(samples), clean_fraction=float(clean.mean()),
                             means=split.means, variances=split.variances, weights=split.weights, path=path)

    def stats(at: np.ndarray) -> tuple[int, float, float, int]:
        return len(at), float(clean[at].mean()), float(loss[at].mean()), _other_label(labels[at], pred[at])

    worst: dict[int, tuple] = {}

    def keep_worst(at: np.ndarray, count: int) -> None:
        for i in at[np.argsort(-loss[at], kind="stable")][:count]:
            j = int(samples.index[i])
            q = int(queries[i])
            worst[j] = (j, index.train.path(j), int(labels[i]), index.query_ids[q] if q >= 0 else "", int(pred[i]),
                        float(loss[i]), float(clean[i]))

    classes = []
    for label, at in _groups(labels):
        classes.append((label, *stats(at)))
        keep_worst(at, WORST_PER_CLASS)
    query_rows = []
    for q, at in _groups(queries):
        n, frac, mean_loss, other = stats(at)
        query_rows.append((index.query_ids[q], index.query_texts[q], int(index.query_labels[q]), n, frac, mean_loss,
                           other))
        keep_worst(at, WORST_PER_QUERY)
    histogram = np.histogram(normalise(samples.loss), bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]
    details = NoiseDetails(
        epoch=epoch, histogram=tuple(int(c) for c in histogram),
        classes=tuple(sorted(classes, key=lambda r: (r[2], r[0]))),  # noisiest (lowest clean fraction) first
        queries=tuple(sorted(query_rows, key=lambda r: (r[4], r[0]))),
        worst=tuple(sorted(worst.values(), key=lambda r: -r[5])),
    )
    return [estimate, details]


def record_epoch(record: SampleRecord, dist: DistContext | None, index: WebVisionIndex, epoch: int, step: int,
                 out_dir: str) -> list[Event]:
    """After epoch `epoch` (1-based): its record gathered from every rank (a collective) and cleared; on
    rank 0, the split written and told. [] on other ranks and when the run does not record."""
    samples = record.gather(dist)
    record.clear()
    if (dist is not None and not dist.is_main) or len(samples) == 0:
        return []
    return epoch_events(samples, index, epoch=epoch, step=step, out_dir=out_dir)
