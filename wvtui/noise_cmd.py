"""`wvtui noise OUT [--epoch N] [--csv FILE]`: one epoch's per-sample training losses and clean
probabilities, as a CSV to clean or re-weight a dataset with, or as a summary of the noisiest
classes and Google queries.

    wvtui noise runs/a                     # Markdown tables: noisiest classes and queries
    wvtui noise runs/a --csv noise.csv     # index, path, label, query, loss, predicted, clean_prob
    wvtui noise runs/a --epoch 3 --csv -   # epoch 3 (counted from 1), to stdout

Reads OUT/samples/epoch_NNN.npz (NNN = the epoch counted from 1, as the trainer writes it) and
OUT/config.json, whose `root`, `num_classes` and `use_flickr` load the run's dataset for the
paths, class names and query texts. A dataset that moved or changed costs those columns only:
the rest comes from the npz alone, and one warning line says so.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from wvtui.options import OneLineParser

__all__ = ["main", "EpochSamples", "NoiseError", "epoch_files", "load_samples", "group_rows",
           "write_csv", "render_summary"]

EXIT_USAGE = 2
SAMPLES_DIR = "samples"
ARRAYS = ("index", "label", "query", "loss", "pred", "clean_prob")
CSV_HEADER = ("index", "path", "label", "query", "loss", "predicted", "clean_prob")
TOP = 20
DASH = "—"
DESCRIPTION = """\
One epoch's per-sample training losses, predictions and clean probabilities: a CSV to clean or
re-weight the dataset with (--csv), or the noisiest classes and Google queries as Markdown tables.

    wvtui noise runs/a                     # the summary tables
    wvtui noise runs/a --csv noise.csv     # index, path, label, query, loss, predicted, clean_prob
    wvtui noise runs/a --epoch 3 --csv -   # epoch 3 (counted from 1), to stdout"""
_FILE = re.compile(r"^epoch_(\d+)\.npz$")


class NoiseError(Exception):
    """Bad input (run dir, samples file, epoch); printed as one line, exit 2."""


@dataclass
class EpochSamples:
    """One epoch's records, one entry per training sample seen, sorted by dataset index."""

    epoch: int  # 1-based, as the console shows it
    path: str
    index: np.ndarray
    label: np.ndarray
    query: np.ndarray
    loss: np.ndarray
    pred: np.ndarray
    clean_prob: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class Dataset:
    """What the run's dataset adds to the records; `index` is None when it is unavailable."""

    index: Any  # core.webvision.WebVisionIndex | None
    problem: str | None = None


def epoch_files(out: str) -> dict[int, str]:
    """1-based epoch -> OUT/samples/epoch_NNN.npz, for every file there.

    Runs of wvtui before the one epoch numbering named the first epoch's file epoch_000.npz:
    a run directory holding that file counts from 0, and its numbers are moved up by one.
    """
    if not os.path.exists(out):
        raise NoiseError(f"{out} does not exist")
    if not os.path.isdir(out):
        raise NoiseError(f"{out} is not a directory")
    folder = os.path.join(out, SAMPLES_DIR)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        names = []
    except OSError as e:
        raise NoiseError(f"cannot read {folder}: {e.strerror or e}") from None
    files = {int(m.group(1)): os.path.join(folder, n) for n in names if (m := _FILE.match(n))}
    if not files:
        if not (os.path.isfile(os.path.join(out, "config.json"))
                or os.path.isfile(os.path.join(out, "metrics.jsonl"))):
            raise NoiseError(f"{out} is not a run directory (no config.json or metrics.jsonl)")
        raise NoiseError(
            f"{out} holds no per-sample records ({folder}/epoch_NNN.npz): the run has not finished "
            "an epoch yet, or ran with --no-samples"
        )
    if 0 in files:
        files = {e + 1: path for e, path in files.items()}
    return files


def load_samples(out: str, epoch: int | None = None) -> EpochSamples:
    """The records of `epoch` (1-based; None: the last epoch with a file)."""
    files = epoch_files(out)
    if epoch is None:
        epoch = max(files)
    elif epoch not in files:
        have = ", ".join(str(e) for e in sorted(files))
        raise NoiseError(f"--epoch {epoch}: no records for that epoch in {out}/{SAMPLES_DIR} "
                         f"(epochs with records: {have})")
    path = files[epoch]
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ARRAYS if k not in z.files]
            if missing:
                raise NoiseError(f"{path} is not a per-sample record file (no {', '.join(missing)} array)")
            arrays = {k: np.asarray(z[k]) for k in ARRAYS}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise NoiseError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    n = len(arrays["index"]) if arrays["index"].ndim == 1 else -1
    if any(a.ndim != 1 or len(a) != n for a in arrays.values()):
        shapes = ", ".join(f"{k} {a.shape}" for k, a in arrays.items())
        raise NoiseError(f"{path} is damaged: its arrays differ in shape ({shapes})")
    return EpochSamples(epoch=epoch, path=path, index=arrays["index"].astype(np.int64),
                        label=arrays["label"].astype(np.int64), query=arrays["query"].astype(np.int64),
                        loss=arrays["loss"].astype(np.float32), pred=arrays["pred"].astype(np.int64),
                        clean_prob=arrays["clean_prob"].astype(np.float32))


def run_config(out: str) -> dict[str, Any]:
    """config.json; for a run that died before writing it, the config of its last started record."""
    try:
        with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        if isinstance(config, dict):
            return config
    except (OSError, ValueError):
        pass
    from core.runlog import read_metrics

    try:
        started = [r for r in read_metrics(os.path.join(out, "metrics.jsonl"))
                   if isinstance(r, dict) and r.get("event") == "started"]
    except (OSError, UnicodeDecodeError):
        started = []
    config = started[-1].get("config") if started else None
    return config if isinstance(config, dict) else {}


def load_dataset(config: dict[str, Any], samples: EpochSamples) -> Dataset:
    """The run's dataset index, checked against the records; unavailable is a reason, not an error."""
    from core.webvision import DatasetError, WebVisionIndex

    root = config.get("root")
    if not isinstance(root, str):
        return Dataset(None, "the run's config.json names no dataset root")
    try:
        index = WebVisionIndex.load(root, num_classes=int(config.get("num_classes", 50)),
                                    use_flickr=bool(config.get("use_flickr", False)))
    except (DatasetError, OSError, ValueError, TypeError) as e:
        return Dataset(None, f"cannot load the run's dataset: {' '.join(str(e).split()).rstrip('.')}")
    if len(samples) and (samples.index.min() < 0 or samples.index.max() >= len(index.train)):
        return Dataset(None, f"the dataset at {root} has {len(index.train)} training images and the "
                       f"records reach index {int(samples.index.max())}: it is not the run's dataset")
    differ = int((index.train.labels[samples.index] != samples.label).sum()) if len(samples) else 0
    if differ:
        return Dataset(None, f"{differ} of {len(samples)} records' labels differ from the train list "
                       f"at {root}: the dataset changed since the run")
    return Dataset(index)


# --------------------------------------------------------------------------- the CSV


def write_csv(samples: EpochSamples, dataset: Dataset, stream: IO[str]) -> None:
    """One row per record; `path` as in the train list (relative to the dataset root), empty
    when the dataset is unavailable; losses and probabilities to float16's precision."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    index = dataset.index
    relpath = index.train.relpath if index is not None else (lambda i: "")
    for i, label, query, loss, pred, prob in zip(
        samples.index.tolist(), samples.label.tolist(), samples.query.tolist(),
        samples.loss.tolist(), samples.pred.tolist(), samples.clean_prob.tolist(),
    ):
        writer.writerow((i, relpath(i), label, query, f"{loss:.5g}", pred, f"{prob:.5g}"))


# --------------------------------------------------------------------------- the summary


def group_rows(keys: np.ndarray, samples: EpochSamples) -> list[tuple[int, int, float, float, int, int]]:
    """Per key (a class or a query): (key, images, clean fraction, mean loss, the label most often
    predicted instead of the sample's own or -1, how often), lowest clean fraction first, then by
    key, as the console's noise pane orders them. Clean fraction = mean clean probability, as the
    run's noise record computes it."""
    if not len(keys):
        return []
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    clean = np.bincount(inverse, weights=samples.clean_prob, minlength=len(uniq)) / counts
    loss = np.bincount(inverse, weights=samples.loss, minlength=len(uniq)) / counts
    other = np.full(len(uniq), -1, dtype=np.int64)
    times = np.zeros(len(uniq), dtype=np.int64)
    wrong = samples.pred != samples.label
    if wrong.any():
        pairs, n = np.unique(np.stack([inverse[wrong], samples.pred[wrong]]), axis=1, return_counts=True)
        order = np.lexsort((pairs[1], -n, pairs[0]))  # per group: most often first, then lowest label
        first = np.ones(len(order), dtype=bool)
        first[1:] = pairs[0, order[1:]] != pairs[0, order[:-1]]
        group, label = pairs[0, order[first]], pairs[1, order[first]]
        other[group], times[group] = label, n[order[first]]
    rows = [(int(k), int(c), float(f), float(m), int(o), int(t))
            for k, c, f, m, o, t in zip(uniq, counts, clean, loss, other, times)]
    rows.sort(key=lambda r: (r[2], r[0]))
    return rows


def _most_common(keys: np.ndarray, values: np.ndarray) -> dict[int, int]:
    """key -> its most common value (the lowest of equals)."""
    if not len(keys):
        return {}
    pairs, n = np.unique(np.stack([keys, values]), axis=1, return_counts=True)
    best: dict[int, tuple[int, int]] = {}
    for k, v, c in zip(pairs[0].tolist(), pairs[1].tolist(), n.tolist()):
        if k not in best or c > best[k][1]:
            best[k] = (v, c)
    return {k: v for k, (v, _) in best.items()}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_summary(out: str, samples: EpochSamples, dataset: Dataset, top: int = TOP) -> str:
    index = dataset.index

    def class_name(label: int) -> str:
        if index is None or not 0 <= label < len(index.class_names):
            return str(label)
        return f"{label} {index.class_names[label].split(',')[0].strip()}"

    def instead(other: int, times: int) -> str:
        return DASH if other < 0 else f"{class_name(other)} ({times})"

    overall = float(samples.clean_prob.mean()) if len(samples) else float("nan")
    lines = [
        f"wvtui noise {out}: epoch {samples.epoch} ({os.path.relpath(samples.path, out)}), "
        f"{len(samples):,} training samples, estimated clean fraction {overall:.3f}",
        "",
        "Losses and predictions are those of the training forward pass (the augmented views the "
        "model saw); a sample's clean probability is the posterior of the low-loss component of a "
        "two-component Gaussian mixture on min-max normalised losses (DivideMix). Clean fraction: "
        "mean clean probability. Predicted instead: the class most often predicted other than the "
        "label (how many images).",
    ]
    if index is None:
        lines += ["", f"Class names and query texts unavailable: {dataset.problem}."]

    classes = group_rows(samples.label, samples)
    lines += ["", f"### Noisiest classes (lowest clean fraction first; {min(top, len(classes))} of {len(classes)})", ""]
    lines.append(_table(
        ["class", "images", "clean fraction", "mean loss", "predicted instead"],
        [[class_name(k), str(n), f"{f:.3f}", f"{m:.3f}", instead(o, t)] for k, n, f, m, o, t in classes[:top]],
    ))

    queries = group_rows(samples.query, samples)
    # A query's class is the one it was searched for; its images' labels may differ (label noise).
    label_of = _most_common(samples.query, samples.label)
    if index is not None:
        label_of.update({q: int(index.query_labels[q]) for q in label_of
                         if 0 <= q < len(index.query_labels) and index.query_labels[q] >= 0})

    def query_cells(q: int) -> list[str]:
        if index is None or not 0 <= q < len(index.query_ids):
            return [str(q), DASH, DASH]
        return [str(q), f"{index.query_sources[q]}/{index.query_ids[q]}", index.query_texts[q]]

    lines += ["", f"### Noisiest queries (lowest clean fraction first; {min(top, len(queries))} of {len(queries)})", ""]
    lines.append(_table(
        ["query", "folder", "text", "class", "images", "clean fraction", "mean loss", "predicted instead"],
        [query_cells(k) + [class_name(label_of[k]), str(n), f"{f:.3f}", f"{m:.3f}", instead(o, t)]
         for k, n, f, m, o, t in queries[:top]],
    ))
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command


def _epoch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an epoch number (1 = the first), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"epochs are counted from 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="wvtui noise", description=DESCRIPTION,
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="CSV columns: index (into the run's train list), path (as in the train list, "
                "relative to the dataset root; empty when the dataset is unavailable), label (the "
                "label trained on), query (the run's query number; the summary names it), loss, "
                "predicted, clean_prob.\n\nExit codes: 0 written; 2 bad arguments, run directory or "
                "record file (one line on stderr).")
    p.add_argument("out", metavar="OUT", help="run directory (--out of a run)")
    p.add_argument("--epoch", type=_epoch, metavar="N",
                   help="epoch, counted from 1 as the console shows it (default: the last one with "
                   "records); its file is OUT/samples/epoch_NNN.npz with NNN = N")
    p.add_argument("--csv", metavar="FILE", help="write the per-sample rows to FILE ('-': stdout) "
                   "instead of the summary")
    return p


def _write(text_or_writer, target: str | None) -> None:
    if target in (None, "-"):
        text_or_writer(sys.stdout)
        sys.stdout.flush()
        return
    with open(target, "w", encoding="utf-8", newline="") as f:
        text_or_writer(f)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        samples = load_samples(args.out, args.epoch)
    except NoiseError as e:
        print(f"wvtui: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    dataset = load_dataset(run_config(args.out), samples)
    if dataset.index is None:
        missing = "paths, class names and query texts" if args.csv is None else "paths"
        print(f"wvtui: warning: {missing} unavailable: {dataset.problem}", file=sys.stderr)
    try:
        if args.csv is not None:
            _write(lambda f: write_csv(samples, dataset, f), args.csv)
        else:
            _write(lambda f: f.write(render_summary(args.out, samples, dataset) + "\n"), None)
    except BrokenPipeError:  # `wvtui noise OUT --csv - | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as e:
        where = "stdout" if args.csv in (None, "-") else f"--csv {args.csv}"
        print(f"wvtui: error: {where}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
