"""Image basics, before and after: ``python scripts/image_basics.py [IMAGE ...] [--out DIR]``.

For every image given (and for one MNIST-like digit: MNIST from ``--data-dir`` when present,
else scikit-learn's bundled digits) prints shape, dtype and value range, then renders one PNG
with the original, the float conversion, brightened and darkened versions (clipped, no
wrap-around) and a darkened rectangle.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from imgcls.imaging import (  # noqa: E402
    adjust_brightness,
    as_float,
    as_uint8,
    darken_region,
    describe,
    load_image,
)
from imgcls.utils.errors import UserError  # noqa: E402


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
        written.append(render(image, title, args.out / f"{stem}_basics.png"))
        print(f"  -> {written[-1]}")
    return written


if __name__ == "__main__":
    main()
