"""Image files as users have them -> uint8 tensors: one decoder for image folders, ``predict.py``
and the API (what it handles: docs/data.md). 16-bit images are scaled down, not clipped to white as
PIL's ``convert("L")`` does; transparent pixels become black; an unreadable file a ``UserError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from imgcls.utils.errors import UserError

#: file suffixes read as images (compared in lower case: ``.JPG`` counts)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

#: what PIL raises for missing, truncated, corrupt or oversized files (UnidentifiedImageError is
#: an OSError, a broken PNG chunk a SyntaxError)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)

#: PIL modes holding more than 8 bits per pixel in one channel (16-bit PNG and TIFF)
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """``Image.open`` at the first frame, refusing decompression bombs; a PIL error (in the
    ``with`` body too) becomes a ``UserError`` naming ``path``."""
    try:
        with Image.open(path) as image:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and image.width * image.height > limit:
                raise Image.DecompressionBombError(
                    f"{image.width}x{image.height} pixels exceed the limit of {limit} "
                    "(a possible decompression bomb)"
                )
            image.seek(0)
            yield image
    except DECODE_ERRORS as err:
        raise UserError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err


def _as_8bit(image: Image.Image, channels: int) -> Image.Image:
    """``image`` in mode ``L`` (``channels=1``) or ``RGB`` (3), from any PIL mode."""
    target = "L" if channels == 1 else "RGB"
    if image.mode in _WIDE_MODES:
        wide = np.asarray(image).astype(np.int64).clip(0, 65535).astype(np.uint16)
        return Image.fromarray(to_uint8(torch.from_numpy(wide)).numpy()).convert(target)
    if image.mode in ("LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        image = image.convert("RGBa")  # premultiplied: transparent pixels become black
    return image.convert(target)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Integer images -> float32 ``[0, 1]`` (divided by the dtype's maximum: 255 for uint8, 65535
    for 16-bit; negative values clipped to 0); float input is returned unchanged."""
    if images.is_floating_point():
        return images
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.dtype == torch.bool:
        return images.float()
    return images.double().clamp_(min=0).div_(float(torch.iinfo(images.dtype).max)).float()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Any images -> uint8, rounded and clipped (no wrap-around): float ``[0, 1]`` scaled by 255,
    uint16/32/64 scaled down by their maximum, signed integers (uint8 arithmetic) clipped."""
    if images.dtype == torch.uint8:
        return images
    if images.dtype in (torch.uint16, torch.uint32, torch.uint64):
        images = images.double().div_(float(torch.iinfo(images.dtype).max))
    elif not images.is_floating_point():
        return images.clamp(0, 255).to(torch.uint8)
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def load_image_tensor(path: str | Path, channels: int = 3) -> torch.Tensor:
    """Decode an image file to uint8 ``[C, H, W]`` with 1 (grayscale) or 3 (RGB) channels."""
    with open_image(path) as image:
        return pil_to_tensor(image, channels)


def pil_to_tensor(image: Image.Image, channels: int = 3) -> torch.Tensor:
    """A PIL image (any mode) as uint8 ``[C, H, W]``, EXIF orientation applied, 1 or 3 channels."""
    array = np.asarray(_as_8bit(ImageOps.exif_transpose(image), channels), dtype=np.uint8)
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def check_image_file(path: str | Path) -> None:
    """Cheap integrity check without decoding the pixels: a ``UserError`` naming the path if PIL
    cannot identify the file, its header is broken or it is a decompression bomb."""
    with open_image(path) as image:
        image.verify()
