"""Image basics, before and after: ``python scripts/image_basics.py [IMAGE ...] [--out DIR]``.

NumPy images are ``[H, W(, C)]``, tensors ``[..., H, W]``; operations keep dtypes and clip."""

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import ImageOps
from sklearn.datasets import load_digits
from torchvision.datasets import MNIST
from torchvision.transforms import v2

from imgcls.imaging import open_image, to_float, to_uint8
from imgcls.utils.errors import UserError


def load_image(path: str | Path, mode: str | None = None) -> np.ndarray:
    """An image file as ``[H, W(, C)]``, upright (EXIF), in PIL ``mode`` (``"L"``, ``"RGB"``)."""
    with open_image(path) as image:
        image = ImageOps.exif_transpose(image)
        return np.array(image.convert(mode) if mode else image)


def describe(image: Any) -> dict[str, Any]:
    """Shape, dtype, value range, and whether that is the dtype's ``(0, max)`` or ``(0.0, 1.0)``."""
    array = image.numpy(force=True) if isinstance(image, torch.Tensor) else np.asarray(image)
    dtype, array = str(array.dtype), array.astype(np.uint8) if array.dtype == bool else array
    expected = (0.0, 1.0) if array.dtype.kind == "f" else (0, int(np.iinfo(array.dtype).max))
    lo, hi = array.min().item(), array.max().item()
    info = {"shape": array.shape, "dtype": dtype, "min": lo, "max": hi}
    ok = expected[0] <= lo and hi <= expected[1]
    return info | {"mean": array.mean().item(), "expected_range": expected, "in_expected_range": ok}


def numpy_too(op: Any) -> Any:
    """``op`` of tensors, for NumPy arrays too (through torch and back)."""

    def apply(image: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(image, torch.Tensor):
            return op(image, *args, **kwargs)
        return op(torch.from_numpy(np.ascontiguousarray(image)), *args, **kwargs).numpy()

    return apply


#: integer image -> float32 [0, 1] (divided by the dtype's maximum, 255 for uint8); any image ->
#: uint8 (floats x 255 and uint16 / 257, rounded; other integers clipped)
as_float, as_uint8 = numpy_too(lambda t: to_float(t).float()), numpy_too(to_uint8)


@numpy_too
def adjust_brightness(image: torch.Tensor, delta: float = 0.0, factor: float = 1.0) -> Any:
    """``image * factor + delta`` (``delta`` in the image's units), clipped, in its dtype."""
    if factor < 0:
        raise ValueError(f"brightness factor must be >= 0, got {factor}")
    out = image.double() * factor + delta
    out = out.clamp(0, 1) if image.is_floating_point() else out.round().clamp(0, 255)
    return out.to(image.dtype)


def darken_region(image: Any, box: tuple[int, int, int, int], factor: float = 0.5) -> Any:
    """A copy with ``box = (left, top, right, bottom)`` (PIL's coordinates) times ``factor``."""
    if not 0 <= factor <= 1:
        raise ValueError(f"darken factor must be in [0, 1], got {factor}")
    left, top, right, bottom = (max(0, int(v)) for v in box)
    rows = (...,) if isinstance(image, torch.Tensor) else ()  # torch [..., H, W]; NumPy [H, W, C]
    index = (*rows, slice(top, bottom), slice(left, right))
    out = image.clone() if rows else image.copy()
    out[index] = adjust_brightness(image[index], factor=factor)
    return out


def _transform(op: Any) -> Any:  # ``op`` with its arguments fixed: a transform for v2.Compose
    return lambda *args, **kwargs: v2.Lambda(lambda image: op(image, *args, **kwargs))


ToFloat, ToUint8 = _transform(as_float), _transform(as_uint8)
Brightness, DarkenRegion = _transform(adjust_brightness), _transform(darken_region)


def digit_sample(data_dir: Path) -> tuple[np.ndarray, str]:
    """One handwritten digit as uint8: MNIST's first test image if on disk, else sklearn's."""
    try:
        dataset = MNIST(str(data_dir), train=False, download=False)
        return dataset.data[0].numpy(), f"MNIST test[0] (label {int(dataset.targets[0])})"
    except (RuntimeError, OSError):
        digits = load_digits()
        image = np.kron(as_uint8(digits.images[0] / 16.0), np.ones((3, 3), dtype=np.uint8))
        return image, f"sklearn digits[0] (label {int(digits.target[0])})"


def render(image: np.ndarray, title: str, out_path: Path) -> Path:
    """Save the before/after figure of ``image`` (uint8 or float, gray or RGB) to ``out_path``."""
    height, width = image.shape[:2]
    box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    panels = {
        "original": image,
        "as_float [0, 1]": as_float(image),
        "brightness +80 (uint8)": adjust_brightness(image, 80),
        "brightness x0.5": adjust_brightness(image, factor=0.5),
        "float +0.3, clipped": adjust_brightness(as_float(image), 0.3),
        f"darken_region {box} x0.2": darken_region(image, box, 0.2),
    }
    fig = Figure(figsize=(3 * len(panels), 3.4), layout="constrained")
    for ax, (name, panel) in zip(fig.subplots(1, len(panels)), panels.items(), strict=True):
        info, shown = describe(panel), as_float(panel).squeeze()
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0.0, vmax=1.0)
        ax.set_title(f"{name}\n{info['dtype']} [{info['min']:.3g}, {info['max']:.3g}]", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    return out_path


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path, help="image files to show")
    parser.add_argument("--out", type=Path, default=Path("outputs/image_basics"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="MNIST location")
    args = parser.parse_args(argv)
    try:
        samples = [(load_image(path), str(path), path.stem) for path in args.images]
    except UserError as err:
        parser.error(str(err))
    written = []
    for image, title, stem in [*samples, (*digit_sample(args.data_dir), "digit")]:
        info = describe(image)
        print(f"{title}: shape={info['shape']} dtype={info['dtype']} "
              f"range=[{info['min']}, {info['max']}] mean={info['mean']:.3f}")  # fmt: skip
        if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
            image = as_uint8(image)  # e.g. a 16-bit PNG: the operations take uint8 or float
            print(f"  as_uint8 -> range=[{image.min()}, {image.max()}] (scaled, not clipped)")
        written.append(render(image, title, args.out / f"{stem}_basics.png"))
        print(f"  -> {written[-1]}")
    return written


if __name__ == "__main__":
    main()
