"""Shared fixtures: small WebVision-format trees written by core.synthetic (real JPEGs on disk).

`synthetic_root`      4 classes x 2 queries x 8 images (48 px short side), 4 val images per class.
`bad_synthetic_root`  the same shape with unreadable and odd files planted; its synthetic.json
                      lists them ("bad": truncated, zero bytes, missing; "odd": PNG named .jpg,
                      grayscale, CMYK).
Both are session-scoped and read-only: copy a tree (shutil.copytree) before changing it.
`small_disk(size)`    a real tmpfs of that size ("64k", "4m") under tmp_path, for a disk that
                      fills up; the test is skipped where tmpfs cannot be mounted (needs root).

Tests that train a model, or start `wvtui` as far as training, are marked `slow`:
`python -m pytest -m "not slow" -q` is the fast loop.
"""

from __future__ import annotations

import subprocess

import pytest

from core.synthetic import make_webvision

def pytest_configure(config: pytest.Config) -> None:
    # core.data uses torchvision's image decoder on purpose (faster here than Pillow; Pillow takes
    # over if a later torchvision drops it), so its deprecation notice is known, not news.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning",
    )


SMALL = dict(classes=4, queries_per_class=2, images_per_query=8, val_per_class=4, size=48, seed=0)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_webvision(str(tmp_path_factory.mktemp("webvision") / "root"), **SMALL)


@pytest.fixture(scope="session")
def bad_synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_webvision(
        str(tmp_path_factory.mktemp("webvision_bad") / "root"), bad_files=True, **SMALL
    )



@pytest.fixture
def small_disk(tmp_path):
    mounted: list[str] = []

    def mount(size: str):
        mnt = tmp_path / f"disk{len(mounted)}"
        mnt.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
        mounted.append(str(mnt))
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", mnt], check=False)
