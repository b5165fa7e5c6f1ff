"""Image basics, before and after: ``python scripts/image_basics.py [IMAGE ...] [--out DIR]``.

For every image given (and for one MNIST-like digit: MNIST from ``--data-dir`` when present,
else scikit-learn's bundled digits) prints shape, dtype and value range, then renders one PNG
with the original, the float conversion, brightened and darkened versions (clipped, no
wrap-around) and a darkened rectangle.

The operations live here, in plain functions (and their ``nn.Module`` forms), as a tutorial:
NumPy images are ``[H, W]`` or ``[H, W, C]`` (PIL's and matplotlib's), torch tensors ``[H, W]``,
``[C, H, W]`` or ``[N, C, H, W]`` (the spatial axes are the last two). uint8 images hold
``0..255``, float images ``0.0..1.0``; every operation keeps the input's type and dtype and clips
instead of wrapping around (uint8 250 + 10 is 255, not 4). The dtype conversions are the package's
own (``imgcls.data.transforms.to_float`` / ``to_uint8``), and files are read by the package's
decoder (``imgcls.imaging``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import ImageOps  # noqa: E402
from torch import nn  # noqa: E402

from imgcls.data.transforms import to_float, to_uint8  # noqa: E402
from imgcls.imaging import open_image  # noqa: E402
from imgcls.utils.errors import UserError  # noqa: E402

Array = TypeVar("Array", np.ndarray, torch.Tensor)


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
    with open_image(path) as image:
        image = ImageOps.exif_transpose(image)
        if mode is not None:
            image = image.convert(mode)
        return np.array(image)


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


def _via_torch(image: Array, convert) -> Array:
    """``convert`` (a torch helper of ``imgcls.data.transforms``) on a NumPy or torch image."""
    if isinstance(image, torch.Tensor):
        return convert(image)
    return convert(torch.from_numpy(np.ascontiguousarray(image))).numpy()


def as_float(image: Array) -> Array:
    """Integer image -> float32 in ``[0, 1]`` (divided by the dtype's maximum, 255 for uint8).

    Signed integers are clipped at 0. Float input is returned as float32, unchanged in value.
    """
    return _via_torch(image, lambda t: to_float(t).float())


def as_uint8(image: Array) -> Array:
    """Any image -> uint8 ``[0, 255]`` without wrap-around.

    float ``[0, 1]``: clipped, scaled by 255 and rounded. uint16/uint32: scaled down by their
    maximum. Other integers (e.g. int16/int64 results of uint8 arithmetic): clipped to 0..255.
    """
    return _via_torch(image, to_uint8)


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


def digit_sample(data_dir: Path) -> tuple[np.ndarray, str]:
    """One handwritten digit as uint8 ``[28, 28]``: MNIST if it is on disk, else sklearn's."""
    try:
        from torchvision.datasets import MNIST

        dataset = MNIST(str(data_dir), train=False, download=False)
        return dataset.data[0].numpy(), f"MNIST test[0] (label {int(dataset.targets[0])})"
    except (RuntimeError, OSError):
        from sklearn.datasets import load_digits

        digits = load_digits()
        image = as_uint8(digits.images[0] / 16.0)
        image = np.kron(image, np.ones((3, 3), dtype=np.uint8))  # 8x8 -> 24x24 for display
        return image, f"sklearn digits[0] (label {int(digits.target[0])})"


def variants(image: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The operations shown: each keeps the dtype and clips to the valid range."""
    height, width = image.shape[:2]
    box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    as_f = as_float(image)
    return [
        ("original", image),
        ("as_float [0, 1]", as_f),
        ("brightness +80 (uint8)", adjust_brightness(image, 80)),
        ("brightness x0.5", adjust_brightness(image, factor=0.5)),
        ("float +0.3, clipped", adjust_brightness(as_f, 0.3)),
        (f"darken_region {box} x0.2", darken_region(image, box, 0.2)),
    ]


def render(image: np.ndarray, title: str, out_path: Path) -> Path:
    """Save a before/after figure of ``image`` (uint8 or float, gray or RGB) to ``out_path``."""
    panels = variants(image)
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.4))
    for ax, (name, panel) in zip(axes, panels, strict=True):
        info = describe(panel)
        shown = as_float(panel)
        gray = shown.ndim == 2 or shown.shape[-1] == 1
        ax.imshow(shown.squeeze(), cmap="gray" if gray else None, vmin=0.0, vmax=1.0)
        ax.set_title(f"{name}\n{info['dtype']} [{info['min']:.3g}, {info['max']:.3g}]", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path, help="image files to show")
    parser.add_argument("--out", type=Path, default=Path("outputs/image_basics"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="MNIST location")
    args = parser.parse_args(argv)

    written = []
    samples: list[tuple[np.ndarray, str, str]] = []
    for path in args.images:
        try:
            samples.append((load_image(path), str(path), path.stem))
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
    digit, title = digit_sample(args.data_dir)
    samples.append((digit, title, "digit"))
    for image, title, stem in samples:
        info = describe(image)
        print(
            f"{title}: shape={info['shape']} dtype={info['dtype']} "
            f"range=[{info['min']}, {info['max']}] mean={info['mean']:.3f}"
        )
        if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
            image = as_uint8(image)  # e.g. a 16-bit PNG: the operations take uint8 or float
            print(f"  as_uint8 -> range=[{image.min()}, {image.max()}] (scaled, not clipped)")
        written.append(render(image, title, args.out / f"{stem}_basics.png"))
        print(f"  -> {written[-1]}")
    return written


if __name__ == "__main__":
    main()
