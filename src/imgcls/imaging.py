"""Image files -> uint8 tensors: one decoder for folders, predict.py and the API (docs/data.md)."""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2.functional import pil_to_tensor as to_tensor

from imgcls.utils.errors import UserError

#: file suffixes read as images (compared in lower case: ``.JPG`` counts)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
#: what PIL raises for missing, truncated, corrupt or oversized files
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """``Image.open``; PIL errors and decompression bombs become a ``UserError`` naming ``path``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            yield image
    except (*DECODE_ERRORS, Image.DecompressionBombWarning) as err:
        raise UserError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Integer images -> float32 [0, 1], divided by the dtype's maximum (negatives clipped)."""
    if images.is_floating_point():
        return images
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.double().clamp_(min=0).div_(float(torch.iinfo(images.dtype).max)).float()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Any images -> uint8: floats x 255, wider unsigned ints scaled down, signed ints clipped."""
    if images.dtype in (torch.uint16, torch.uint32, torch.uint64):
        images = images.double().div_(float(torch.iinfo(images.dtype).max))
    elif not images.is_floating_point():
        return images.clamp(0, 255).to(torch.uint8)
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def pil_to_tensor(image: Image.Image, channels: int = 3) -> torch.Tensor:
    """A PIL image (any mode) as uint8 ``[C, H, W]``, EXIF orientation applied, 1 or 3 channels."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # 16 bits (or more) per pixel: scaled, not clipped to white
        image = Image.fromarray((np.asarray(image).clip(0, 65535) / 257).round().astype(np.uint8))
    if image.mode in ("LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        image = image.convert("RGBa")  # premultiplied: transparent pixels become black
    return to_tensor(image.convert("L" if channels == 1 else "RGB"))


def load_image_tensor(path: str | Path, channels: int = 3) -> torch.Tensor:
    """Decode an image file to uint8 ``[C, H, W]`` with 1 (grayscale) or 3 (RGB) channels."""
    with open_image(path) as image:
        return pil_to_tensor(image, channels)


def check_image_file(path: str | Path) -> None:
    """A ``UserError`` naming ``path`` when PIL cannot identify or verify it (no pixel decoding)."""
    with open_image(path) as image:
        image.verify()
