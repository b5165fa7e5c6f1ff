"""Batched augmentation on float batches ``[B, C, H, W]`` in ``[0, 1]`` (presets: docs/data.md).

Random parameters are drawn per sample from the global (per-rank) RNG: torchvision's v2 transforms
draw one set per call, i.e. per batch, so the batch path and the per-sample path would differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from imgcls.imaging import to_float, to_uint8
from imgcls.utils.errors import UserError

__all__ = ["to_float", "to_uint8"]  # re-exported: the package's dtype conversions
RESIZE_MODES = ("squash", "crop")


def resize_uint8(images: torch.Tensor, size: int, mode: str = "squash") -> torch.Tensor:
    """A uint8 batch at ``size x size`` (antialiased): ``squash`` both sides, or ``crop`` the
    shorter side to ``size`` then the centre. Every task resizes through this function."""
    if images.shape[-2:] == (size, size):
        return images
    if mode == "crop":
        return TF.center_crop(TF.resize(images, size, antialias=True), [size, size])
    return TF.resize(images, [size, size], antialias=True)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on a float batch; ``inverse`` undoes it (for display)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise UserError(f"normalisation mean {list(mean)} and std {list(std)} differ in length")
        if any(s <= 0 for s in std):
            raise UserError(f"normalisation std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def inverse(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.std.to(images.device) + self.mean.to(images.device)


def _uniform(n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return lo + torch.rand(n, device=device) * (hi - lo)


def _warp(images: torch.Tensor, theta: list[list[torch.Tensor]], padding: str) -> torch.Tensor:
    """Resample each sample by its affine matrix ``theta`` (2 x 3 rows of ``[N]`` tensors)."""
    matrix = torch.stack([torch.stack(row, 1) for row in theta], 1).to(images.dtype)
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode=padding, align_corners=False)


class RandomAffine(nn.Module):
    """Per-sample rotation, isotropic scale and translation (one ``grid_sample`` for the batch)."""

    def __init__(self, degrees: float = 0.0, translate: float = 0.0, scale=(1.0, 1.0)) -> None:
        super().__init__()
        self.degrees, self.translate, self.scale = degrees, translate, tuple(scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, device = images.shape[0], images.device
        angle = _uniform(n, -1, 1, device) * math.radians(self.degrees)
        scale = _uniform(n, *self.scale, device)
        dx, dy = (_uniform(n, -1, 1, device) * 2 * self.translate for _ in range(2))
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        return _warp(images, [[cos, -sin, dx], [sin, cos, dy]], "zeros")


class RandomResizedCrop(nn.Module):
    """torchvision's ``RandomResizedCrop`` per sample, back to the input size (one affine grid)."""

    def __init__(self, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> None:
        super().__init__()
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, device = images.shape[0], images.device
        area = _uniform(n, *self.scale, device)
        ratio = torch.exp(_uniform(n, *(math.log(r) for r in self.ratio), device))
        w, h = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
        cx, cy = _uniform(n, -1, 1, device) * (1 - w), _uniform(n, -1, 1, device) * (1 - h)
        zero = torch.zeros_like(w)
        return _warp(images, [[w, zero, cx], [zero, h, cy]], "border")


class RandomPadCrop(nn.Module):
    """Zero-pad by ``padding`` and crop back at a random offset per sample (the CIFAR crop)."""

    def __init__(self, padding: int = 4) -> None:
        super().__init__()
        self.padding = padding

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        (n, c, h, w), p, device = images.shape, self.padding, images.device
        dy, dx = torch.randint(0, 2 * p + 1, (2, n, 1, 1), device=device)
        rows = dy + torch.arange(h, device=device).view(1, -1, 1)
        cols = dx + torch.arange(w, device=device).view(1, 1, -1)
        index = (rows * (w + 2 * p) + cols).flatten(1).unsqueeze(1).expand(-1, c, -1)
        return F.pad(images, (p, p, p, p)).flatten(2).gather(2, index).view(n, c, h, w)


class RandomHorizontalFlip(nn.Module):
    """Flip each sample left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(images.shape[0], device=images.device) < self.p
        return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


class ColorJitter(nn.Module):
    """Per-sample brightness, contrast and saturation factors drawn from ``[1 - a, 1 + a]``."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0):
        super().__init__()
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        def factor(amount: float) -> torch.Tensor:
            return 1 + _uniform(images.shape[0], -amount, amount, images.device).view(-1, 1, 1, 1)

        if self.brightness:
            images = images * factor(self.brightness)
        if self.contrast:
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = (images - mean) * factor(self.contrast) + mean
        if self.saturation and images.shape[1] == 3:
            gray = images.mean(dim=1, keepdim=True)
            images = (images - gray) * factor(self.saturation) + gray
        return images.clamp(0, 1)


class RandomErasing(nn.Module):
    """torchvision's ``RandomErasing`` per sample (its defaults), filled with uniform noise."""

    def __init__(self, p: float = 0.25, scale=(0.02, 0.33), ratio=(0.3, 3.3)) -> None:
        super().__init__()
        self.p, self.scale, self.ratio = p, tuple(scale), tuple(ratio)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        (n, _, height, width), device, view = images.shape, images.device, (-1, 1, 1, 1)
        area = _uniform(n, *self.scale, device)
        ratio = torch.exp(_uniform(n, *(math.log(r) for r in self.ratio), device))
        h = (torch.sqrt(area * ratio) * height).round().clamp(1, height).view(view)
        w = (torch.sqrt(area / ratio) * width).round().clamp(1, width).view(view)
        top = (torch.rand(n, device=device).view(view) * (height - h + 1)).floor()
        left = (torch.rand(n, device=device).view(view) * (width - w + 1)).floor()
        rows = torch.arange(height, device=device).view(1, 1, -1, 1)
        cols = torch.arange(width, device=device).view(1, 1, 1, -1)
        inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        erase = (torch.rand(n, device=device) < self.p).view(view) & inside
        return torch.where(erase, torch.rand_like(images), images)


class PerSampleUInt8(nn.Module):
    """A v2 transform on each sample as uint8 (RandAugment's posterize, solarize ...) -> float."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return to_float(torch.stack([self.transform(image) for image in to_uint8(images)]))


def _natural() -> list[nn.Module]:
    return [
        RandomResizedCrop(scale=(0.35, 1.0)),
        RandomHorizontalFlip(),
        ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
    ]


AUGMENT_PRESETS: dict[str, Callable[[], list[nn.Module]]] = {
    "none": lambda: [],
    "digits": lambda: [RandomAffine(degrees=10, translate=0.08, scale=(0.9, 1.1))],
    "crop_flip": lambda: [RandomPadCrop(4), RandomHorizontalFlip()],
    "natural": _natural,
    "randaugment": lambda: [PerSampleUInt8(v2.RandAugment())],
    "trivialaugment": lambda: [PerSampleUInt8(v2.TrivialAugmentWide())],
    "erasing": lambda: [RandomErasing(p=0.25)],
    "natural_erasing": lambda: [*_natural(), RandomErasing(p=0.25)],
}


def build_augment(name: str | Sequence[str] | None, random_erasing: float = 0.0) -> nn.Module:
    """The training-time augmentation as one module: presets in order, then random erasing."""
    names = [] if name is None else [name] if isinstance(name, str) else [str(n) for n in name]
    modules: list[nn.Module] = []
    for key in names:
        key = "none" if key in ("", "null") else key
        if key not in AUGMENT_PRESETS:
            raise UserError(
                f"unknown augmentation preset data.augment={key!r}; "
                f"choose one of {sorted(AUGMENT_PRESETS)} or a list of them"
            )
        modules.extend(AUGMENT_PRESETS[key]())
    if not 0 <= random_erasing <= 1:
        raise UserError(
            f"data.random_erasing must be a probability in [0, 1], got {random_erasing}"
        )
    if random_erasing > 0:
        modules.append(RandomErasing(p=random_erasing))
    return nn.Sequential(*modules)


class BatchPipeline(nn.Module):
    """uint8 batch -> float -> (train-time augmentation) -> normalised float batch."""

    def __init__(self, mean, std, augment=None, random_erasing: float = 0.0) -> None:
        super().__init__()
        self.augment = build_augment(augment, random_erasing)
        self.normalize = Normalize(mean, std)

    def forward(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        images = to_float(images)
        return self.normalize(self.augment(images) if train else images)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Replace the normalisation statistics (e.g. once computed from the training split)."""
        self.normalize = Normalize(mean, std).to(self.normalize.mean.device)
