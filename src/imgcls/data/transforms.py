"""Float batch augmentations drawn per sample (torchvision's v2 draws once per call)."""

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from imgcls.imaging import to_float, to_uint8
from imgcls.utils.errors import UserError

RESIZE_MODES = ("squash", "crop")


def resize_uint8(images: torch.Tensor, size: int, mode: str = "squash") -> torch.Tensor:
    """uint8 images at ``size x size``: ``squash`` both sides or ``crop`` (shorter side, centre)."""
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


def random_affine(images: torch.Tensor, degrees=0.0, translate=0.0, scale=(1.0, 1.0)):
    """Per-sample rotation (degrees), isotropic scale and translation (a fraction of the side)."""
    angle, factor = uniform(images, -1, 1) * math.radians(degrees), uniform(images, *scale)
    dx, dy = (uniform(images, -2, 2) * translate for _ in range(2))
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    return warp(images, [[cos, -sin, dx], [sin, cos, dy]], "zeros")


def random_resized_crop(images: torch.Tensor, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's ``RandomResizedCrop`` per sample, back to the input size (one affine grid)."""
    area, ratio = uniform(images, *scale), torch.exp(uniform(images, *map(math.log, ratio)))
    w, h = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
    x, y, zero = uniform(images, -1, 1) * (1 - w), uniform(images, -1, 1) * (1 - h), 0 * w
    return warp(images, [[w, zero, x], [zero, h, y]], "border")


def random_pad_crop(images: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back at a random offset per sample (the CIFAR crop)."""
    (n, c, h, w), p, device = images.shape, padding, images.device
    dy, dx = torch.randint(0, 2 * p + 1, (2, n, 1, 1), device=device)
    rows = dy + torch.arange(h, device=device).view(1, -1, 1)
    cols = dx + torch.arange(w, device=device).view(1, 1, -1)
    index = (rows * (w + 2 * p) + cols).flatten(1).unsqueeze(1).expand(-1, c, -1)
    return F.pad(images, (p, p, p, p)).flatten(2).gather(2, index).view(n, c, h, w)


def random_flip(images: torch.Tensor) -> torch.Tensor:
    """Flip each sample left-right with probability 0.5."""
    return torch.where(uniform(images, 0, 1, (-1, 1, 1, 1)) < 0.5, images.flip(-1), images)


def color_jitter(images: torch.Tensor, brightness=0.0, contrast=0.0, saturation=0.0):
    """Per-sample brightness, contrast and saturation factors drawn from ``[1 - a, 1 + a]``."""
    images = images * uniform(images, 1 - brightness, 1 + brightness, (-1, 1, 1, 1))
    for amount, dims in [(contrast, (1, 2, 3)), (saturation, (1,))]:
        if amount and (len(dims) == 3 or images.shape[1] == 3):  # saturation: colour only
            mean = images.mean(dim=dims, keepdim=True)
            images = (images - mean) * uniform(images, 1 - amount, 1 + amount, (-1, 1, 1, 1))
            images = images + mean
    return images.clamp(0, 1)


def random_erase(images: torch.Tensor, p=0.25, scale=(0.02, 0.33), ratio=(0.3, 3.3)):
    """torchvision's ``RandomErasing`` per sample (its defaults), filled with uniform noise."""
    (_, _, height, width), view = images.shape, (-1, 1, 1, 1)
    area = uniform(images, *scale, view)
    ratio = torch.exp(uniform(images, *map(math.log, ratio), view))
    h = (torch.sqrt(area * ratio) * height).round().clamp(1, height)
    w = (torch.sqrt(area / ratio) * width).round().clamp(1, width)
    top = (uniform(images, 0, 1, view) * (height - h + 1)).floor()
    left = (uniform(images, 0, 1, view) * (width - w + 1)).floor()
    rows = torch.arange(height, device=images.device).view(1, 1, -1, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, 1, -1)
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    erase = (uniform(images, 0, 1, view) < p) & inside
    return torch.where(erase, torch.rand_like(images), images)


def per_sample_uint8(images: torch.Tensor, transform: Callable) -> torch.Tensor:
    """A v2 transform on each sample as uint8 (RandAugment's posterize, solarize ...) -> float."""
    return to_float(torch.stack([transform(image) for image in to_uint8(images)]))


JITTER = partial(color_jitter, brightness=0.2, contrast=0.2, saturation=0.2)
NATURAL = [random_resized_crop, random_flip, JITTER]
AUGMENT_PRESETS: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {
    "none": [],
    "digits": [partial(random_affine, degrees=10, translate=0.08, scale=(0.9, 1.1))],
    "crop_flip": [random_pad_crop, random_flip],
    "natural": NATURAL,
    "randaugment": [partial(per_sample_uint8, transform=v2.RandAugment())],
    "trivialaugment": [partial(per_sample_uint8, transform=v2.TrivialAugmentWide())],
    "erasing": [random_erase],
    "natural_erasing": [*NATURAL, random_erase],
}


def build_augment(name: str | Sequence[str] | None, random_erasing: float = 0.0) -> list:
    """The training-time augmentations in order: presets, then random erasing."""
    names = [name] if isinstance(name, str) else list(name or [])
    if unknown := [key for key in names if key not in AUGMENT_PRESETS]:
        raise UserError(
            f"unknown augmentation preset data.augment={unknown[0]!r}; "
            f"choose one of {sorted(AUGMENT_PRESETS)} or a list of them"
        )
    if not 0 <= random_erasing <= 1:
        raise UserError(f"data.random_erasing must be in [0, 1], not {random_erasing}")
    erasing = [partial(random_erase, p=random_erasing)] if random_erasing else []
    return [transform for key in names for transform in AUGMENT_PRESETS[key]] + erasing


class BatchPipeline(nn.Module):
    """uint8 batch -> float -> (train-time augmentation) -> normalised float batch."""

    def __init__(self, mean, std, augment=None, random_erasing: float = 0.0) -> None:
        super().__init__()
        self.augment = build_augment(augment, random_erasing)
        self.normalize = Normalize(mean, std)

    def forward(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        images = to_float(images)
        for transform in self.augment if train else []:
            images = transform(images)
        return self.normalize(images)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Replace the normalisation statistics (e.g. once computed from the training split)."""
        self.normalize = Normalize(mean, std).to(self.normalize.mean.device)
