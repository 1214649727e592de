"""Dataset, transforms, sampler, loader and device-side normalisation over real JPEGs on disk.
(Unreadable and odd image files: tests/test_bad_images.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

from core.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DevicePrefetcher,
    ResumableSampler,
    WebVisionDataset,
    decode_rgb,
    make_loader,
    normalize_on_device,
    sample_seed,
    train_transform,
    val_transform,
)
from core.webvision import WebVisionIndex

SIZE = 40


@pytest.fixture(scope="module")
def index(synthetic_root) -> WebVisionIndex:
    return WebVisionIndex.load(synthetic_root, num_classes=4)


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [tuple(t.clone() for t in b) for b in loader]


# ----------------------------------------------------------------------------- items


def test_train_items_are_uint8_crops_with_labels(index):
    ds = WebVisionDataset(index.train, train_transform(SIZE), seed=0)
    assert len(ds) == len(index.train)
    for i in (0, 17, len(ds) - 1):
        img, label, bad = ds[(i, 0)]
        assert img.dtype == torch.uint8 and img.shape == (3, SIZE, SIZE) and img.is_contiguous()
        assert label == int(index.train.labels[i]) and bad == -1
        assert img.float().std() > 5  # an image, not a blank fill


def test_val_items_are_the_centre_crop_of_the_resized_image(index):
    ds = WebVisionDataset(index.val, val_transform(SIZE), train=False)
    img, label, bad = ds[3]
    assert img.dtype == torch.uint8 and img.shape == (3, SIZE, SIZE)
    assert (label, bad) == (int(index.val.labels[3]), -1)
    full = decode_rgb(index.val.path(3))
    short = round(SIZE * 320 / 299)
    resized = F.resize(full, [short], antialias=True)
    assert min(resized.shape[1:]) == short
    assert torch.equal(img, F.center_crop(resized, [SIZE]))
    assert torch.equal(ds[3][0], img)


def test_val_transform_sizes_follow_the_reference_at_299():
    steps = val_transform(299).transforms
    assert list(steps[0].size) == [320] and list(steps[1].size) == [299, 299]
    out = val_transform(299)(torch.zeros(3, 256, 400, dtype=torch.uint8))
    assert out.shape == (3, 299, 299) and out.dtype == torch.uint8


def test_augmentation_depends_only_on_seed_epoch_and_index(index):
    ds = WebVisionDataset(index.train, train_transform(SIZE), seed=3)
    torch.manual_seed(123)
    a = ds[(5, 2)][0]
    torch.manual_seed(999)  # the caller's RNG state does not matter...
    assert torch.equal(ds[(5, 2)][0], a)
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    ds[(6, 0)]
    assert torch.equal(torch.rand(3), expected_next)  # ...and is left as it was
    crops = {ds[(5, e)][0].numpy().tobytes() for e in range(6)}
    assert len(crops) > 3  # other epochs give other crops
    other_seed = WebVisionDataset(index.train, train_transform(SIZE), seed=4)
    assert not torch.equal(other_seed[(5, 2)][0], a)
    assert sample_seed(0, 1, 2) != sample_seed(0, 2, 1) and 0 <= sample_seed(9, 9, 9) < 2**63


def test_plain_int_key_means_epoch_zero(index):
    ds = WebVisionDataset(index.train, train_transform(SIZE), seed=0)
    assert torch.equal(ds[4][0], ds[(4, 0)][0])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_random_crop_still_shows_the_class_colour(index):
    """The synthetic signal survives RandomResizedCrop + flip: class mean colours stay apart."""
    ds = WebVisionDataset(index.train, train_transform(SIZE), seed=0)
    means = {c: [] for c in range(4)}
    for i in range(len(ds)):
        img, label, _ = ds[(i, 0)]
        means[label].append(img.float().mean(dim=(1, 2)))
    centre = {c: torch.stack(v).mean(0) for c, v in means.items()}
    for c, vs in means.items():
        nearest = [min(centre, key=lambda k: (v - centre[k]).norm().item()) for v in vs]
        assert sum(n == c for n in nearest) >= 0.75 * len(vs)


# ----------------------------------------------------------------------------- sampler


def test_sampler_order_is_a_function_of_seed_and_epoch():
    a, b = ResumableSampler(50, seed=1), ResumableSampler(50, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    assert sorted(i for i, _ in a) == list(range(50)) and {e for _, e in a} == {3}
    b.set_epoch(4)
    assert [i for i, _ in a] != [i for i, _ in b]
    c = ResumableSampler(50, seed=2)
    c.set_epoch(3)
    assert [i for i, _ in a] != [i for i, _ in c]
    assert [i for i, _ in ResumableSampler(5, shuffle=False)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("n, world, drop_last", [(10, 3, False), (10, 3, True), (12, 4, False), (2, 3, False)])
def test_sampler_shards_like_distributed_sampler(n, world, drop_last):
    shards = []
    for rank in range(world):
        s = ResumableSampler(n, seed=5, rank=rank, world_size=world, drop_last=drop_last)
        s.set_epoch(1)
        shards.append([i for i, _ in s])
        assert len(s) == len(shards[-1])
        ref = torch.utils.data.DistributedSampler(
            range(n), num_replicas=world, rank=rank, shuffle=True, seed=5, drop_last=drop_last
        )
        ref.set_epoch(1)
        assert shards[-1] == list(ref)
    assert len({len(x) for x in shards}) == 1
    flat = sum(shards, [])
    if drop_last:
        assert len(flat) == n // world * world and len(set(flat)) == len(flat)
    else:
        assert set(flat) == set(range(n)) and len(flat) == -(-n // world) * world


def test_set_start_skips_samples_of_this_rank_and_set_epoch_rewinds():
    s = ResumableSampler(20, seed=0, rank=1, world_size=2)
    s.set_epoch(2)
    full = list(s)
    s.set_start(4)
    assert list(s) == full[4:] and len(s) == 6
    s.set_start(10)
    assert list(s) == [] and len(s) == 0
    s.set_epoch(3)
    assert len(s) == 10
    with pytest.raises(ValueError, match="start 11 outside 0..10"):
        s.set_start(11)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0), "n must be >= 1"),
        (dict(n=5, rank=2, world_size=2), "rank 2 is not in"),
        (dict(n=1, world_size=2, drop_last=True), "cannot be split"),
    ],
)
def test_sampler_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResumableSampler(**kwargs)


# ----------------------------------------------------------------------------- loader


def test_loader_options(index):
    ds = WebVisionDataset(index.train, train_transform(SIZE))
    s = ResumableSampler(len(ds))
    with_workers = make_loader(ds, s, 4, 2, pin_memory=True, prefetch_factor=3)
    assert with_workers.num_workers == 2 and with_workers.persistent_workers
    assert with_workers.prefetch_factor == 3 and with_workers.drop_last
    assert with_workers.pin_memory == torch.cuda.is_available()
    inline = make_loader(ds, s, 4, 0, pin_memory=False, drop_last=False)
    assert inline.num_workers == 0 and not inline.persistent_workers and not inline.drop_last
    assert len(inline) == -(-len(ds) // 4)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, s, 0, 0, pin_memory=False)


def test_batches_are_identical_with_0_and_2_workers_and_after_a_mid_epoch_resume(index):
    ds = WebVisionDataset(index.train, train_transform(SIZE), seed=11)
    sampler = ResumableSampler(len(ds), seed=11)
    sampler.set_epoch(1)
    inline = batches(make_loader(ds, sampler, 8, 0, pin_memory=False))
    workers = batches(make_loader(ds, sampler, 8, 2, pin_memory=False, persistent_workers=False))
    assert len(inline) == len(ds) // 8
    for a, b in zip(inline, workers, strict=True):
        assert a[0].dtype == torch.uint8 and a[0].shape == (8, 3, SIZE, SIZE)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # A run stopped after 3 batches resumes, in a new sampler and loader, with the same pixels.
    resumed = ResumableSampler(len(ds), seed=11)
    resumed.set_epoch(1)
    resumed.set_start(3 * 8)
    tail = batches(make_loader(ds, resumed, 8, 2, pin_memory=False, persistent_workers=False))
    assert len(tail) == len(inline) - 3
    for a, b in zip(inline[3:], tail, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_persistent_workers_follow_set_epoch(index):
    ds = WebVisionDataset(index.train, train_transform(SIZE), seed=0)
    sampler = ResumableSampler(len(ds), seed=0)
    loader = make_loader(ds, sampler, 16, 2, pin_memory=False)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        epochs.append(batches(loader))
    ref = ResumableSampler(len(ds), seed=0)
    ref.set_epoch(1)
    inline = batches(make_loader(ds, ref, 16, 0, pin_memory=False))
    assert all(torch.equal(x, y) for a, b in zip(epochs[1], inline) for x, y in zip(a, b))
    assert not torch.equal(epochs[0][0][0], epochs[1][0][0])


# ----------------------------------------------------------------------------- device side


def test_normalize_on_device_matches_totensor_normalize(index):
    ref_t = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    images = []
    refs = []
    for i in range(4):
        with Image.open(index.val.path(i)) as im:
            im = im.convert("RGB").resize((SIZE, SIZE))
        images.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
        refs.append(ref_t(im))
    batch = torch.stack(images)
    out = normalize_on_device(batch, channels_last=False)
    ref = torch.stack(refs)
    assert out.dtype == torch.float32 and out.shape == batch.shape
    assert (out - ref).abs().max() <= 1e-6
    cl = normalize_on_device(batch)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert (cl - ref).abs().max() <= 1e-6
    bf = normalize_on_device(batch, dtype=torch.bfloat16)
    assert bf.dtype == torch.bfloat16 and (bf.float() - ref).abs().max() < 0.02
    extremes = normalize_on_device(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2, 1).expand(1, 3, 2, 1))
    assert extremes[0, :, 0, 0].tolist() == pytest.approx([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.bfloat16, torch.float16])
def test_normalize_writes_the_autocast_dtype_for_every_uint8_value(dtype):
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16).contiguous()
    ref = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(values.float() / 255)  # what ToTensor gives
    out = normalize_on_device(values, dtype=dtype)
    assert out.dtype == (dtype or torch.float32) and out.is_contiguous(memory_format=torch.channels_last)
    if out.dtype == torch.float32:
        assert (out - ref).abs().max() <= 1e-6
    else:  # computed in fp32, rounded once: exactly the reference rounded
        assert torch.equal(out, ref.to(out.dtype))
    flat = normalize_on_device(values, channels_last=False, dtype=dtype)
    assert flat.is_contiguous() and torch.equal(flat, out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_normalize_on_cuda_is_one_kernel_from_uint8_to_the_autocast_dtype(dtype):
    # CPU kernels cast mixed dtypes through temporaries; CUDA ones cast as they read and write.
    batch = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, device="cuda")
    normalize_on_device(batch, dtype=dtype)  # the per-device constants are made once, here
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        out = normalize_on_device(batch, dtype=dtype)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1, [e.name for e in kernels]
    assert out.dtype == (dtype or torch.float32)


def test_normalize_rejects_what_is_not_a_uint8_image_batch():
    with pytest.raises(TypeError, match="uint8"):
        normalize_on_device(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        normalize_on_device(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_device_prefetcher_passes_batches_through_and_measures_wait(index):
    ds = WebVisionDataset(index.train, train_transform(SIZE), seed=0)
    sampler = ResumableSampler(len(ds), seed=0)
    loader = make_loader(ds, sampler, 8, 2, pin_memory=True, persistent_workers=False)
    expected = batches(loader)
    pf = DevicePrefetcher(loader, "cpu")
    assert len(pf) == len(loader)
    got = list(pf)
    assert len(got) == len(expected)
    for (images, labels, bad, wait), (e_images, e_labels, e_bad) in zip(got, expected):
        assert images.dtype == torch.uint8  # still uint8 when it reaches the device
        assert torch.equal(images, e_images) and torch.equal(labels, e_labels) and torch.equal(bad, e_bad)
        assert isinstance(wait, float) and wait >= 0
    assert got[0][3] > 0  # the first batch waits for the workers to start


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_prefetcher_uploads_to_cuda(index):
    ds = WebVisionDataset(index.train, train_transform(SIZE), seed=0)
    loader = make_loader(ds, ResumableSampler(len(ds)), 8, 2, pin_memory=True, persistent_workers=False)
    expected = batches(loader)
    got = list(DevicePrefetcher(loader, "cuda"))
    for (images, labels, bad, _), (e_images, e_labels, e_bad) in zip(got, expected, strict=True):
        assert images.is_cuda and labels.is_cuda and not bad.is_cuda and images.dtype == torch.uint8
        assert torch.equal(images.cpu(), e_images) and torch.equal(labels.cpu(), e_labels)
    x = normalize_on_device(got[0][0])
    assert x.is_cuda and x.is_contiguous(memory_format=torch.channels_last)


class _FreezeCount(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        import gc

        return torch.tensor(gc.get_freeze_count())


def test_loader_workers_freeze_inherited_objects_against_copy_on_write():
    loader = make_loader(_FreezeCount(), range(4), batch_size=4, workers=1, pin_memory=False,
                         persistent_workers=False)
    (counts,) = list(loader)
    assert (counts > 0).all(), "the worker's garbage collector still traverses the parent's objects"
