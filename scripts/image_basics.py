"""Image basics, before and after: ``python scripts/image_basics.py [IMAGE ...] [--out DIR]``.

Images are tensors ``[C, H, W]``, uint8 or float in [0, 1]; operations keep dtypes and clip."""

import argparse
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from sklearn.datasets import load_digits
from torchvision.datasets import MNIST
from torchvision.transforms.v2 import functional as F

from imgcls.imaging import open_image, pil_to_tensor, to_float, to_uint8
from imgcls.utils.errors import UserError


def load(path: Path) -> torch.Tensor:
    """An image file as uint8 ``[C, H, W]``: 1 channel if grey, else 3 (upright, 16 bits scaled)."""
    with open_image(path) as image:
        return pil_to_tensor(image, channels=1 if image.getbands()[0] in "1LIF" else 3)


def describe(image: torch.Tensor) -> dict[str, Any]:
    """Shape, dtype, value range, and whether that is the dtype's ``(0, max)`` or ``(0.0, 1.0)``."""
    lo, hi = image.min().item(), image.max().item()
    expected = (0.0, 1.0) if image.is_floating_point() else (0, torch.iinfo(image.dtype).max)
    ok, mean = expected[0] <= lo and hi <= expected[1], image.double().mean().item()
    info = {"shape": tuple(image.shape), "dtype": str(image.dtype)[6:], "min": lo, "max": hi}
    return info | {"mean": mean, "expected_range": expected, "in_expected_range": ok}


def adjust_brightness(image: torch.Tensor, delta: float = 0.0, factor: float = 1.0) -> torch.Tensor:
    """``image * factor + delta`` (``delta`` in the image's units), clipped, in its dtype."""
    scale = 1.0 if image.is_floating_point() else 255.0  # uint8 or float [0, 1]
    out = (F.adjust_brightness(to_float(image), factor) + delta / scale).clamp(0, 1)
    return out.to(image.dtype) if image.is_floating_point() else to_uint8(out)


def darken_region(image: torch.Tensor, box: tuple[int, ...], factor: float = 0.5) -> torch.Tensor:
    """A copy with ``box = (left, top, right, bottom)`` (PIL's coordinates) times ``factor``."""
    if not 0 <= factor <= 1:
        raise ValueError(f"darken factor must be in [0, 1], got {factor}")
    left, top, right, bottom = (max(0, int(v)) for v in box)
    out = image.clone()
    region = out[..., top:bottom, left:right]
    region.copy_(adjust_brightness(region, factor=factor))
    return out


def digit_sample(data_dir: Path) -> tuple[torch.Tensor, str]:
    """A handwritten digit, uint8 ``[1, H, W]``: MNIST test[0] if on disk, else sklearn's."""
    try:
        dataset = MNIST(str(data_dir), train=False, download=False)
        return dataset.data[:1], f"MNIST test[0] (label {int(dataset.targets[0])})"
    except (RuntimeError, OSError):
        digits = load_digits()
        image = to_uint8(torch.from_numpy(digits.images[:1] / 16.0))
        return image, f"sklearn digits[0] (label {int(digits.target[0])})"


def render(image: torch.Tensor, title: str, out_path: Path) -> Path:
    """Save the before/after figure of ``image`` (uint8 or float, gray or RGB) to ``out_path``."""
    height, width = image.shape[-2:]
    box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    panels = {
        "original": image,
        "to_float [0, 1]": to_float(image),
        "brightness +80 (uint8)": adjust_brightness(image, 80),
        "brightness x0.5": adjust_brightness(image, factor=0.5),
        "float +0.3, clipped": adjust_brightness(to_float(image), 0.3),
        f"darken_region {box} x0.2": darken_region(image, box, 0.2),
    }
    fig = Figure(figsize=(3 * len(panels), 3.4), layout="constrained")
    for ax, (name, panel) in zip(fig.subplots(1, len(panels)), panels.items(), strict=True):
        info, shown = describe(panel), to_float(panel).permute(1, 2, 0).squeeze(2)
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
        samples = [(load(path), str(path), path.stem) for path in args.images]
    except UserError as err:
        parser.error(str(err))
    written = []
    for image, title, stem in [*samples, (*digit_sample(args.data_dir), "digit")]:
        info = describe(image)
        print(f"{title}: shape={info['shape']} dtype={info['dtype']} "
              f"range=[{info['min']}, {info['max']}] mean={info['mean']:.3f}")  # fmt: skip
        written.append(render(image, title, args.out / f"{stem}_basics.png"))
        print(f"  -> {written[-1]}")
    return written


if __name__ == "__main__":
    main()
