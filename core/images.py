"""Image files to uint8 RGB tensors, refusing what would hurt: decompression bombs, odd dtypes.

    img = decode_rgb(path)   # uint8 [3, H, W]; UnreadableImage naming the file otherwise

The real WebVision tree holds truncated files, files that are not JPEGs, 16-bit PNGs and the
odd image whose header promises a billion pixels; a loader must survive every one of them.
"""

from __future__ import annotations

import io
import re
import warnings

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

try:  # deprecated in torchvision 0.29 for TorchCodec, but measured faster here than Pillow
    from torchvision.io import ImageReadMode, decode_image, read_file
except ImportError:  # a torchvision without it: Pillow decodes everything
    decode_image = None

__all__ = ["UnreadableImage", "decode_rgb", "max_image_pixels"]


class UnreadableImage(OSError):
    """An image file that cannot be used; the message names the file and says why."""


def max_image_pixels() -> int | None:
    """The pixel count above which a file is refused undecoded: Pillow's MAX_IMAGE_PIXELS.

    Read at each call, so a user who raises (or, with None, lifts) Pillow's limit sets ours.
    """
    return Image.MAX_IMAGE_PIXELS


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8"
JPEG_MARKER = 0xFF
# Markers without a length field: start of image, TEM, and the restart markers RST0..RST7.
JPEG_STANDALONE = {0xD8, 0x01, *range(0xD0, 0xD8)}
# Start-of-frame markers (they carry the size): C0..CF except DHT, JPG and DAC.
JPEG_FRAME = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's frame header, None for anything else.

    The two formats of the real dataset, read in a few microseconds; Pillow's parser takes
    about 70 us a JPEG (it also reads the quantisation tables), ~3% of a decode.
    """
    if data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if not data.startswith(JPEG_START):
        return None
    i = len(JPEG_START)
    while i + 4 <= len(data):
        if data[i] != JPEG_MARKER:
            return None
        marker = data[i + 1]
        if marker == JPEG_MARKER:  # fill byte
            i += 1
        elif marker in JPEG_STANDALONE:
            i += 2
        elif marker in JPEG_FRAME:
            if i + 9 > len(data):
                return None
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _pillow_size(path: str, data: bytes, limit: int) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # parses the header, decodes nothing
                return im.size
    except Image.DecompressionBombError as e:  # Pillow's own check, at twice its limit
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        shown = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        raise UnreadableImage(
            f"{path}: {shown}, over the limit of {limit:,} (a decompression bomb?); not decoded"
        ) from None
    except (OSError, ValueError, SyntaxError):
        return None  # a format Pillow cannot parse: the decoders say whether it is an image


def _check_pixels(path: str, data: bytes) -> None:
    """Refuse a decompression bomb from its header alone, before anything is decoded."""
    limit = max_image_pixels()
    if limit is None:
        return
    size = _header_size(data) or _pillow_size(path, data, limit)
    if size is not None and size[0] * size[1] > limit:
        width, height = size
        raise UnreadableImage(
            f"{path}: {width}x{height} = {width * height:,} pixels, over the limit of {limit:,} "
            f"(a decompression bomb?); not decoded"
        )


def decode_rgb(path: str) -> torch.Tensor:
    """A uint8 [3, H, W] RGB tensor of the file; UnreadableImage (naming it) if unusable.

    The header's pixel count is checked before anything is decoded. torchvision's decoder
    (libjpeg-turbo, also PNG/WebP/GIF whatever the file is named) is tried first; Pillow covers
    what it refuses (e.g. some CMYK or exotic JPEGs) before a file is bad. Any decoded dtype
    (a 16-bit PNG decodes to uint16) is scaled to uint8.
    """
    if decode_image is not None:
        try:
            data = read_file(path)
        except RuntimeError as e:  # missing, empty or unreadable file
            reason = str(e).splitlines()[-1].split(", ")[-1]
            raise UnreadableImage(f"cannot read {path}: {reason}") from None
        raw = data.numpy().tobytes()
    else:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise UnreadableImage(f"cannot read {path}: {e.strerror}") from None
    _check_pixels(path, raw)
    img = None
    if decode_image is not None:
        try:
            img = decode_image(data, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass
    if img is None:
        try:
            with Image.open(io.BytesIO(raw)) as im:
                img = F.pil_to_tensor(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise UnreadableImage(f"{path}: {e}") from None
    if img.ndim == 4:  # animated GIF/WebP: the first frame
        img = img[0]
    if img.shape[0] != 3 or img.shape[1] < 1 or img.shape[2] < 1:
        raise UnreadableImage(f"{path}: decoded to an unusable shape {tuple(img.shape)}")
    if img.dtype != torch.uint8:
        img = F.to_dtype(img, torch.uint8, scale=True)
    return img
