"""Batched augmentation of float batches ``[B, C, H, W]`` in ``[0, 1]`` (presets: docs/data.md),
drawn per sample from the global (per-rank) RNG: torchvision's v2 transforms draw once per call."""

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
        if len(mean) != len(std) or min(std) <= 0:
            raise UserError(f"normalisation mean {mean} and std {std}: one positive std per mean")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def inverse(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.std.to(images.device) + self.mean.to(images.device)


def uniform(images: torch.Tensor, lo: float, hi: float, shape=(-1,)) -> torch.Tensor:
    """One draw per sample of ``images`` from ``[lo, hi)``, shaped ``shape``."""
    return (lo + torch.rand(len(images), device=images.device) * (hi - lo)).view(shape)


def warp(images: torch.Tensor, rows: list[list[torch.Tensor]], padding: str) -> torch.Tensor:
    """Resample each sample by its affine matrix (2 x 3 ``rows`` of ``[N]`` tensors)."""
    matrix = torch.stack([torch.stack(row, 1) for row in rows], 1).to(images.dtype)
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode=padding, align_corners=False)


class RandomAffine(nn.Module):
    """Per-sample rotation (degrees), isotropic scale and translation (a fraction of the side)."""

    def __init__(self, degrees: float = 0.0, translate: float = 0.0, scale=(1.0, 1.0)) -> None:
        super().__init__()
        self.degrees, self.translate, self.scale = degrees, translate, tuple(scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        angle = uniform(images, -1, 1) * math.radians(self.degrees)
        scale = uniform(images, *self.scale)
        dx, dy = (uniform(images, -2, 2) * self.translate for _ in range(2))
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        return warp(images, [[cos, -sin, dx], [sin, cos, dy]], "zeros")


class RandomResizedCrop(nn.Module):
    """torchvision's ``RandomResizedCrop`` per sample, back to the input size (one affine grid)."""

    def __init__(self, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> None:
        super().__init__()
        self.scale, self.log_ratio = tuple(scale), tuple(math.log(r) for r in ratio)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        area, ratio = uniform(images, *self.scale), torch.exp(uniform(images, *self.log_ratio))
        w, h = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
        x, y, zero = uniform(images, -1, 1) * (1 - w), uniform(images, -1, 1) * (1 - h), 0 * w
        return warp(images, [[w, zero, x], [zero, h, y]], "border")


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
    """Flip each sample left-right with probability 0.5."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.where(uniform(images, 0, 1, (-1, 1, 1, 1)) < 0.5, images.flip(-1), images)


class ColorJitter(nn.Module):
    """Per-sample brightness, contrast and saturation factors drawn from ``[1 - a, 1 + a]``."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0):
        super().__init__()
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images * uniform(images, 1 - self.brightness, 1 + self.brightness, (-1, 1, 1, 1))
        for amount, dims in [(self.contrast, (1, 2, 3)), (self.saturation, (1,))]:
            if amount and (len(dims) == 3 or images.shape[1] == 3):  # saturation: colour only
                mean = images.mean(dim=dims, keepdim=True)
                images = (images - mean) * uniform(images, 1 - amount, 1 + amount, (-1, 1, 1, 1))
                images = images + mean
        return images.clamp(0, 1)


class RandomErasing(nn.Module):
    """torchvision's ``RandomErasing`` per sample (its defaults), filled with uniform noise."""

    def __init__(self, p: float = 0.25, scale=(0.02, 0.33), ratio=(0.3, 3.3)) -> None:
        super().__init__()
        self.p, self.scale, self.log_ratio = p, tuple(scale), tuple(math.log(r) for r in ratio)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        (_, _, height, width), view = images.shape, (-1, 1, 1, 1)
        area = uniform(images, *self.scale, view)
        ratio = torch.exp(uniform(images, *self.log_ratio, view))
        h = (torch.sqrt(area * ratio) * height).round().clamp(1, height)
        w = (torch.sqrt(area / ratio) * width).round().clamp(1, width)
        top = (uniform(images, 0, 1, view) * (height - h + 1)).floor()
        left = (uniform(images, 0, 1, view) * (width - w + 1)).floor()
        rows = torch.arange(height, device=images.device).view(1, 1, -1, 1)
        cols = torch.arange(width, device=images.device).view(1, 1, 1, -1)
        inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        erase = (uniform(images, 0, 1, view) < self.p) & inside
        return torch.where(erase, torch.rand_like(images), images)


class PerSampleUInt8(nn.Module):
    """A v2 transform on each sample as uint8 (RandAugment's posterize, solarize ...) -> float."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return to_float(torch.stack([self.transform(image) for image in to_uint8(images)]))


def _natural() -> list[nn.Module]:
    return [RandomResizedCrop(), RandomHorizontalFlip(), ColorJitter(0.2, 0.2, 0.2)]


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


def build_augment(name: str | Sequence[str] | None, random_erasing: float = 0.0) -> nn.Sequential:
    """The training-time augmentation as one module: presets in order, then random erasing."""
    names = [name] if isinstance(name, str) else list(name or [])
    if unknown := [key for key in names if key not in AUGMENT_PRESETS]:
        raise UserError(
            f"unknown augmentation preset data.augment={unknown[0]!r}; "
            f"choose one of {sorted(AUGMENT_PRESETS)} or a list of them"
        )
    if not 0 <= random_erasing <= 1:
        raise UserError(
            f"data.random_erasing must be a probability in [0, 1], not {random_erasing}"
        )
    modules = [module for key in names for module in AUGMENT_PRESETS[key]()]
    return nn.Sequential(*modules, *([RandomErasing(p=random_erasing)] if random_erasing else []))


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
