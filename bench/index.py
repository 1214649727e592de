"""Index build time and peak memory against a plain Python parse of the same full-scale lists.

    python bench/index.py [--lines 1000000] [--num-classes 1000 50] [--repeat 3]

Writes a WebVision-Google-sized info/ (1000 classes, 1632 queries, about a million train lines,
50,000 val lines; no images) to a temporary directory, then runs each parser in its own fresh
subprocess, side by side in one run:
  plain    the reference loader's shape: readlines(), split() each line, lists of str and int
  stream   a leaner plain parse: iterate the file, keep only the selected lines as lists
  index    core.webvision.WebVisionIndex.load (core.listfile's chunked numpy parse into arrays
           + one path buffer)
Time is the best of --repeat parses; memory is the peak of Python/numpy allocations
(tracemalloc, in a separate subprocess so tracing does not slow the timed one) and the growth
of the process's peak RSS over its RSS before parsing.
Target: index no slower than plain, with at most a third of its peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_lists(root: str, lines: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    info = os.path.join(root, "info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "synsets.txt"), "w") as f:
        f.writelines(f"n{i:08d} class number {i}, a synset\n" for i in range(1000))
    # Every class gets one query, the other 632 go to random classes: 1632 like WebVision.
    query_label = np.concatenate([np.arange(1000), rng.integers(0, 1000, 632)])
    with open(os.path.join(info, "queries_google.txt"), "w") as f:
        # The official shapes: plain query numbers here, folders "q%04d" % number in the lists.
        f.writelines(f"{q + 1} query text for class {query_label[q]}\n" for q in range(1632))
    with open(os.path.join(info, "queries_synsets_map.txt"), "w") as f:
        f.writelines(f"{q + 1} {query_label[q] + 1}\n" for q in range(1632))
    # At least one image per query, so that every class has images and any N can be selected.
    per_query = 1 + rng.multinomial(lines - 1632, rng.dirichlet(np.full(1632, 2.0)))
    with open(os.path.join(info, "train_filelist_google.txt"), "w") as f:
        for q, n in enumerate(per_query):
            label = query_label[q]
            f.write("".join(f"google/q{q + 1:04d}/{k:06d}.jpg {label}\n" for k in range(n)))
    with open(os.path.join(info, "val_filelist.txt"), "w") as f:
        f.writelines(f"val{i + 1:06d}.jpg {i // 50}\n" for i in range(50_000))


# Each parser runs in a child: `python bench/index.py --child METHOD ROOT N MODE`.
def _plain(root: str, n: int):
    out = []
    for name in ("train_filelist_google.txt", "val_filelist.txt"):
        with open(os.path.join(root, "info", name)) as f:
            lines = f.readlines()
        paths, labels = [], []
        for line in lines:
            path, label = line.split()
            label = int(label)
            if label < n:
                paths.append(path)
                labels.append(label)
        out.append((paths, labels))
    return out


def _stream(root: str, n: int):
    out = []
    for name in ("train_filelist_google.txt", "val_filelist.txt"):
        paths, labels = [], []
        with open(os.path.join(root, "info", name)) as f:
            for line in f:
                path, label = line.split()
                label = int(label)
                if label < n:
                    paths.append(path)
                    labels.append(label)
        out.append((paths, labels))
    return out


def _index(root: str, n: int):
    from core.webvision import WebVisionIndex

    return WebVisionIndex.load(root, num_classes=n)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(method: str, root: str, n: int, mode: str, repeat: int) -> dict:
    import resource
    import tracemalloc

    sys.path.insert(0, REPO)
    import core.webvision  # noqa: F401  (imports are not the parse's cost)

    fn = {"plain": _plain, "stream": _stream, "index": _index}[method]
    if mode == "time":
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            result = fn(root, n)
            best = min(best, time.perf_counter() - t0)
            del result
        return {"seconds": best}
    before = _rss()
    tracemalloc.start()
    result = fn(root, n)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kept = len(result.train) if method == "index" else len(result[0][0])
    return {"traced_peak": peak, "rss_growth": max(peak_rss - before, 0), "train_kept": kept}


def run_child(method: str, root: str, n: int, mode: str, repeat: int) -> dict:
    script = os.path.abspath(__file__)
    args = [sys.executable, script, "--child", method, root, str(n), mode, str(repeat)]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{method} parser failed ({mode} run):\n{out.stderr}")
    return json.loads(out.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--num-classes", type=int, nargs="+", default=[1000, 50])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.lines < 1632:
        p.error("--lines must be at least 1632 (one image per query)")
    if a.child:
        method, root, n, mode, repeat = a.child
        print(json.dumps(child(method, root, int(n), mode, int(repeat))))
        return 0

    with tempfile.TemporaryDirectory(prefix="wvtui-bench-index-") as root:
        t0 = time.perf_counter()
        write_lists(root, a.lines)
        size = os.path.getsize(os.path.join(root, "info", "train_filelist_google.txt"))
        print(f"generated {a.lines:,} train lines ({size / 2**20:.1f} MiB), 1632 queries, "
              f"1000 classes, 50,000 val lines in {time.perf_counter() - t0:.1f}s")
        print(f"{'classes':>7} {'parser':>6} {'kept':>9} {'time s':>7} {'x plain':>7} "
              f"{'traced MiB':>10} {'x plain':>7} {'RSS+ MiB':>8} {'x plain':>7}")
        ok = True
        for n in a.num_classes:
            rows = {}
            for method in ("plain", "stream", "index"):
                rows[method] = run_child(method, root, n, "time", a.repeat)
                rows[method].update(run_child(method, root, n, "memory", 1))
            base = rows["plain"]
            for method, r in rows.items():
                print(
                    f"{n:>7} {method:>6} {r['train_kept']:>9,} {r['seconds']:>7.3f} "
                    f"{r['seconds'] / base['seconds']:>7.2f} {r['traced_peak'] / 2**20:>10.1f} "
                    f"{r['traced_peak'] / base['traced_peak']:>7.2f} {r['rss_growth'] / 2**20:>8.1f} "
                    f"{r['rss_growth'] / max(base['rss_growth'], 1):>7.2f}"
                )
            idx = rows["index"]
            met = (
                idx["seconds"] <= base["seconds"]
                and idx["traced_peak"] <= base["traced_peak"] / 3
                and idx["rss_growth"] <= base["rss_growth"] / 3
            )
            ok &= met
            print(f"{'':>7} target (index time <= plain, memory <= plain/3): {'met' if met else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
