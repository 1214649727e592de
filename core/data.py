"""From image files to device batches: decode and crop in workers, normalise on the device.

    index = WebVisionIndex.load(root, num_classes=50)
    train = WebVisionDataset(index.train, train_transform(299), seed=0)
    sampler = ResumableSampler(len(train), seed=0)
    loader = make_loader(train, sampler, batch_size=128, workers=8, pin_memory=True)
    for images, labels, bad, wait_s in DevicePrefetcher(loader, device):
        x = normalize_on_device(images, dtype=torch.bfloat16)  # uint8 -> normalised, one pass

Workers hand over uint8 CHW tensors: a uint8 batch is a quarter of the bytes of a float one to
pin and copy, and the CPU does no float work. The random crop and flip of a sample are seeded
from (seed, epoch, index) alone, so an interrupted run resumed with any number of workers sees
exactly the same pixels as an uninterrupted one.
"""

from __future__ import annotations

import gc
import math
import signal
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from core.images import decode_rgb
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


class WebVisionDataset(Dataset):
    """(uint8 [3, S, S] image, label, bad) for a SampleList; never raises for a bad image file.

    A training set replaces an unreadable file by the next readable one (deterministically), so
    every batch is full. An evaluation set (`train=False`) never replaces: it yields a zero
    image of the transform's output size and label -1, which evaluation leaves out, so no image
    is scored twice. Either way `bad` is the requested index when its file could not be read,
    else -1; the trainer maps it back to a path with `samples.path(bad)`.
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
        self._blank: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.samples)
        last_error = None
        for attempt in range(min(MAX_CONSECUTIVE_BAD, n)):
            j = (index + attempt) % n
            try:
                return decode_rgb(self.samples.path(j)), j
            except (OSError, ValueError, RuntimeError) as e:
                last_error = e
        raise RuntimeError(
            f"{min(MAX_CONSECUTIVE_BAD, n)} consecutive unreadable images from "
            f"{self.samples.path(index)} on; last error: {last_error}"
        )

    def blank(self) -> torch.Tensor:
        """The zero image an unreadable evaluation file becomes: the transform of a black one."""
        if self._blank is None:
            self._blank = self.transform(torch.zeros(3, 64, 64, dtype=torch.uint8)).contiguous()
        return self._blank

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), 0)
        if not 0 <= index < len(self.samples):
            raise IndexError(f"sample {index} out of range for {len(self.samples)} samples")
        if not self.train:
            try:
                img = decode_rgb(self.samples.path(index))
            except (OSError, ValueError, RuntimeError):
                return self.blank().clone(), -1, index
            return self.transform(img).contiguous(), int(self.samples.labels[index]), -1
        img, j = self._load(index)
        # The transform draws from torch's global generator; seeding a forked copy of it makes
        # the draw a function of (seed, epoch, index) and leaves the caller's RNG alone.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
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
    # The terminal's hang-up and Ctrl-C reach its whole foreground process group, workers
    # included; a worker that dies of them kills the run. The main process decides.
    for name in ("SIGINT", "SIGHUP"):  # no SIGHUP on Windows
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
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


_SCALE_BIAS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _scale_bias(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel fp32 (1 / (255 std), -mean / std), so that x * scale + bias = (x/255 - mean)/std.

    Built once per device (a fresh host-to-device copy per step would be a sync point), and in
    float64 first so the fp32 constants are the nearest to the exact ones.
    """
    if device not in _SCALE_BIAS:
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
        scale = (1 / (255 * std)).to(torch.float32).to(device)
        bias = (-mean / std).to(torch.float32).to(device)
        _SCALE_BIAS[device] = (scale, bias)
    return _SCALE_BIAS[device]


def normalize_on_device(
    images: torch.Tensor, channels_last: bool = True, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(x / 255 - mean) / std of a uint8 batch on its own device, in one pass.

    One fused multiply-add reads the uint8 batch and writes `dtype` (float32 when None; the
    autocast dtype to skip a cast), computing in float32: within 1e-6 of ToTensor + Normalize,
    and in bf16/fp16 exactly their result rounded (every one of the 3 x 256 inputs checked).
    On CUDA that is one kernel (it casts as it reads and writes); CPU kernels cast mixed dtypes
    through temporaries.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 batch, got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a [B, 3, H, W] batch, got {tuple(images.shape)}")
    scale, bias = _scale_bias(images.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(images.shape, dtype=dtype or torch.float32, device=images.device,
                      memory_format=fmt)
    return torch.addcmul(bias, images, scale, out=out)


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
