"""The parser of the WebVision image lists (`*_filelist*.txt`), byte by byte.

A train list is a million lines of `google/q0001/000000.jpg 0`. Read the usual way
(`readlines()`, `split()`, one str and one int per line) that costs about 190 MB of Python
objects and is slow; worse, the resulting list of a million str objects is copied page by
page into every DataLoader worker by reference counting (pytorch/pytorch#13246). So the lists
are parsed as bytes, in fixed-size chunks, with vectorised numpy operations over whole chunks:
the output is one uint8 buffer of paths plus offset, label and query arrays, and no line ever
becomes a Python object unless it fails the fast checks, when it is re-read in Python to say
exactly what is wrong with it. Measured by `python bench/index.py --lines 1000000 --repeat 1`
(2 shared cores, 2026-11-30), against `readlines()` + `split()` of the same lists:
    all 1000 classes (1,000,000 lines kept)   0.46x the time, 0.28x the traced peak, 0.13x RSS
    mini-WebVision, 50 classes (49,909 kept)  0.22x the time, 0.11x the traced peak, 0.05x RSS
(bench/RESULTS.md has the table.)

The official line shape (../shared/DESIGN.md section 3) is `google/q0001/000000.jpg 0`: a
path relative to the root, whose folder `q%04d` names the query, and a label 0..999. A UTF-8
byte-order mark, CRLF endings, whitespace-only lines and extra blanks around the two fields
are tolerated. The small info files (synsets, queries) are read as text by core.infofiles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from core.infofiles import Queries

# Bytes read per parsing step: large enough that numpy amortises the Python loop, small enough
# that the per-byte temporaries stay a few MB whatever the file size.
CHUNK_BYTES = 1 << 20
BOM = b"\xef\xbb\xbf"
NEWLINE = ord("\n")
CR = ord("\r")
SPACE = ord(" ")
TAB = ord("\t")
DOT = ord(".")
SLASH = ord("/")
BACKSLASH = ord("\\")
COLON = ord(":")
ZERO = ord("0")
QUERY_PREFIX = ord("q")
# Labels are 0..999; one more digit lets an out-of-range label reach the message that names it.
LABEL_DIGITS = 4
# Query numbers parsed by the vectorised path fit an int64; longer ones take the Python path.
NUMBER_DIGITS = 18
# int() of a long digit string is quadratic (and refused past 4300 digits): cap what is parsed.
MAX_NUMBER_TEXT = 40


class DatasetError(ValueError):
    """A dataset problem the user must fix; the message is one line, naming the file at fault."""


class ListAccumulator:
    """Growing outputs of the list parser; chunks stay small dtypes until the final arrays."""

    def __init__(self) -> None:
        self.paths = bytearray()
        self.lengths: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.queries: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(x) for x in self.labels)

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(path bytes uint8, offsets int64 [n+1], labels int64, queries int32)."""
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
        return paths, offsets, labels, queries


@dataclass
class _ListSpec:
    file: str
    num_labels: int
    keep_below: int
    queries: Queries | None
    query_offset: int  # added to a query position to make it global over all sources
    table: tuple[np.ndarray, np.ndarray, np.ndarray] | None


def _parse_line(line: bytes, lineno: int, spec: _ListSpec) -> tuple[int, int, int, int] | None:
    """(path offset and length in bytes, label, query position) of one line, None if blank.

    The slow path for the few lines the vectorised pass could not vouch for; it also accepts
    what a `line.split()` reader would (extra spaces or tabs around the two fields).
    """
    text = line.decode("utf-8", "surrogateescape")
    where = f"{spec.file}:{lineno}"
    parts = text.split()
    if not parts:
        return None
    if len(parts) != 2:
        raise DatasetError(f"{where}: malformed line {text!r}; expected '<relative path> <label>'")
    path, label_text = parts
    if not re.fullmatch(r"-?\d+", label_text):
        raise DatasetError(
            f"{where}: malformed label {label_text!r}; expected an integer 0..{spec.num_labels - 1}"
        )
    label = int(label_text) if len(label_text) <= MAX_NUMBER_TEXT else -1
    if not 0 <= label < spec.num_labels:
        shown = label_text if len(label_text) <= MAX_NUMBER_TEXT else label_text[:20] + "..."
        raise DatasetError(f"{where}: label {shown} outside 0..{spec.num_labels - 1}")
    if path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", path):
        raise DatasetError(
            f"{where}: path {path!r} is absolute; list paths must be relative; refused"
        )
    if ".." in re.split(r"[/\\]", path):
        raise DatasetError(f"{where}: path {path!r} escapes the dataset root ('..'); refused")
    q = -1
    if spec.queries is not None and label < spec.keep_below:
        comps = path.split("/")
        if len(comps) < 3:
            raise DatasetError(
                f"{where}: path {path!r} has no query folder; expected '<source>/qNNNN/<file>'"
            )
        q = spec.queries.lookup(comps[1])
        if q < 0:
            raise DatasetError(
                f"{where}: query folder {comps[1]!r} has no entry in {spec.queries.file}"
            )
    raw = path.encode("utf-8", "surrogateescape")
    return line.index(raw), len(raw), label, q


def _parse_digits(buf: np.ndarray, end: np.ndarray, length: np.ndarray | int, width: int):
    """Decimal value of buf[end-length:end] per row (length <= width), and a non-digit mask."""
    dtype = np.int32 if width <= 9 else np.int64  # labels stay small: less memory traffic
    value = np.zeros(len(end), dtype=dtype)
    bad = np.zeros(len(end), dtype=bool)
    scale = 1
    for k in range(1, width + 1):  # from the last digit, so rows need no alignment
        digit = buf[np.maximum(end - k, 0)].astype(dtype) - ZERO
        if isinstance(length, int):  # the same length on every row: no masking
            bad |= (digit < 0) | (digit > 9)
            value += digit * scale
        else:
            present = k <= length
            bad |= present & ((digit < 0) | (digit > 9))
            value += np.where(present, digit * scale, 0)
        scale *= 10
    return value, bad


def _query_positions(buf: np.ndarray, chunk: bytes, starts, sep, rows, spec: _ListSpec):
    """Query positions of `rows` from their folder `qNNNN` (-1 where the fast path cannot tell).

    Lists are regular ("google/q0001/000000.jpg"), so the slashes of the first line usually sit
    at the same offsets in every line; lines that differ take the slow path.
    """
    s, e = int(starts[rows[0]]), int(sep[rows[0]])
    d1 = chunk.find(b"/", s, e) - s
    d2 = chunk.find(b"/", s + d1 + 1, e) - s if d1 > 0 else -1
    digits = d2 - d1 - 2
    if not (d1 > 0 and 0 < digits <= NUMBER_DIGITS):
        return np.full(len(rows), -1, dtype=np.int64)
    rs = starts[rows]
    ok = (d2 < sep[rows] - rs) & (buf[rs + d1] == SLASH) & (buf[rs + d2] == SLASH)
    for k in range(d1):
        ok &= buf[rs + k] != SLASH
    ok &= buf[rs + d1 + 1] == QUERY_PREFIX
    number, nondigit = _parse_digits(buf, rs + d2, digits, digits)
    ok &= ~nondigit
    numbers, positions, lengths = spec.table
    if len(numbers) == 0:
        return np.full(len(rows), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(numbers, number), len(numbers) - 1)
    q = np.where(numbers[at] == number, positions[at], -1)
    # "q01" is not the folder of "q0001": the folder must be spelled as the queries file implies.
    ok &= (q >= 0) & (lengths[np.maximum(q, 0)] == digits + 1)
    return np.where(ok, q, -1)


def _parse_chunk(chunk: bytes, first_lineno: int, spec: _ListSpec, acc: ListAccumulator) -> int:
    """Parse whole lines (the chunk ends with a newline) into acc; returns the lines read."""
    buf = np.frombuffer(chunk, dtype=np.uint8)
    last = len(buf) - 1
    ends = np.flatnonzero(buf == NEWLINE)
    n_lines = len(ends)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    cr = (ends > starts) & (buf[ends - 1] == CR)
    n_cr = int(cr.sum())
    ends = ends - cr
    lineno = np.arange(first_lineno, first_lineno + n_lines)
    nonblank = ends > starts
    if not nonblank.all():
        starts, ends, lineno = starts[nonblank], ends[nonblank], lineno[nonblank]

    # The separator is among a line's last LABEL_DIGITS + 1 bytes: per-line lookups instead of
    # a scan of every byte.
    sep = np.full(len(starts), -1, dtype=np.int64)
    for k in range(2, LABEL_DIGITS + 2):
        pos = ends - k
        c = buf[np.maximum(pos, 0)]
        hit = (sep < 0) & (pos > starts) & ((c == SPACE) | (c == TAB))
        sep[hit] = pos[hit]
    bad = sep < 0
    # One count over the chunk proves no line holds other whitespace or control bytes.
    if np.count_nonzero(buf <= SPACE) != n_lines + n_cr + int((~bad).sum()):
        ws = np.flatnonzero(buf <= SPACE)
        bad |= np.searchsorted(ws, ends) - np.searchsorted(ws, starts) != 1
    label_len = ends - sep - 1
    label, nondigit = _parse_digits(buf, ends, np.where(bad, 0, label_len), LABEL_DIGITS)
    bad |= nondigit | (label >= spec.num_labels)
    first = buf[starts]
    bad |= (first == SLASH) | (first == BACKSLASH) | (buf[np.minimum(starts + 1, last)] == COLON)
    dots = buf == DOT
    if (dots[1:] & dots[:-1]).any():
        # Rare enough that Python can look at the few lines holding "..".
        for j in np.flatnonzero(~bad):
            p = chunk[starts[j] : sep[j]]
            if b".." in p and b".." in re.split(rb"[/\\]", p):
                bad[j] = True

    qidx = np.full(len(starts), -1, dtype=np.int64)
    if spec.queries is not None:
        rows = np.flatnonzero(~bad & (label < spec.keep_below))
        if len(rows):
            q = _query_positions(buf, chunk, starts, sep, rows, spec)
            qidx[rows] = q
            bad[rows[q < 0]] = True

    blank = np.zeros(len(starts), dtype=bool)
    for j in np.flatnonzero(bad):
        parsed = _parse_line(chunk[starts[j] : ends[j]], int(lineno[j]), spec)
        if parsed is None:
            blank[j] = True
            continue
        offset, length, label[j], qidx[j] = parsed
        starts[j] += offset
        sep[j] = starts[j] + length

    keep = (label < spec.keep_below) & ~blank
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
    if spec.queries is not None:
        qidx = np.where(qidx >= 0, qidx + spec.query_offset, -1)
    acc.queries.append(qidx[keep].astype(np.int32))
    return n_lines


def parse_list(
    path: str,
    num_labels: int,
    keep_below: int,
    acc: ListAccumulator,
    queries: Queries | None = None,
    query_offset: int = 0,
) -> None:
    """Parse '<relative path> <label>' lines into acc, keeping those with label < keep_below.

    With `queries`, each kept line's folder `<source>/qNNNN/` must name one of them; its
    position plus `query_offset` is the line's query.
    """
    spec = _ListSpec(path, num_labels, keep_below, queries, query_offset,
                     queries.table() if queries is not None else None)
    lineno = 1
    carry = b""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}") from None
    with f:
        head = f.read(len(BOM))
        carry = b"" if head == BOM else head
        while True:
            data = f.read(CHUNK_BYTES)
            if not data:
                break
            chunk = carry + data if carry else data
            cut = chunk.rfind(b"\n") + 1
            carry = chunk[cut:]
            if cut:
                lineno += _parse_chunk(chunk[:cut] if cut < len(chunk) else chunk, lineno, spec, acc)
        if carry:
            _parse_chunk(carry + b"\n", lineno, spec, acc)

