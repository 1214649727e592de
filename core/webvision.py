"""The WebVision 1.0 layout on disk: which images exist, their labels and queries, and statistics.

    index = WebVisionIndex.load("/data/webvision", num_classes=50)   # mini-WebVision
    index.train.path(0), int(index.train.labels[0]), index.summary().to_dict()

Samples live in numpy arrays and one uint8 buffer of paths, never in per-sample Python objects:
DataLoader workers touching a list of a million str objects would copy it page by page through
reference counting (pytorch/pytorch#13246). Lists are parsed in fixed-size chunks with vectorised
numpy operations, so a million-line list costs less time and far less memory than
`readlines()`; a line that fails the fast checks is re-read in Python to say exactly what is
wrong with it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

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
# Bytes read per parsing step: large enough that numpy amortises the Python loop, small enough
# that the per-byte temporaries stay a few MB whatever the file size.
_CHUNK = 1 << 20
_QUERY_ID = re.compile(r"q(\d+)\Z")


class DatasetError(ValueError):
    """A dataset problem the user must fix; the message is one line, naming the file at fault."""


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

    @classmethod
    def empty(cls, base: str) -> SampleList:
        return cls(
            np.zeros(0, np.uint8),
            np.zeros(1, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.int32),
            base,
        )


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
    query_id: str  # "q0001"
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


# --------------------------------------------------------------------------- small info files


def _read_text_lines(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not valid UTF-8") from None


def _parse_synsets(path: str) -> tuple[list[str], list[str]]:
    wnids, names = [], []
    lines = _read_text_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        parts = line.strip().split(None, 1)
        if not parts:
            raise DatasetError(f"{path}:{lineno}: empty line; expected '<wnid> <class name>'")
        wnids.append(parts[0])
        names.append(parts[1].strip() if len(parts) > 1 else parts[0])
    if not wnids:
        raise DatasetError(f"{path}: no synsets; expected one '<wnid> <class name>' line per class")
    return wnids, names


def _parse_queries(path: str) -> tuple[list[str], list[str], dict[int, int]]:
    """Query ids and texts in file order, and query number -> position."""
    ids, texts, by_number = [], [], {}
    for lineno, line in enumerate(_read_text_lines(path), 1):
        if not line.strip():
            continue
        parts = line.strip().split(None, 1)
        m = _QUERY_ID.match(parts[0])
        if m is None:
            raise DatasetError(
                f"{path}:{lineno}: malformed line {line!r}; expected '<query id like q0001> <text>'"
            )
        number = int(m.group(1))
        if number in by_number:
            raise DatasetError(f"{path}:{lineno}: duplicate query id {parts[0]!r}")
        by_number[number] = len(ids)
        ids.append(parts[0])
        texts.append(parts[1].strip() if len(parts) > 1 else "")
    return ids, texts, by_number


def _parse_query_map(path: str, by_number: dict[int, int], num_synsets: int) -> dict[int, int]:
    """Query position -> 0-based label. Accepts 'q0001 1' and the plain '1 1' form."""
    result = {}
    for lineno, line in enumerate(_read_text_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DatasetError(
                f"{path}:{lineno}: malformed line {line!r}; expected '<query id> <synset index>'"
            )
        m = _QUERY_ID.match(parts[0])
        number_text = m.group(1) if m else parts[0]
        if not number_text.isdigit() or not parts[1].isdigit():
            raise DatasetError(
                f"{path}:{lineno}: malformed line {line!r}; expected '<query id> <synset index>'"
            )
        synset = int(parts[1])
        if not 1 <= synset <= num_synsets:
            raise DatasetError(
                f"{path}:{lineno}: synset index {synset} outside 1..{num_synsets} (it is 1-based)"
            )
        q = by_number.get(int(number_text))
        if q is not None:
            result[q] = synset - 1
    return result


# --------------------------------------------------------------------------- list files


@dataclass
class _QueryTable:
    """How the folder 'qNNNN' of a list path maps to a global query index."""

    file: str  # the queries file, for messages
    index_by_number: np.ndarray  # query number -> query index in its file, -1 if absent
    id_length: np.ndarray  # query index -> len("q0001"), so that "q01" is not "q0001"
    offset: int  # added to make the index global over all sources

    def lookup(self, folder: str) -> int:
        m = _QUERY_ID.match(folder)
        if m is None:
            return -1
        number = int(m.group(1))
        q = int(self.index_by_number[number]) if number < len(self.index_by_number) else -1
        return q if q >= 0 and self.id_length[q] == len(folder) else -1


class _Accumulator:
    """Growing outputs of the list parser; chunks stay small dtypes until the final arrays."""

    def __init__(self) -> None:
        self.paths = bytearray()
        self.lengths: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.queries: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(x) for x in self.labels)

    def finish(self, base: str) -> SampleList:
        # Each chunk list is dropped as soon as its final array exists, to keep the peak low.
        n = len(self)
        offsets = np.zeros(n + 1, dtype=np.int64)
        if n:
            np.concatenate(self.lengths, out=offsets[1:])
            np.cumsum(offsets[1:], out=offsets[1:])
        self.lengths = []
        labels = np.concatenate(self.labels, dtype=np.int64) if n else np.zeros(0, np.int64)
        self.labels = []
        queries = np.concatenate(self.queries, dtype=np.int32) if n else np.zeros(0, np.int32)
        self.queries = []
        paths = np.frombuffer(self.paths, dtype=np.uint8) if self.paths else np.zeros(0, np.uint8)
        self.paths = bytearray()
        return SampleList(paths, offsets, labels, queries, base)


def _parse_line(
    line: bytes,
    file: str,
    lineno: int,
    num_labels: int,
    keep_below: int,
    queries: _QueryTable | None,
) -> tuple[int, int, int, int]:
    """(path offset and length in bytes, label, query index) of one line, or the DatasetError.

    The slow path for the few lines the vectorised pass could not vouch for; it also accepts
    what a `line.split()` reader would (extra spaces or tabs around the two fields).
    """
    text = line.decode("utf-8", "surrogateescape")
    where = f"{file}:{lineno}"
    parts = text.split()
    if len(parts) != 2:
        raise DatasetError(f"{where}: malformed line {text!r}; expected '<relative path> <label>'")
    path, label_text = parts
    if not re.fullmatch(r"-?\d+", label_text):
        raise DatasetError(
            f"{where}: malformed label {label_text!r}; expected an integer 0..{num_labels - 1}"
        )
    label = int(label_text)
    if not 0 <= label < num_labels:
        raise DatasetError(f"{where}: label {label} outside 0..{num_labels - 1}")
    if path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", path):
        raise DatasetError(
            f"{where}: path {path!r} is absolute; list paths must be relative; refused"
        )
    if ".." in re.split(r"[/\\]", path):
        raise DatasetError(f"{where}: path {path!r} escapes the dataset root ('..'); refused")
    q = -1
    if queries is not None and label < keep_below:
        comps = path.split("/")
        if len(comps) < 3:
            raise DatasetError(
                f"{where}: path {path!r} has no query folder; expected '<source>/qNNNN/<file>'"
            )
        q = queries.lookup(comps[1])
        if q < 0:
            raise DatasetError(f"{where}: query folder {comps[1]!r} has no entry in {queries.file}")
    raw = path.encode("utf-8", "surrogateescape")
    return line.index(raw), len(raw), label, q


def _parse_digits(buf: np.ndarray, end: np.ndarray, length: np.ndarray | int, width: int):
    """Decimal value of buf[end-length:end] per row (length <= width), and a non-digit mask."""
    value = np.zeros(len(end), dtype=np.int32)
    bad = np.zeros(len(end), dtype=bool)
    scale = 1
    for k in range(1, width + 1):  # from the last digit, so rows need no alignment
        digit = buf[np.maximum(end - k, 0)].astype(np.int32) - 48
        if isinstance(length, int):  # the same length on every row: no masking
            bad |= (digit < 0) | (digit > 9)
            value += digit * scale
        else:
            present = k <= length
            bad |= present & ((digit < 0) | (digit > 9))
            value += np.where(present, digit * scale, 0)
        scale *= 10
    return value, bad


def _parse_chunk(
    chunk: bytes,
    first_lineno: int,
    file: str,
    num_labels: int,
    keep_below: int,
    queries: _QueryTable | None,
    acc: _Accumulator,
) -> int:
    """Parse whole lines (the chunk ends with a newline) into acc; returns the lines read."""
    buf = np.frombuffer(chunk, dtype=np.uint8)
    last = len(buf) - 1
    ends = np.flatnonzero(buf == 10)
    n_lines = len(ends)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    cr = (ends > starts) & (buf[ends - 1] == 13)
    n_cr = int(cr.sum())
    ends = ends - cr
    lineno = np.arange(first_lineno, first_lineno + n_lines)
    nonblank = ends > starts
    if not nonblank.all():
        starts, ends, lineno = starts[nonblank], ends[nonblank], lineno[nonblank]

    # Labels have at most 4 digits (0..999 and a little beyond, to report out-of-range), so the
    # separator is among a line's last 5 bytes: per-line lookups instead of a scan of every byte.
    sep = np.full(len(starts), -1, dtype=np.int64)
    for k in range(2, 6):
        pos = ends - k
        c = buf[np.maximum(pos, 0)]
        hit = (sep < 0) & (pos > starts) & ((c == 32) | (c == 9))
        sep[hit] = pos[hit]
    bad = sep < 0
    # One count over the chunk proves no line holds other whitespace or control bytes.
    if np.count_nonzero(buf <= 32) != n_lines + n_cr + int((~bad).sum()):
        ws = np.flatnonzero(buf <= 32)
        bad |= np.searchsorted(ws, ends) - np.searchsorted(ws, starts) != 1
    label_len = ends - sep - 1
    label, nondigit = _parse_digits(buf, ends, np.where(bad, 0, label_len), 4)
    bad |= nondigit | (label >= num_labels)
    first = buf[starts]
    bad |= (first == 47) | (first == 92) | (buf[np.minimum(starts + 1, last)] == 58)
    dots = buf == 46
    if (dots[1:] & dots[:-1]).any():
        # Rare enough that Python can look at the few lines holding "..".
        for j in np.flatnonzero(~bad):
            p = chunk[starts[j] : sep[j]]
            if b".." in p and b".." in re.split(rb"[/\\]", p):
                bad[j] = True

    qidx = np.full(len(starts), -1, dtype=np.int64)
    if queries is not None:
        rows = np.flatnonzero(~bad & (label < keep_below))
        if len(rows):
            # Lists are regular ("google/q0001/000000.jpg"), so the slashes of the first line
            # usually sit at the same offsets in every line; lines that differ take the slow path.
            s, e = int(starts[rows[0]]), int(sep[rows[0]])
            d1 = chunk.find(b"/", s, e) - s
            d2 = chunk.find(b"/", s + d1 + 1, e) - s if d1 > 0 else -1
            ok = np.zeros(len(rows), dtype=bool)
            if 0 < d1 and d1 + 2 < d2 <= d1 + 11:
                rs = starts[rows]
                ok = (d2 < sep[rows] - rs) & (buf[rs + d1] == 47) & (buf[rs + d2] == 47)
                for k in range(d1):
                    ok &= buf[rs + k] != 47
                ok &= buf[rs + d1 + 1] == ord("q")
                number, nondigit = _parse_digits(buf, rs + d2, d2 - d1 - 2, d2 - d1 - 2)
                ok &= ~nondigit
                table = queries.index_by_number
                q = np.where(number < len(table), table[np.minimum(number, len(table) - 1)], -1)
                ok &= (q >= 0) & (queries.id_length[np.maximum(q, 0)] == d2 - d1 - 1)
                qidx[rows] = np.where(ok, q, -1)
            bad[rows[~ok]] = True

    for j in np.flatnonzero(bad):
        offset, length, label[j], qidx[j] = _parse_line(
            chunk[starts[j] : ends[j]], file, int(lineno[j]), num_labels, keep_below, queries
        )
        starts[j] += offset
        sep[j] = starts[j] + length

    keep = label < keep_below
    ks, ksep = starts[keep], sep[keep]
    if len(ks):
        # Byte runs alternate outside/inside a kept path; repeating a [F, T, F, ...] pattern by
        # the run lengths gives the mask that gathers every path in one boolean index.
        runs = np.empty(2 * len(ks) + 1, dtype=np.int64)
        runs[0] = ks[0]
        runs[1::2] = ksep - ks
        runs[2:-1:2] = ks[1:] - ksep[:-1]
        runs[-1] = len(buf) - ksep[-1]
        pattern = np.zeros(len(runs), dtype=bool)
        pattern[1::2] = True
        acc.paths += memoryview(buf[np.repeat(pattern, runs)])
    acc.lengths.append((ksep - ks).astype(np.int32))
    acc.labels.append(label[keep].astype(np.int16))
    if queries is not None:
        qidx += queries.offset
    acc.queries.append(qidx[keep].astype(np.int32))
    return n_lines


def _parse_list(
    path: str,
    num_labels: int,
    keep_below: int,
    queries: _QueryTable | None,
    acc: _Accumulator,
) -> None:
    """Parse '<relative path> <label>' lines, keeping those with label < keep_below."""
    lineno = 1
    carry = b""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}") from None
    with f:
        while True:
            data = f.read(_CHUNK)
            if not data:
                break
            chunk = carry + data if carry else data
            cut = chunk.rfind(b"\n") + 1
            carry = chunk[cut:]
            if cut:
                lineno += _parse_chunk(
                    chunk[:cut] if cut < len(chunk) else chunk,
                    lineno, path, num_labels, keep_below, queries, acc,
                )
        if carry:
            _parse_chunk(carry + b"\n", lineno, path, num_labels, keep_below, queries, acc)


# --------------------------------------------------------------------------- the index


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
        wnids, names = _parse_synsets(synsets_file)
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
        acc = _Accumulator()
        for source, queries_name, list_name in sources:
            queries_file = os.path.join(info, queries_name)
            ids, texts, by_number = _parse_queries(queries_file)
            table = np.full(max(by_number, default=0) + 1, -1, dtype=np.int64)
            table[list(by_number)] = list(by_number.values())
            lengths = np.array([len(q) for q in ids] or [0], dtype=np.int64)
            offset = len(query_ids)
            labels = np.full(len(ids), -1, dtype=np.int64)
            map_file = os.path.join(info, "queries_synsets_map.txt")
            if source == "google" and os.path.isfile(map_file):
                for q, label in _parse_query_map(map_file, by_number, len(wnids)).items():
                    labels[q] = label
            n_before = len(acc)
            _parse_list(
                os.path.join(info, list_name),
                num_labels,
                num_classes,
                _QueryTable(queries_file, table, lengths, offset),
                acc,
            )
            unknown = labels < 0
            if unknown.any() and len(acc) > n_before:
                # Queries the map does not name take the most common label of their images.
                new_labels = np.concatenate(acc.labels)[n_before:].astype(np.int64)
                new_queries = np.concatenate(acc.queries)[n_before:] - offset
                counts = np.zeros((len(ids), num_classes), dtype=np.int64)
                np.add.at(counts, (new_queries, new_labels), 1)
                fill = unknown & (counts.sum(axis=1) > 0)
                labels[fill] = counts.argmax(axis=1)[fill]
            query_ids += ids
            query_texts += texts
            query_sources += [source] * len(ids)
            query_labels.append(labels)
        train = acc.finish(root)

        val_acc = _Accumulator()
        _parse_list(os.path.join(info, "val_filelist.txt"), num_labels, num_classes, None, val_acc)
        val = val_acc.finish(os.path.join(root, VAL_DIR))

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
