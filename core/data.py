"""From image files to device batches: decode and crop in workers, normalise on the device.

    index = WebVisionIndex.load(root, num_classes=50)
    train = WebVisionDataset(index.train, train_transform(299), seed=0)
    sampler = ResumableSampler(len(train), seed=0)
    loader = make_loader(train, sampler, batch_size=128, workers=8, pin_memory=True)
    for images, labels, bad, wait_s in DevicePrefetcher(loader, device):
        x = normalize_on_device(images)          # uint8 -> float, ImageNet mean/std

Workers hand over uint8 CHW tensors: a uint8 batch is a quarter of the bytes of a float one to
pin and copy, and the CPU does no float work. The random crop and flip of a sample are seeded
from (seed, epoch, index) alone, so an interrupted run resumed with any number of workers sees
exactly the same pixels as an uninterrupted one.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

try:  # deprecated in torchvision 0.29 for TorchCodec, but measured faster here than Pillow
    from torchvision.io import ImageReadMode, decode_image, read_file
except ImportError:  # a torchvision without it: Pillow decodes everything
    decode_image = None
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from core.webvision import SampleList

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A run of this many unreadable files in a row is not a few bad images but a broken tree.
MAX_CONSECUTIVE_BAD = 64

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finaliser: nearby (seed, epoch, index) triples give unrelated seeds."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample; depends on nothing else (not on workers)."""
    return _mix64(_mix64(_mix64(seed & _MASK64) ^ (epoch & _MASK64)) ^ (index & _MASK64)) >> 1


def train_transform(image_size: int) -> v2.Compose:
    """RandomResizedCrop(image_size) + horizontal flip, uint8 CHW tensor in and out."""
    return v2.Compose(
        [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    )


def val_transform(image_size: int) -> v2.Compose:
    """Resize the short side to image_size*320/299 (320 at 299), then CenterCrop(image_size)."""
    return v2.Compose(
        [v2.Resize(round(image_size * 320 / 299), antialias=True), v2.CenterCrop(image_size)]
    )


def decode_rgb(path: str) -> torch.Tensor:
    """A uint8 [3, H, W] RGB tensor of the file; OSError/ValueError/RuntimeError if unreadable.

    torchvision's decoder (libjpeg-turbo, also PNG/WebP/GIF whatever the file is named) is tried
    first; Pillow covers what it refuses (e.g. some CMYK or exotic JPEGs) before a file is bad.
    """
    img = None
    if decode_image is not None:
        try:
            data = read_file(path)
        except RuntimeError as e:  # missing, empty or unreadable file
            reason = str(e).splitlines()[-1].split(", ")[-1]
            raise OSError(f"cannot read {path}: {reason}") from None
        try:
            img = decode_image(data, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass
    if img is None:
        with Image.open(path) as im:
            img = F.pil_to_tensor(im.convert("RGB"))
    if img.ndim == 4:  # animated GIF/WebP: the first frame
        img = img[0]
    if img.shape[0] != 3 or img.shape[1] < 1 or img.shape[2] < 1:
        raise ValueError(f"{path}: decoded to an unusable shape {tuple(img.shape)}")
    return img


class WebVisionDataset(Dataset):
    """(uint8 [3, S, S] image, label, bad) for a SampleList; never raises for a bad image file.

    `bad` is the requested index when its file could not be read and the sample was replaced by
    the next readable one (deterministically), else -1; the trainer maps it back to a path with
    `samples.path(bad)`.
    """

    def __init__(
        self, samples: SampleList, transform: Any, *, seed: int = 0, train: bool = True
    ) -> None:
        if len(samples) == 0:
            raise ValueError(f"no samples under {samples.base}")
        self.samples = samples
        self.transform = transform
        self.seed = int(seed)
        self.train = train

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.samples)
        last_error = None
        for attempt in range(min(MAX_CONSECUTIVE_BAD, n)):
            j = (index + attempt) % n
            try:
                return decode_rgb(self.samples.path(j)), j
            except (OSError, ValueError, RuntimeError, Image.DecompressionBombError) as e:
                last_error = e
        raise RuntimeError(
            f"{min(MAX_CONSECUTIVE_BAD, n)} consecutive unreadable images from "
            f"{self.samples.path(index)} on; last error: {last_error}"
        )

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), 0)
        if not 0 <= index < len(self.samples):
            raise IndexError(f"sample {index} out of range for {len(self.samples)} samples")
        img, j = self._load(index)
        if self.train:
            # The transform draws from torch's global generator; seeding a forked copy of it
            # makes the draw a function of (seed, epoch, index) and leaves the caller's RNG alone.
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
                img = self.transform(img)
        else:
            img = self.transform(img)
        return img.contiguous(), int(self.samples.labels[j]), index if j != index else -1


class ResumableSampler(Sampler):
    """Yields (index, epoch) for this rank; the order is a function of seed and epoch only.

    Sharding follows DistributedSampler: the permutation is padded by repeating its start so
    every rank yields the same count (or cut when drop_last), and rank r takes r::world_size.
    set_epoch(e) starts epoch e at its beginning; set_start(k), called after it, skips the first
    k samples of this rank, to resume mid-epoch (k = batches done * batch size).
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        if drop_last and n < world_size:
            raise ValueError(f"{n} samples cannot be split over {world_size} ranks with drop_last")
        self.n = n
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        self.per_rank = n // world_size if drop_last else math.ceil(n / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, k: int) -> None:
        if not 0 <= k <= self.per_rank:
            raise ValueError(f"start {k} outside 0..{self.per_rank} (samples of this rank)")
        self.start = int(k)

    def indices(self) -> torch.Tensor:
        """This rank's sample order for the current epoch, from its start (int64 tensor)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        total = self.per_rank * self.world_size
        if total > self.n:
            order = order.repeat(math.ceil(total / self.n))
        return order[:total][self.rank : total : self.world_size][self.start :]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        order = self.indices()
        # In slices: a million (index, epoch) tuples at once would cost ~100 MB per epoch.
        for lo in range(0, len(order), 4096):
            for i in order[lo : lo + 4096].tolist():
                yield i, epoch

    def __len__(self) -> int:
        return self.per_rank - self.start


def _worker_init(worker_id: int) -> None:
    # Decoding and resizing parallelise across workers; threads inside a worker only contend.
    torch.set_num_threads(1)
    # A forked worker shares its parent's pages until it writes to them, and a full garbage
    # collection writes to every object it inherited; frozen objects are never traversed.
    # bench/memory.py: worker private memory over a 1M-sample pass +81 MB -> +1 MB.
    gc.freeze()


def make_loader(
    dataset: Dataset,
    sampler: Sampler,
    batch_size: int,
    workers: int,
    *,
    pin_memory: bool,
    persistent_workers: bool = True,
    drop_last: bool = True,
    prefetch_factor: int = 4,
    multiprocessing_context: Any = None,
) -> DataLoader:
    """A DataLoader of (uint8 images [B,3,S,S], labels int64 [B], bad int64 [B]) batches.

    pin_memory is dropped without CUDA (pinning needs a device); persistent workers and the
    prefetch factor only apply with workers > 0.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        drop_last=drop_last,
        worker_init_fn=_worker_init if workers > 0 else None,
        multiprocessing_context=multiprocessing_context if workers > 0 else None,
    )


_STATS_CACHE: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Built once per device: a fresh host-to-device copy per step would be a sync point.
    key = (device, torch.float32)
    if key not in _STATS_CACHE:
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1).to(device)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1).to(device)
        _STATS_CACHE[key] = (mean, std)
    return _STATS_CACHE[key]


def normalize_on_device(
    batch_uint8: torch.Tensor, *, dtype: torch.dtype = torch.float32, channels_last: bool = True
) -> torch.Tensor:
    """(x / 255 - mean) / std on the batch's own device, as ToTensor + Normalize compute it."""
    if batch_uint8.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 batch, got {batch_uint8.dtype}")
    if batch_uint8.ndim != 4 or batch_uint8.shape[1] != 3:
        raise ValueError(f"expected a [B, 3, H, W] batch, got {tuple(batch_uint8.shape)}")
    mean, std = _mean_std(batch_uint8.device)
    x = batch_uint8
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(torch.float32).div_(255).sub_(mean).div_(std)
    return x if dtype == torch.float32 else x.to(dtype)


class DevicePrefetcher:
    """Iterates a loader, yielding (images_uint8, labels, bad, wait_s) with images on `device`.

    On CUDA the copy of batch k+1 (non-blocking, from pinned memory, on a side stream) overlaps
    the compute of batch k; `bad` stays on the host, where the trainer reads it without a sync.
    wait_s is the time the loop blocked on the loader for that batch: the data-wait.
    """

    def __init__(self, loader: Any, device: torch.device | str) -> None:
        self.loader = loader
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.loader)

    def _next(self, it: Iterator) -> tuple[Any, float]:
        """The next batch (None at the end) and the seconds spent blocked getting it."""
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            batch = None
        return batch, time.perf_counter() - t0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]:
        it = iter(self.loader)
        if self.device.type != "cuda":
            while True:
                batch, wait = self._next(it)
                if batch is None:
                    return
                images, labels, bad = batch
                yield images.to(self.device), labels.to(self.device), bad, wait

        stream = torch.cuda.Stream(self.device)
        compute = torch.cuda.current_stream(self.device)

        def upload(batch):
            if batch is None:
                return None
            images, labels, bad = batch
            with torch.cuda.stream(stream):
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
            return images, labels, bad

        batch, wait = self._next(it)
        pending = upload(batch)
        while pending is not None:
            compute.wait_stream(stream)
            images, labels, bad = pending
            # Made on the side stream but used on the compute stream: without this the
            # allocator could hand their memory out again before the compute has finished.
            images.record_stream(compute)
            labels.record_stream(compute)
            # Fetch k+1 before handing out k: the GPU is still busy with queued work, and the
            # time blocked here is what the loop waits for batch k.
            batch, next_wait = self._next(it)
            pending = upload(batch)
            yield images, labels, bad, wait + next_wait
            wait = 0.0
