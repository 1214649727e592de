"""The WebVision 1.0 layout on disk: which images exist, their labels and queries, and statistics.

    index = WebVisionIndex.load("/data/webvision", num_classes=50)   # mini-WebVision
    index.train.path(0), int(index.train.labels[0]), index.summary().to_dict()

Samples live in numpy arrays and one uint8 buffer of paths, never in per-sample Python objects:
DataLoader workers touching a list of a million str objects would copy it page by page through
reference counting (pytorch/pytorch#13246). core.listfile parses the image lists into them,
core.infofiles the small info files.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.infofiles import parse_queries, parse_query_map, parse_synsets
from core.listfile import DatasetError, ListAccumulator, parse_list

__all__ = ["DatasetError", "SampleList", "WebVisionIndex", "ClassStats", "QueryStats",
           "DatasetSummary"]

REQUIRED_INFO_FILES = (
    "synsets.txt",
    "queries_google.txt",
    "train_filelist_google.txt",
    "val_filelist.txt",
)
LAYOUT = (
    "expected ROOT/info/{synsets.txt, queries_google.txt, train_filelist_google.txt, "
    "val_filelist.txt}, ROOT/google/qNNNN/*.jpg and ROOT/val_images_256/*.jpg"
)
VAL_DIR = "val_images_256"
MAX_LABEL = 999


class SampleList:
    """Images of one split: relative paths in one uint8 buffer, labels and queries in arrays."""

    __slots__ = ("paths", "offsets", "labels", "queries", "base")

    def __init__(
        self,
        paths: np.ndarray,
        offsets: np.ndarray,
        labels: np.ndarray,
        queries: np.ndarray,
        base: str,
    ) -> None:
        if not (len(offsets) == len(labels) + 1 == len(queries) + 1):
            raise ValueError("offsets must have one more entry than labels and queries")
        self.paths = paths
        self.offsets = offsets
        self.labels = labels
        self.queries = queries
        self.base = base

    def __len__(self) -> int:
        return len(self.labels)

    def relpath(self, i: int) -> str:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        i %= len(self)
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        # fsdecode keeps undecodable bytes (surrogateescape) so the file still opens.
        return os.fsdecode(self.paths[start:end].tobytes())

    def path(self, i: int) -> str:
        return os.path.join(self.base, self.relpath(i))

    def select(self, indices: Any) -> SampleList:
        """A new list holding the samples at `indices` (ints or a boolean mask), in that order."""
        idx = np.arange(len(self))[np.asarray(indices)]
        starts, ends = self.offsets[idx], self.offsets[idx + 1]
        lengths = ends - starts
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return SampleList(
            self.paths[gather], offsets, self.labels[idx], self.queries[idx], self.base
        )

    def __repr__(self) -> str:
        return f"SampleList({len(self)} samples under {self.base!r})"


@dataclass(frozen=True)
class ClassStats:
    label: int
    wnid: str
    name: str
    train_images: int
    val_images: int
    queries: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class QueryStats:
    query_id: str  # its folder, "q0001" (the official queries file writes "1")
    source: str  # "google" | "flickr"
    text: str
    label: int
    class_name: str
    images: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DatasetSummary:
    root: str
    num_classes: int
    sources: tuple[str, ...]
    train_images: int
    val_images: int
    queries: int
    min_per_class: int
    mean_per_class: float
    max_per_class: int
    min_class: int  # label of the smallest class
    max_class: int  # label of the largest class
    imbalance: float  # max / min train images per class

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sources"] = list(self.sources)
        return d


# --------------------------------------------------------------------------- the index


def _label_by_images(labels: np.ndarray, acc: ListAccumulator, start: int, offset: int) -> None:
    """Queries the map does not name take the most common label of their images (in place)."""
    new_labels = np.concatenate(acc.labels)[start:].astype(np.int64)
    new_queries = np.concatenate(acc.queries)[start:].astype(np.int64) - offset
    # Counted over the (query, label) pairs present, not a queries x classes table.
    pairs, counts = np.unique(np.stack([new_queries, new_labels]), axis=1, return_counts=True)
    order = np.lexsort((-counts, pairs[0]))  # by query, most frequent label first
    first = np.ones(len(order), dtype=bool)
    first[1:] = pairs[0, order[1:]] != pairs[0, order[:-1]]
    query, label = pairs[0, order[first]], pairs[1, order[first]]
    fill = labels[query] < 0
    labels[query[fill]] = label[fill]


class WebVisionIndex:
    """The first `num_classes` classes of a WebVision tree: train and val samples, queries."""

    def __init__(
        self,
        root: str,
        num_classes: int,
        wnids: list[str],
        class_names: list[str],
        train: SampleList,
        val: SampleList,
        query_ids: list[str],
        query_texts: list[str],
        query_sources: list[str],
        query_labels: np.ndarray,
        sources: tuple[str, ...] = ("google",),
    ) -> None:
        self.root = root
        self.num_classes = num_classes
        self.wnids = wnids
        self.class_names = class_names
        self.train = train
        self.val = val
        # Every query of the queries files (a few thousand, so lists are fine); query_labels is
        # -1 where neither the map nor the train list names a class.
        self.query_ids = query_ids
        self.query_texts = query_texts
        self.query_sources = query_sources
        self.query_labels = query_labels
        self.sources = sources

    def __repr__(self) -> str:
        return (
            f"WebVisionIndex({self.root!r}, num_classes={self.num_classes}, "
            f"train={len(self.train)}, val={len(self.val)})"
        )

    @classmethod
    def load(cls, root: str, num_classes: int = 50, use_flickr: bool = False) -> WebVisionIndex:
        root = os.fspath(root)
        if not os.path.exists(root):
            raise DatasetError(f"dataset root {root} does not exist; {LAYOUT}")
        if not os.path.isdir(root):
            raise DatasetError(f"dataset root {root} is not a directory; {LAYOUT}")
        info = os.path.join(root, "info")
        for name in REQUIRED_INFO_FILES:
            p = os.path.join(info, name)
            if not os.path.isfile(p):
                raise DatasetError(f"missing {p}; {LAYOUT}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise DatasetError(f"num_classes must be an integer, got {num_classes!r}")
        num_classes = int(num_classes)
        if num_classes < 1:
            raise DatasetError(f"num_classes must be >= 1, got {num_classes}")

        synsets_file = os.path.join(info, "synsets.txt")
        wnids, names = parse_synsets(synsets_file)
        num_labels = min(len(wnids), MAX_LABEL + 1)
        if num_classes > num_labels:
            raise DatasetError(
                f"num_classes {num_classes} is larger than the {num_labels} classes "
                f"in {synsets_file}"
            )

        sources = [("google", "queries_google.txt", "train_filelist_google.txt")]
        if use_flickr and os.path.isfile(os.path.join(info, "train_filelist_flickr.txt")):
            if not os.path.isfile(os.path.join(info, "queries_flickr.txt")):
                raise DatasetError(
                    f"missing {os.path.join(info, 'queries_flickr.txt')}, needed to read "
                    f"{os.path.join(info, 'train_filelist_flickr.txt')}; {LAYOUT}"
                )
            sources.append(("flickr", "queries_flickr.txt", "train_filelist_flickr.txt"))

        query_ids: list[str] = []
        query_texts: list[str] = []
        query_sources: list[str] = []
        query_labels: list[np.ndarray] = []
        acc = ListAccumulator()
        map_file = os.path.join(info, "queries_synsets_map.txt")
        for source, queries_name, list_name in sources:
            queries = parse_queries(os.path.join(info, queries_name))
            offset = len(query_ids)
            labels = np.full(len(queries.folders), -1, dtype=np.int64)
            if source == "google" and os.path.isfile(map_file):
                for q, label in parse_query_map(map_file, queries, len(wnids)).items():
                    labels[q] = label
            n_before = len(acc)
            parse_list(os.path.join(info, list_name), num_labels, num_classes, acc,
                       queries=queries, query_offset=offset)
            if (labels < 0).any() and len(acc) > n_before:
                _label_by_images(labels, acc, n_before, offset)
            query_ids += queries.folders
            query_texts += queries.texts
            query_sources += [source] * len(queries.folders)
            query_labels.append(labels)
        train = SampleList(*acc.finish(), root)

        val_acc = ListAccumulator()
        parse_list(os.path.join(info, "val_filelist.txt"), num_labels, num_classes, val_acc)
        val = SampleList(*val_acc.finish(), os.path.join(root, VAL_DIR))

        present = np.bincount(train.labels, minlength=num_classes)
        missing = np.flatnonzero(present == 0)
        if len(missing):
            lists = " + ".join(os.path.join(info, s[2]) for s in sources)
            raise DatasetError(
                f"num_classes {num_classes} is larger than the classes present: {lists} "
                f"has images for {int((present > 0).sum())} of labels 0..{num_classes - 1} "
                f"(none for label {int(missing[0])}, {wnids[int(missing[0])]})"
            )
        return cls(
            root=root,
            num_classes=num_classes,
            wnids=wnids[:num_classes],
            class_names=names[:num_classes],
            train=train,
            val=val,
            query_ids=query_ids,
            query_texts=query_texts,
            query_sources=query_sources,
            query_labels=np.concatenate(query_labels),
            sources=tuple(s[0] for s in sources),
        )

    # ------------------------------------------------------------------ statistics

    def _selected_queries(self) -> np.ndarray:
        return np.flatnonzero((self.query_labels >= 0) & (self.query_labels < self.num_classes))

    def class_stats(self) -> list[ClassStats]:
        train = np.bincount(self.train.labels, minlength=self.num_classes)
        val = np.bincount(self.val.labels, minlength=self.num_classes)
        selected = self.query_labels[self._selected_queries()]
        queries = np.bincount(selected, minlength=self.num_classes)
        return [
            ClassStats(
                label=c,
                wnid=self.wnids[c],
                name=self.class_names[c],
                train_images=int(train[c]),
                val_images=int(val[c]),
                queries=int(queries[c]),
            )
            for c in range(self.num_classes)
        ]

    def query_stats(self) -> list[QueryStats]:
        known = self.train.queries[self.train.queries >= 0]
        images = np.bincount(known, minlength=len(self.query_ids))
        return [
            QueryStats(
                query_id=self.query_ids[q],
                source=self.query_sources[q],
                text=self.query_texts[q],
                label=int(self.query_labels[q]),
                class_name=self.class_names[int(self.query_labels[q])],
                images=int(images[q]),
            )
            for q in self._selected_queries()
        ]

    def summary(self) -> DatasetSummary:
        per_class = np.bincount(self.train.labels, minlength=self.num_classes)
        lo, hi = int(per_class.min()), int(per_class.max())
        return DatasetSummary(
            root=self.root,
            num_classes=self.num_classes,
            sources=self.sources,
            train_images=len(self.train),
            val_images=len(self.val),
            queries=len(self._selected_queries()),
            min_per_class=lo,
            mean_per_class=float(per_class.mean()),
            max_per_class=hi,
            min_class=int(per_class.argmin()),
            max_class=int(per_class.argmax()),
            imbalance=hi / lo if lo else float("inf"),
        )
