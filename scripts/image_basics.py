"""Image basics, before and after: ``python scripts/image_basics.py [IMAGE ...] [--out DIR]``.

For every image given (and one digit: MNIST from ``--data-dir`` when present, else scikit-learn's
bundled digits) prints shape, dtype and value range, then renders one PNG with the original, the
float conversion, brightened and darkened versions and a darkened rectangle.

The conventions, as a tutorial: NumPy images are ``[H, W]`` or ``[H, W, C]`` (PIL's and
matplotlib's), torch tensors ``[..., H, W]``. uint8 images hold ``0..255``, float images
``0.0..1.0``; every operation keeps the input's type and dtype and clips instead of wrapping
around (uint8 250 + 10 is 255, not 4). Conversions are the package's (``imgcls.data.transforms``),
files are read by its decoder (``imgcls.imaging``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import ImageOps
from torchvision.transforms import v2

from imgcls.data.transforms import to_float, to_uint8
from imgcls.imaging import open_image
from imgcls.utils.errors import UserError

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def load_image(path: str | Path, mode: str | None = None) -> np.ndarray:
    """An image file as a NumPy array ``[H, W]`` or ``[H, W, C]``, EXIF orientation applied;
    ``mode`` is a PIL mode to convert to (``"L"``, ``"RGB"``), ``None`` keeps the file's own."""
    with open_image(path) as image:
        image = ImageOps.exif_transpose(image)
        return np.array(image.convert(mode) if mode else image)


def describe(image: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Shape, dtype, value range, and whether the values fit the dtype's convention
    (``(0, 255)`` for uint8, ``(0, max)`` for other integers, ``(0.0, 1.0)`` for floats)."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    array = array.astype(np.uint8) if array.dtype == bool else array
    floating = np.issubdtype(array.dtype, np.floating)
    expected = (0.0, 1.0) if floating else (0, int(np.iinfo(array.dtype).max))
    lo, hi = (array.min().item(), array.max().item()) if array.size else (None, None)
    return {
        "shape": tuple(int(d) for d in array.shape),
        "dtype": str(image.dtype).replace("torch.", ""),
        "min": lo,
        "max": hi,
        "mean": float(array.mean()) if array.size else None,
        "std": float(array.std()) if array.size else None,
        "expected_range": expected,
        "in_expected_range": bool(not array.size or (lo >= expected[0] and hi <= expected[1])),
    }


def _via_torch(image: Array, convert: Callable[[torch.Tensor], torch.Tensor]) -> Array:
    if isinstance(image, torch.Tensor):
        return convert(image)
    return convert(torch.from_numpy(np.ascontiguousarray(image))).numpy()


def as_float(image: Array) -> Array:
    """Integer image -> float32 ``[0, 1]`` (divided by the dtype's maximum, 255 for uint8)."""
    return _via_torch(image, lambda t: to_float(t).float())


def as_uint8(image: Array) -> Array:
    """Any image -> uint8 without wrap-around: floats scaled by 255, rounded and clipped;
    uint16/uint32 scaled down by their maximum; other integers clipped to 0..255."""
    return _via_torch(image, to_uint8)


def adjust_brightness(image: Array, delta: float = 0.0, factor: float = 1.0) -> Array:
    """``image * factor + delta`` clipped to the valid range, in the input's dtype. ``delta`` is in
    the image's units (0..255 for uint8, 0..1 for floats); ``factor`` scales around black."""
    if factor < 0:
        raise ValueError(f"brightness factor must be >= 0, got {factor}")

    def adjust(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            return (t * factor + delta).clamp(0.0, 1.0).to(t.dtype)
        if t.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 or float image, got {t.dtype}")
        return (t.double() * factor + delta).round().clamp(0, 255).to(torch.uint8)

    return _via_torch(image, adjust)


def darken_region(image: Array, box: Sequence[int], factor: float = 0.5) -> Array:
    """A copy with the rectangle ``box = (left, top, right, bottom)`` (PIL's pixel coordinates,
    right and bottom exclusive, clipped to the image) multiplied by ``factor`` in ``[0, 1]``."""
    if not 0 <= factor <= 1 or len(box) != 4:
        raise ValueError(
            f"need box=(left, top, right, bottom) and 0 <= factor <= 1: {box}, {factor}"
        )
    tensor = isinstance(image, torch.Tensor)
    rows = image.ndim - 2 if tensor else 0  # torch [..., H, W]; NumPy [H, W(, C)]
    height, width = image.shape[rows], image.shape[rows + 1]
    left, top, right, bottom = (int(v) for v in box)
    left, right = max(0, min(left, width)), max(0, min(right, width))
    top, bottom = max(0, min(top, height)), max(0, min(bottom, height))
    out = image.clone() if tensor else image.copy()
    if left < right and top < bottom:
        index = (slice(None),) * rows + (slice(top, bottom), slice(left, right))
        out[index] = adjust_brightness(image[index], factor=factor)
    return out


# the operations as transforms (``nn.Sequential``/``v2.Compose`` chain them), arguments fixed
ToFloat, ToUint8 = partial(v2.Lambda, as_float), partial(v2.Lambda, as_uint8)


def Brightness(delta: float = 0.0, factor: float = 1.0) -> v2.Lambda:  # noqa: N802
    return v2.Lambda(partial(adjust_brightness, delta=delta, factor=factor))


def DarkenRegion(box: Sequence[int], factor: float = 0.5) -> v2.Lambda:  # noqa: N802
    return v2.Lambda(partial(darken_region, box=tuple(box), factor=factor))


def digit_sample(data_dir: Path) -> tuple[np.ndarray, str]:
    """One handwritten digit as uint8: MNIST's first test image if on disk, else sklearn's."""
    try:
        from torchvision.datasets import MNIST

        dataset = MNIST(str(data_dir), train=False, download=False)
        return dataset.data[0].numpy(), f"MNIST test[0] (label {int(dataset.targets[0])})"
    except (RuntimeError, OSError):
        from sklearn.datasets import load_digits

        digits = load_digits()
        image = np.kron(as_uint8(digits.images[0] / 16.0), np.ones((3, 3), dtype=np.uint8))
        return image, f"sklearn digits[0] (label {int(digits.target[0])})"


def render(image: np.ndarray, title: str, out_path: Path) -> Path:
    """Save the before/after figure of ``image`` (uint8 or float, gray or RGB) to ``out_path``."""
    height, width = image.shape[:2]
    box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    panels = [
        ("original", image),
        ("as_float [0, 1]", as_float(image)),
        ("brightness +80 (uint8)", adjust_brightness(image, 80)),
        ("brightness x0.5", adjust_brightness(image, factor=0.5)),
        ("float +0.3, clipped", adjust_brightness(as_float(image), 0.3)),
        (f"darken_region {box} x0.2", darken_region(image, box, 0.2)),
    ]
    fig = Figure(figsize=(3 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels))
    for ax, (name, panel) in zip(axes, panels, strict=True):
        info, shown = describe(panel), as_float(panel)
        gray = shown.ndim == 2 or shown.shape[-1] == 1
        ax.imshow(shown.squeeze(), cmap="gray" if gray else None, vmin=0.0, vmax=1.0)
        ax.set_title(f"{name}\n{info['dtype']} [{info['min']:.3g}, {info['max']:.3g}]", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    return out_path


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path, help="image files to show")
    parser.add_argument("--out", type=Path, default=Path("outputs/image_basics"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="MNIST location")
    args = parser.parse_args(argv)
    samples = []
    for path in args.images:
        try:
            samples.append((load_image(path), str(path), path.stem))
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
    samples.append((*digit_sample(args.data_dir), "digit"))
    written = []
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
