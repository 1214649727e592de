"""DataLoader worker memory over a full pass of a full-scale (one million entry) index.

    python bench/memory.py                          # 1,000,000 entries, workers on all cores
    python bench/memory.py --entries 20000 --variant-samples 5000 --workers 1   # in seconds

Writes a WebVision tree whose train list has --entries lines (1000 classes x 1000 queries x
1000 images): the query folders are symlinks to one folder of hardlinks to a few tiny JPEGs,
so a million distinct paths cost a few KB of disk. wvtui's index (numpy arrays and one path
buffer) is loaded with WebVisionIndex.load and read by make_loader's workers over one whole
shuffled epoch; the images are decoded and batched but not transformed (cheap on purpose: the
point is memory, not speed); each worker runs one full garbage collection early in the pass
(see CollectOnce). Worker RSS, USS and PSS are read at the start and end of the pass, and peak
RSS (VmHWM and probes) at the end. Target: worker RSS growth under 10% over the pass.

RSS counts the pages a worker shares with its parent, so copy-on-write (a shared page that
becomes private) does not move it; USS (private pages) is the figure that shows it. core.data's
worker init calls gc.freeze(), which this benchmark once showed is needed: a full garbage
collection in a worker otherwise writes to every inherited object, copying its page (+81 MB
USS per worker over a million samples, +1 MB with it). Side by side, for --variant-samples of
a shuffled order:
  reference list       the reference's index shape, a Python list of (path, label) tuples,
                       through the same decode and workers: reference counting writes to every
                       object a worker touches (pytorch/pytorch#13246). A random tenth of a
                       million objects touches nearly every page of the list (a 4 KiB page
                       holds a few dozen), so 100,000 shows what a full pass would.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as `python bench/memory.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Subset  # noqa: E402
from torchvision.io import ImageReadMode, decode_image, read_file  # noqa: E402

from bench.common import cores, machine_line, table  # noqa: E402
from core.data import ResumableSampler, WebVisionDataset, make_loader  # noqa: E402
from core.webvision import WebVisionIndex  # noqa: E402

TARGET = 0.10
MB = 1 << 20


def write_tree(root: str, entries: int, size: int) -> int:
    """A WebVision tree with `entries` train lines; returns the number of classes."""
    classes = 1000
    per_query = max(1, -(-entries // classes))
    info = os.path.join(root, "info")
    files = os.path.join(root, "google", "_files")
    os.makedirs(info)
    os.makedirs(files)
    os.makedirs(os.path.join(root, "val_images_256"))
    rng = np.random.default_rng(0)
    originals = []
    for k in range(8):
        p = os.path.join(root, f"original{k}.jpg")
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(p, quality=90)
        originals.append(p)
    for k in range(per_query):
        os.link(originals[k % len(originals)], os.path.join(files, f"{k:06d}.jpg"))
    os.link(originals[0], os.path.join(root, "val_images_256", "val000001.jpg"))
    with open(os.path.join(info, "synsets.txt"), "w") as f:
        f.writelines(f"n{i:08d} class {i}\n" for i in range(classes))
    with open(os.path.join(info, "queries_google.txt"), "w") as f:
        f.writelines(f"{q + 1} query {q}\n" for q in range(classes))  # official: plain numbers
    with open(os.path.join(info, "queries_synsets_map.txt"), "w") as f:
        f.writelines(f"{q + 1} {q + 1}\n" for q in range(classes))
    for q in range(classes):
        os.symlink("_files", os.path.join(root, "google", f"q{q + 1:04d}"))
    with open(os.path.join(info, "train_filelist_google.txt"), "w") as f:
        written = 0
        for q in range(classes):
            take = min(per_query, entries - written)
            if take <= 0:
                break
            f.write("".join(f"google/q{q + 1:04d}/{k:06d}.jpg {q}\n" for k in range(take)))
            written += take
    with open(os.path.join(info, "val_filelist.txt"), "w") as f:
        f.write("val000001.jpg 0\n")
    return classes


def as_is(img: torch.Tensor) -> torch.Tensor:
    return img


class CollectOnce(Dataset):
    """Delegates to `dataset`; each worker runs one full garbage collection after `after` samples.

    Python runs a full collection on its own somewhere in a long pass (here after about 45,000
    samples per worker; much later, if ever, once the inherited objects are frozen); forcing one
    puts the event that copies inherited pages inside every measured pass alike.
    """

    def __init__(self, dataset: Dataset, after: int = 5000) -> None:
        self.dataset = dataset
        self.after = after
        self.calls = 0  # per worker: each forked worker counts in its own copy

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        self.calls += 1
        if self.calls == self.after:
            gc.collect()
        return self.dataset[key]


class ReferenceIndexDataset(Dataset):
    """The reference's index shape: one Python (path, label) tuple per sample."""

    def __init__(self, items: list[tuple[str, int]], transform) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        path, label = self.items[i]
        img = decode_image(read_file(path), mode=ImageReadMode.RGB)
        return self.transform(img), label, -1


def mem(pid: int) -> dict[str, float]:
    p = psutil.Process(pid)
    full = p.memory_full_info()
    out = {"rss": full.rss / MB, "uss": full.uss / MB, "pss": getattr(full, "pss", float("nan")) / MB}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    out["hwm"] = int(line.split()[1]) / 1024
    except OSError:
        out["hwm"] = float("nan")
    return out


def run_pass(name: str, loader: DataLoader, probe_every: int) -> dict:
    me = psutil.Process()
    before = {c.pid for c in me.children()}
    it = iter(loader)
    first = next(it)
    seen = first[0].shape[0]
    workers = [c.pid for c in me.children() if c.pid not in before]
    start = {pid: mem(pid) for pid in workers}
    main_start = mem(os.getpid())
    peak_rss = {pid: start[pid]["rss"] for pid in workers}
    t0 = time.perf_counter()
    for k, batch in enumerate(it, 1):
        seen += batch[0].shape[0]
        if k % probe_every == 0:
            for pid in workers:
                peak_rss[pid] = max(peak_rss[pid], psutil.Process(pid).memory_info().rss / MB)
    elapsed = time.perf_counter() - t0
    end = {pid: mem(pid) for pid in workers}
    main_end = mem(os.getpid())
    del it
    return {"name": name, "samples": seen, "elapsed": elapsed, "workers": workers, "start": start,
            "end": end, "peak": peak_rss, "main_start": main_start, "main_end": main_end}


def rows_of(result: dict) -> list[list[object]]:
    rows = []
    ms, me = result["main_start"], result["main_end"]
    # The main process's USS and PSS are left out: they move when pages stop being shared (a
    # worker copying them, an earlier pass's workers exiting), not with what the main process does.
    rows.append([result["name"], "main", ms["rss"], me["rss"], f"{(me['rss'] / ms['rss'] - 1) * 100:+.1f}%",
                 "-", "-", "-", "-", me["hwm"]])
    for k, pid in enumerate(result["workers"]):
        s, e = result["start"][pid], result["end"][pid]
        growth = e["rss"] / s["rss"] - 1
        rows.append([result["name"], f"worker {k}", s["rss"], e["rss"], f"{growth * 100:+.1f}%",
                     s["uss"], e["uss"], f"{e['uss'] - s['uss']:+.0f}", e["pss"],
                     max(e["hwm"], result["peak"][pid])])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=1_000_000, help="train list lines (default 1,000,000)")
    p.add_argument("--samples", type=int, default=None,
                   help="samples to pass through wvtui's loader (default: all entries, one epoch)")
    p.add_argument("--variant-samples", type=int, default=100_000,
                   help="samples through the reference index shape (0 skips it; default 100,000)")
    p.add_argument("--image-size", type=int, default=32, help="JPEG size and crop (default 32)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=cores(), help="DataLoader workers (default: all cores)")
    p.add_argument("--probe-every", type=int, default=100, help="batches between RSS probes")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be >= 1 (worker memory is what this measures)")

    print(f"machine: {machine_line()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="wvtui-bench-mem-") as tmp:
        root = os.path.join(tmp, "wv")
        t = time.perf_counter()
        classes = write_tree(root, args.entries, args.image_size)
        rss0 = psutil.Process().memory_info().rss / MB
        index = WebVisionIndex.load(root, num_classes=classes)
        rss1 = psutil.Process().memory_info().rss / MB
        n = len(index.train)
        samples = min(args.samples or n, n)
        index_bytes = sum(a.nbytes for a in (index.train.paths, index.train.offsets,
                                             index.train.labels, index.train.queries))
        print(f"{n:,} train entries written and indexed in {time.perf_counter() - t:.1f}s; "
              f"index arrays {index_bytes / MB:.1f} MB, main RSS +{rss1 - rss0:.1f} MB for the load\n")

        # No transform: the JPEGs are already the crop size, and the point is memory, not speed.
        dataset = CollectOnce(WebVisionDataset(index.train, as_is, seed=0, train=False))

        def wvtui_loader(count: int) -> DataLoader:
            sampler = ResumableSampler(n, seed=0)
            sampler.set_start(n - count)
            # Persistent workers (wvtui's default) outlive the pass, so its end can be measured.
            return make_loader(dataset, sampler, args.batch_size, args.workers, pin_memory=False)

        loader = wvtui_loader(samples)
        results.append(run_pass("wvtui", loader, args.probe_every))
        del loader

        if args.variant_samples:
            items = [(index.train.path(i), int(index.train.labels[i])) for i in range(n)]
            order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
            subset = CollectOnce(Subset(ReferenceIndexDataset(items, as_is),
                                        order[: args.variant_samples].tolist()))
            loader = DataLoader(subset, batch_size=args.batch_size, num_workers=args.workers,
                                drop_last=True, prefetch_factor=4, persistent_workers=True)
            results.append(run_pass("reference list", loader, args.probe_every))
            del loader, subset, items

    rows = [r for res in results for r in rows_of(res)]
    print(table("Memory over the pass (MB)",
                ["loader", "process", "RSS start", "RSS end", "RSS growth", "USS start", "USS end",
                 "USS growth", "PSS end", "peak RSS"], rows))
    for res in results:
        print(f"\n{res['name']}: {res['samples']:,} samples in {res['elapsed']:.0f}s "
              f"({res['samples'] / max(res['elapsed'], 1e-9):,.0f} images/s, {len(res['workers'])} workers)")
    ours = results[0]
    worst = max(ours["end"][pid]["rss"] / ours["start"][pid]["rss"] - 1 for pid in ours["workers"])
    print(f"main peak RSS (ru_maxrss) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    print(f"worst wvtui worker RSS growth {worst * 100:+.1f}% over {ours['samples']:,} samples "
          f"(target < {TARGET * 100:.0f}%): {'MET' if worst < TARGET else 'NOT MET'}")
    for res in results:
        uss = max(res["end"][pid]["uss"] - res["start"][pid]["uss"] for pid in res["workers"])
        print(f"{res['name']}: worst worker USS growth {uss:+.0f} MB over {res['samples']:,} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
