"""Input pipeline speed: the reference's train transform against wvtui's, per core and in a DataLoader.

    python bench/loader.py                       # 200 JPEGs, short side 256, crop 299
    python bench/loader.py --images 1000 --batch-size 128 --workers 1 2 4 8 16
    python bench/loader.py --images 20 --short-side 64 --image-size 32 --repeats 1 --workers 1

Per core: one process, one torch thread, every image of the same set through each pipeline in
turn (interleaved, best of --repeats): the reference (Pillow open + convert RGB, Resize 320,
RandomResizedCrop 299, flip, ToTensor, Normalize -> float32) against wvtui's WebVisionDataset
(torchvision decode, RandomResizedCrop + flip on the uint8 tensor -> uint8; normalisation
happens later, on the device). Target: wvtui >= 3x the reference per core.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as `python bench/loader.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms as T  # noqa: E402
from torchvision.datasets.folder import pil_loader  # noqa: E402
from torchvision.transforms.v2 import functional as F  # noqa: E402

from bench.common import cores, machine_line, synthetic_tree, table  # noqa: E402
from core.data import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResumableSampler,
    WebVisionDataset,
    make_loader,
    train_transform,
)
from core.webvision import WebVisionIndex  # noqa: E402

TARGET = 3.0


class ReferenceDataset(Dataset):
    """The reference's dataset shape: a Python list of (path, label), Pillow, float transform."""

    def __init__(self, items: list[tuple[str, int]], image_size: int) -> None:
        self.items = items
        self.transform = T.Compose(
            [
                T.Resize(round(image_size * 320 / 299)),
                T.RandomResizedCrop(image_size),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        return self.transform(pil_loader(path)), label


class PillowDecodeDataset(WebVisionDataset):
    """wvtui's transform after a Pillow decode: checks which decoder is faster here."""

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        return F.pil_to_tensor(pil_loader(self.samples.path(index))), index


def per_core(args, index: WebVisionIndex) -> list[list[object]]:
    n = len(index.train)
    items = [(index.train.path(i), int(index.train.labels[i])) for i in range(n)]
    ref = ReferenceDataset(items, args.image_size)
    ours = WebVisionDataset(index.train, train_transform(args.image_size), seed=0)
    ours_pil = PillowDecodeDataset(index.train, train_transform(args.image_size), seed=0)
    epoch = [0]

    def rate(get) -> float:
        epoch[0] += 1
        t0 = time.perf_counter()
        for i in range(n):
            get(i)
        return n / (time.perf_counter() - t0)

    pipelines = [
        ("reference (PIL, Resize 320, RRC, flip, ToTensor, Normalize -> float32)", lambda i: ref[i]),
        ("wvtui (torchvision decode, RRC + flip on uint8 -> uint8)", lambda i: ours[(i, epoch[0])]),
        ("wvtui transform after a Pillow decode", lambda i: ours_pil[(i, epoch[0])]),
    ]
    for _, get in pipelines:  # warm-up: first-call costs and the page cache
        get(0)
    results = {name: [] for name, _ in pipelines}
    for _ in range(args.repeats):  # interleaved, so a noisy neighbour hits all of them alike
        for name, get in pipelines:
            results[name].append(rate(get))
    ref_best = max(results[pipelines[0][0]])
    rows = []
    for name, _ in pipelines:
        best, med = max(results[name]), sorted(results[name])[len(results[name]) // 2]
        rows.append([name, best, med, f"{best / ref_best:.2f}x"])
    return rows


def loader_rate(loader: DataLoader, sampler: ResumableSampler | None, epochs: int) -> float:
    """Images/s over epochs 2..epochs (epoch 1 starts the workers and warms the cache)."""
    images, t0 = 0, None
    for e in range(epochs):
        if sampler is not None:
            sampler.set_epoch(e)
        if e == 1:
            t0 = time.perf_counter()
        for batch in loader:
            if e >= 1:
                images += batch[0].shape[0]
    return images / (time.perf_counter() - t0)


def data_loaders(args, index: WebVisionIndex) -> list[list[object]]:
    n = len(index.train)
    items = [(index.train.path(i), int(index.train.labels[i])) for i in range(n)]
    pin = torch.cuda.is_available()
    rows = []
    for w in args.workers:
        ours = WebVisionDataset(index.train, train_transform(args.image_size), seed=0)
        sampler = ResumableSampler(n, seed=0)
        loader = make_loader(ours, sampler, args.batch_size, w, pin_memory=pin)
        wv = loader_rate(loader, sampler, args.epochs)
        del loader
        ref_loader = DataLoader(
            ReferenceDataset(items, args.image_size), batch_size=args.batch_size, shuffle=True,
            num_workers=w, pin_memory=pin, drop_last=True, persistent_workers=True,
        )
        rv = loader_rate(ref_loader, None, args.epochs)
        del ref_loader
        rows.append([w, rv, wv, f"{wv / rv:.2f}x", wv / w])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="JPEGs in the synthetic set (default 200)")
    p.add_argument("--short-side", type=int, default=256, help="short side of the JPEGs (default 256)")
    p.add_argument("--image-size", type=int, default=299, help="crop size (default 299)")
    p.add_argument("--repeats", type=int, default=3, help="passes per pipeline, best is kept (default 3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3, help="DataLoader passes; the first is not timed")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="DataLoader worker counts (default: 1, 2 and all cores)")
    p.add_argument("--data", default=None, help="directory for the synthetic tree (default: a temp dir)")
    args = p.parse_args(argv)
    if args.workers is None:
        args.workers = sorted({1, 2, cores()})
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the first pass is not timed)")

    with tempfile.TemporaryDirectory(prefix="wvtui-bench-") as tmp:
        root = synthetic_tree(args.data or os.path.join(tmp, "wv"), images=args.images, size=args.short_side)
        index = WebVisionIndex.load(root, num_classes=5)
        print(f"machine: {machine_line()}")
        print(f"{len(index.train)} JPEGs, short side {args.short_side}, crop {args.image_size}\n")

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        rows = per_core(args, index)
        torch.set_num_threads(threads)
        print(table("Train transform, one core (images/s)",
                    ["pipeline", "best", "median", "vs reference"], rows))
        ratio = float(rows[1][3].rstrip("x"))
        print(f"\nper-core speed-up {ratio:.2f}x (target >= {TARGET:.0f}x): "
              f"{'MET' if ratio >= TARGET else 'NOT MET'}\n")

        rows = data_loaders(args, index)
        print(table(f"DataLoader, batch {args.batch_size} (images/s, epochs 2..{args.epochs})",
                    ["workers", "reference loader", "wvtui make_loader", "ratio", "wvtui per worker"],
                    rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
