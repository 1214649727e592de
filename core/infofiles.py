"""The small WebVision info/ files, read as text: synsets, queries, and the query-synset map.

Official line shapes (../shared/DESIGN.md section 3), each tolerated with a UTF-8 byte-order
mark and whitespace-only lines:
    synsets.txt               n01440764 tench, Tinca tinca   line i+1 = label i
    queries_{google,flickr}   1 tench                        query 1's images are in folder q0001
    queries_synsets_map.txt   1 1                            query number, synset index 1-based
Query numbers are also accepted in the folder form (`q0001 tench`). They are kept in dicts and
sorted arrays, never in arrays indexed by number: a query numbered 99999999999 costs one entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from core.listfile import MAX_NUMBER_TEXT, NUMBER_DIGITS, DatasetError

_QUERY_ID = re.compile(r"q?(\d+)\Z")


def read_text_lines(path: str) -> list[str]:
    """The lines of a small info file (BOM dropped); DatasetError naming the file if unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not valid UTF-8") from None


def parse_synsets(path: str) -> tuple[list[str], list[str]]:
    """wnids and class names; whitespace-only lines are skipped, as a `split()` reader does."""
    wnids, names = [], []
    for line in read_text_lines(path):
        parts = line.strip().split(None, 1)
        if parts:
            wnids.append(parts[0])
            names.append(parts[1].strip() if len(parts) > 1 else parts[0])
    if not wnids:
        raise DatasetError(f"{path}: no synsets; expected one '<wnid> <class name>' line per class")
    return wnids, names


def _query_number(text: str) -> int | None:
    m = _QUERY_ID.match(text)
    return int(m.group(1)) if m and len(text) <= MAX_NUMBER_TEXT else None


@dataclass
class Queries:
    """One queries file: folder names (`q0001`), texts, and query number -> position."""

    file: str
    folders: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    by_number: dict[int, int] = field(default_factory=dict)

    def lookup(self, folder: str) -> int:
        """Position of the query whose images live in `folder`, -1 if none."""
        number = _query_number(folder) if folder.startswith("q") else None
        q = self.by_number.get(number, -1) if number is not None else -1
        return q if q >= 0 and self.folders[q] == folder else -1

    def table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted query numbers, their positions, folder name lengths by position) for numpy.

        Numbers beyond int64 are left to lookup().
        """
        small = {n: q for n, q in self.by_number.items() if n < 10**NUMBER_DIGITS}
        numbers = np.array(sorted(small), dtype=np.int64)
        positions = np.array([small[n] for n in numbers.tolist()], dtype=np.int64)
        lengths = np.array([len(f) for f in self.folders], dtype=np.int64)
        return numbers, positions, lengths


def parse_queries(path: str) -> Queries:
    """`<number> <text>` lines, the number plain (`1 tench`, official) or as `q0001`."""
    out = Queries(path)
    for lineno, line in enumerate(read_text_lines(path), 1):
        parts = line.strip().split(None, 1)
        if not parts:
            continue
        number = _query_number(parts[0])
        if number is None:
            raise DatasetError(
                f"{path}:{lineno}: malformed line {line!r}; expected '<query number> <text>' "
                f"(like '1 tench')"
            )
        if number in out.by_number:
            raise DatasetError(f"{path}:{lineno}: duplicate query number {parts[0]!r}")
        out.by_number[number] = len(out.folders)
        # The official files give plain numbers and the tree names folders "q%04d" % number.
        out.folders.append(parts[0] if parts[0].startswith("q") else f"q{number:04d}")
        out.texts.append(parts[1].strip() if len(parts) > 1 else "")
    return out


def parse_query_map(path: str, queries: Queries, num_synsets: int) -> dict[int, int]:
    """Query position -> 0-based label, from `<query number> <synset index, 1-based>` lines."""
    result = {}
    for lineno, line in enumerate(read_text_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        number = _query_number(parts[0]) if len(parts) == 2 else None
        if number is None or not parts[1].isdigit() or len(parts[1]) > MAX_NUMBER_TEXT:
            raise DatasetError(
                f"{path}:{lineno}: malformed line {line!r}; expected '<query number> <synset index>'"
            )
        synset = int(parts[1])
        if not 1 <= synset <= num_synsets:
            raise DatasetError(
                f"{path}:{lineno}: synset index {synset} outside 1..{num_synsets} (it is 1-based)"
            )
        q = queries.by_number.get(number)
        if q is not None:
            result[q] = synset - 1
    return result
