"""Image basics: load an image, inspect it, convert dtypes and change brightness safely.

Arrays follow two layouts: NumPy images are ``[H, W]`` or ``[H, W, C]`` (PIL's and matplotlib's),
torch tensors are ``[H, W]``, ``[C, H, W]`` or ``[N, C, H, W]`` (the spatial axes are the last
two). uint8 images hold ``0..255``, float images ``0.0..1.0``; every operation here keeps the
input's type and dtype and clips instead of wrapping around (uint8 250 + 10 is 255, not 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from imgcls.utils.errors import UserError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

Array = TypeVar("Array", np.ndarray, torch.Tensor)

#: what PIL raises for missing, truncated, corrupt or oversized files (broken PNG chunks raise
#: SyntaxError)
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    Image.DecompressionBombError,
)


def _open_checked(path: str | Path) -> Image.Image:
    """``Image.open`` that refuses decompression bombs (more than ``Image.MAX_IMAGE_PIXELS``)."""
    image = Image.open(path)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        image.close()
        raise Image.DecompressionBombError(
            f"{image.width}x{image.height} pixels exceed the limit of {limit} "
            "(a possible decompression bomb)"
        )
    return image


def load_image_tensor(path: str | Path, channels: int = 3) -> torch.Tensor:
    """Decode an image file to uint8 ``[C, H, W]`` with 1 (grayscale) or 3 (RGB) channels.

    EXIF orientation is applied; images over PIL's pixel limit are refused. Any unreadable file
    raises ``UserError`` naming the path.
    """
    try:
        with _open_checked(path) as image:
            return pil_to_tensor(image, channels)
    except _DECODE_ERRORS as err:
        raise UserError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err


def pil_to_tensor(image: Image.Image, channels: int = 3) -> torch.Tensor:
    """A PIL image as uint8 ``[C, H, W]`` (EXIF orientation applied, 1 or 3 channels)."""
    image = ImageOps.exif_transpose(image).convert("L" if channels == 1 else "RGB")
    tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def check_image_file(path: str | Path) -> None:
    """Cheap integrity check without decoding the pixels: a ``UserError`` naming the path if PIL
    cannot identify the file, its header is broken or it is a decompression bomb."""
    try:
        with _open_checked(path) as image:
            image.verify()
    except _DECODE_ERRORS as err:
        raise UserError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err


def load_image(path: str | Path, mode: str | None = None, backend: str = "pil") -> np.ndarray:
    """An image file as a NumPy array ``[H, W]`` or ``[H, W, C]`` (uint8 for 8-bit images).

    ``mode``: PIL mode to convert to (``"L"``, ``"RGB"``), or ``None`` to keep the file's own.
    ``backend="skimage"`` reads with scikit-image when it is installed (it is not a dependency).
    """
    if backend == "skimage":
        try:
            from skimage import io as skio
        except ImportError as err:
            raise UserError(
                "backend='skimage' needs scikit-image (pip install scikit-image); "
                "or use the default backend='pil'"
            ) from err
        return np.asarray(skio.imread(str(path)))
    if backend != "pil":
        raise UserError(f"unknown image backend {backend!r}; use 'pil' or 'skimage'")
    try:
        with _open_checked(path) as image:
            image = ImageOps.exif_transpose(image)
            if mode is not None:
                image = image.convert(mode)
            return np.array(image)
    except _DECODE_ERRORS as err:
        raise UserError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err


def _is_float(image: np.ndarray | torch.Tensor) -> bool:
    if isinstance(image, torch.Tensor):
        return image.is_floating_point()
    return np.issubdtype(image.dtype, np.floating)


def describe(image: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Shape, dtype and value range of an image, and whether the values fit the dtype's convention.

    ``expected_range`` is ``(0, 255)`` for uint8 (``(0, max)`` for other integer types) and
    ``(0.0, 1.0)`` for floats; ``in_expected_range`` tells whether every value lies inside it.
    """
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        expected: tuple[float, float] = (0.0, 1.0)
    else:
        expected = (0, int(np.iinfo(array.dtype).max))
    lo = array.min().item() if array.size else None
    hi = array.max().item() if array.size else None
    return {
        "shape": tuple(int(d) for d in array.shape),
        "dtype": str(image.dtype).replace("torch.", ""),
        "min": lo,
        "max": hi,
        "mean": float(array.mean()) if array.size else None,
        "std": float(array.std()) if array.size else None,
        "expected_range": expected,
        "in_expected_range": bool(array.size == 0 or (lo >= expected[0] and hi <= expected[1])),
    }


def as_float(image: Array) -> Array:
    """Integer image -> float32 in ``[0, 1]`` (divided by the dtype's maximum, 255 for uint8).

    Signed integers are clipped at 0. Float input is returned as float32, unchanged in value.
    """
    if isinstance(image, torch.Tensor):
        if image.is_floating_point():
            return image.float()
        if image.dtype == torch.bool:
            return image.float()
        top = 255.0 if image.dtype == torch.uint8 else float(torch.iinfo(image.dtype).max)
        return image.clamp(min=0).float() / top
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32)
    if image.dtype == bool:
        return image.astype(np.float32)
    top = float(np.iinfo(image.dtype).max)
    return (np.clip(image, 0, None) / top).astype(np.float32)


def as_uint8(image: Array) -> Array:
    """Any image -> uint8 ``[0, 255]`` without wrap-around.

    float ``[0, 1]``: clipped, scaled by 255 and rounded. uint16/uint32: scaled down by their
    maximum. Other integers (e.g. int16/int64 results of uint8 arithmetic): clipped to 0..255.
    """
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8:
            return image
        if image.is_floating_point():
            return (image.clamp(0, 1) * 255).round().to(torch.uint8)
        if image.dtype in (torch.uint16, torch.uint32):
            top = float(torch.iinfo(image.dtype).max)
            return (image.double() / top * 255).round().to(torch.uint8)
        return image.clamp(0, 255).to(torch.uint8)
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating):
        return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    if image.dtype in (np.uint16, np.uint32, np.uint64):
        return np.round(image / float(np.iinfo(image.dtype).max) * 255).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)


def _apply_clipped(image: Array, fn) -> Array:
    """``fn`` on a float64/float32 copy of ``image``, clipped to the dtype's range, cast back."""
    if isinstance(image, torch.Tensor):
        if image.is_floating_point():
            return fn(image).clamp(0.0, 1.0).to(image.dtype)
        if image.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 or float tensor, got {image.dtype}")
        return fn(image.double()).round().clamp(0, 255).to(torch.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(fn(image), 0.0, 1.0).astype(image.dtype)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 or float array, got {image.dtype}")
    return np.clip(np.round(fn(image.astype(np.float64))), 0, 255).astype(np.uint8)


def adjust_brightness(image: Array, delta: float = 0.0, factor: float = 1.0) -> Array:
    """``image * factor + delta``, clipped to the valid range, same dtype as the input.

    ``delta`` is in the image's own units: 0..255 for uint8 (``+10`` brightens by 10 levels),
    0..1 for floats. ``factor`` scales contrast around black (0.5 darkens, 1.5 brightens).
    """
    if factor < 0:
        raise ValueError(f"brightness factor must be >= 0, got {factor}")
    return _apply_clipped(image, lambda x: x * factor + delta)


def _spatial_axes(image: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """(row axis, column axis): NumPy ``[H, W(, C)]``; torch ``[..., H, W]``."""
    if isinstance(image, torch.Tensor):
        if image.ndim < 2:
            raise ValueError(
                f"expected an image tensor [..., H, W], got shape {tuple(image.shape)}"
            )
        return image.ndim - 2, image.ndim - 1
    if image.ndim not in (2, 3):
        raise ValueError(f"expected a NumPy image [H, W] or [H, W, C], got shape {image.shape}")
    return 0, 1


def darken_region(image: Array, box: Sequence[int], factor: float = 0.5) -> Array:
    """A copy of ``image`` with the rectangle ``box = (left, top, right, bottom)`` darkened.

    Pixel coordinates as in PIL (right and bottom exclusive), clipped to the image. Pixels inside
    are multiplied by ``factor`` in ``[0, 1]`` (0 paints black); the rest is unchanged.
    """
    if not 0 <= factor <= 1:
        raise ValueError(f"darkening factor must be in [0, 1], got {factor}")
    if len(box) != 4:
        raise ValueError(f"box must be (left, top, right, bottom), got {box}")
    row_axis, col_axis = _spatial_axes(image)
    height, width = image.shape[row_axis], image.shape[col_axis]
    left, top, right, bottom = (int(v) for v in box)
    left, right = max(0, min(left, width)), max(0, min(right, width))
    top, bottom = max(0, min(top, height)), max(0, min(bottom, height))
    out = image.clone() if isinstance(image, torch.Tensor) else image.copy()
    if left >= right or top >= bottom:
        return out
    index: list[Any] = [slice(None)] * image.ndim
    index[row_axis], index[col_axis] = slice(top, bottom), slice(left, right)
    index_t = tuple(index)
    out[index_t] = adjust_brightness(image[index_t], factor=factor)
    return out


class ToFloat(nn.Module):
    """Transform form of :func:`as_float` (uint8 -> float ``[0, 1]``)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return as_float(image)


class ToUint8(nn.Module):
    """Transform form of :func:`as_uint8` (float ``[0, 1]`` -> uint8, clipped)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return as_uint8(image)


class Brightness(nn.Module):
    """Transform form of :func:`adjust_brightness` (``image * factor + delta``, clipped)."""

    def __init__(self, delta: float = 0.0, factor: float = 1.0) -> None:
        super().__init__()
        if factor < 0:
            raise ValueError(f"brightness factor must be >= 0, got {factor}")
        self.delta, self.factor = delta, factor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return adjust_brightness(image, self.delta, self.factor)


class DarkenRegion(nn.Module):
    """Transform form of :func:`darken_region` (one fixed rectangle)."""

    def __init__(self, box: Sequence[int], factor: float = 0.5) -> None:
        super().__init__()
        if not 0 <= factor <= 1:
            raise ValueError(f"darkening factor must be in [0, 1], got {factor}")
        self.box, self.factor = tuple(box), factor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return darken_region(image, self.box, self.factor)
