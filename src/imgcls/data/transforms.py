"""Batched tensor transforms shared by the in-memory and the standard data paths.

Every transform takes a float image batch ``[B, C, H, W]`` in ``[0, 1]`` and draws its random
parameters per sample, so augmenting a whole batch at once (fast path, on the training device) and
augmenting one sample at a time (standard path, in loader workers) mean the same thing.

Augmentation presets (``data.augment``; a list of names is applied in order):

- ``none``: nothing.
- ``digits``: small rotation, scale and shift (one affine warp); no flips, digits are not symmetric.
- ``crop_flip``: 4-pixel zero padding, random crop back to size, horizontal flip (CIFAR's).
- ``natural``: random resized crop, horizontal flip, brightness/contrast/saturation jitter.
- ``randaugment`` / ``trivialaugment``: torchvision's v2 RandAugment / TrivialAugmentWide, applied
  per sample on uint8 images (the float batch is rounded back to uint8 first, which is exact for
  images that came from uint8).
- ``erasing``: random erasing (p=0.25); ``natural_erasing`` is ``natural`` followed by it.

``data.random_erasing=P`` appends random erasing with probability ``P`` to any preset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from imgcls.utils.errors import UserError


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Integer images -> float32 ``[0, 1]``; float input is returned unchanged.

    uint8 is divided by 255 (the batch path's case); other integer types by their dtype's maximum
    (65535 for 16-bit images), negative values clipped to 0; bool gives 0.0 and 1.0.
    """
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.is_floating_point():
        return images
    if images.dtype == torch.bool:
        return images.float()
    top = float(torch.iinfo(images.dtype).max)
    return images.double().clamp_(min=0).div_(top).float()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Any images -> uint8 ``[0, 255]``, rounded and clipped (no wrap-around).

    float ``[0, 1]`` is scaled by 255; uint16/uint32/uint64 (16-bit images ...) are scaled down
    by their dtype's maximum; signed integers (say, int16 results of uint8 arithmetic) are
    uint8-unit values, clipped to 0..255.
    """
    if images.dtype == torch.uint8:
        return images
    if images.dtype in (torch.uint16, torch.uint32, torch.uint64):
        images = images.double().div_(float(torch.iinfo(images.dtype).max))
    elif not images.is_floating_point():
        return images.clamp(0, 255).to(torch.uint8)
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


RESIZE_MODES = ("squash", "crop")


def resize_uint8(images: torch.Tensor, size: int, mode: str = "squash") -> torch.Tensor:
    """A uint8 batch ``[N, C, H, W]`` at ``size x size`` (bilinear, antialiased), staying uint8.

    ``squash``: both sides to ``size`` (the aspect ratio is lost); ``crop``: the shorter side to
    ``size``, then the centre ``size x size`` (how torchvision's pretrained weights were
    evaluated). Training, evaluation, prediction and export all resize through this function.
    """
    if images.shape[-2:] == (size, size):
        return images
    if mode == "crop":
        return TF.center_crop(TF.resize(images, size, antialias=True), [size, size])
    return TF.resize(images, [size, size], antialias=True)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on a float batch."""

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
        """Normalised batch -> float ``[0, 1]`` images again (for display)."""
        return images * self.std.to(images.device) + self.mean.to(images.device)


class RandomAffine(nn.Module):
    """Per-sample rotation, isotropic scale and translation (one ``grid_sample`` for the batch)."""

    def __init__(
        self,
        degrees: float = 0.0,
        translate: float = 0.0,
        scale: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        super().__init__()
        self.degrees = degrees
        self.translate = translate
        self.scale = tuple(scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, device = images.shape[0], images.device
        angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(self.degrees)
        lo, hi = self.scale
        scale = lo + torch.rand(n, device=device) * (hi - lo)
        shift = (torch.rand(n, 2, device=device) * 2 - 1) * (2 * self.translate)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )


class RandomResizedCrop(nn.Module):
    """Per-sample crop of a random area fraction and aspect ratio, resized back to the input size.

    Like torchvision's ``RandomResizedCrop`` but batched: each sample's crop box becomes one affine
    grid, and the whole batch is resampled by a single ``grid_sample``.
    """

    def __init__(
        self,
        scale: tuple[float, float] = (0.35, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        super().__init__()
        if not 0 < scale[0] <= scale[1] <= 1:
            raise UserError(f"RandomResizedCrop scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, device = images.shape[0], images.device
        area = self.scale[0] + torch.rand(n, device=device) * (self.scale[1] - self.scale[0])
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        ratio = torch.exp(log_lo + torch.rand(n, device=device) * (log_hi - log_lo))
        # crop width and height as fractions of the image side (aspect = w / h)
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (torch.rand(n, device=device) * 2 - 1) * (1 - w)
        cy = (torch.rand(n, device=device) * 2 - 1) * (1 - h)
        zero = torch.zeros_like(w)
        theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )


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

    @staticmethod
    def _factor(amount: float, images: torch.Tensor) -> torch.Tensor:
        rand = torch.rand(images.shape[0], 1, 1, 1, device=images.device, dtype=images.dtype)
        return 1 + (rand * 2 - 1) * amount

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.brightness:
            images = images * self._factor(self.brightness, images)
        if self.contrast:
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = (images - mean) * self._factor(self.contrast, images) + mean
        if self.saturation and images.shape[1] == 3:
            gray = images.mean(dim=1, keepdim=True)
            images = (images - gray) * self._factor(self.saturation, images) + gray
        return images.clamp(0, 1)


class RandomErasing(nn.Module):
    """With probability ``p`` per sample, fill one random rectangle with uniform noise in [0, 1].

    The rectangle covers an area fraction in ``scale`` with an aspect ratio in ``ratio`` (the
    defaults of torchvision's ``RandomErasing``); all rectangles are drawn at once as masks.
    """

    def __init__(
        self,
        p: float = 0.25,
        scale: tuple[float, float] = (0.02, 0.33),
        ratio: tuple[float, float] = (0.3, 3.3),
    ) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise UserError(f"random erasing probability must be in [0, 1], got {p}")
        self.p, self.scale, self.ratio = p, tuple(scale), tuple(ratio)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        device = images.device
        area = self.scale[0] + torch.rand(n, device=device) * (self.scale[1] - self.scale[0])
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        ratio = torch.exp(log_lo + torch.rand(n, device=device) * (log_hi - log_lo))
        h = (torch.sqrt(area * ratio) * height).round().clamp(1, height)
        w = (torch.sqrt(area / ratio) * width).round().clamp(1, width)
        top = (torch.rand(n, device=device) * (height - h + 1)).floor()
        left = (torch.rand(n, device=device) * (width - w + 1)).floor()
        rows = torch.arange(height, device=device).view(1, 1, -1, 1)
        cols = torch.arange(width, device=device).view(1, 1, 1, -1)
        view = (-1, 1, 1, 1)
        inside = (
            (rows >= top.view(view))
            & (rows < (top + h).view(view))
            & (cols >= left.view(view))
            & (cols < (left + w).view(view))
        )
        erase = (torch.rand(n, device=device) < self.p).view(view) & inside
        return torch.where(erase, torch.rand_like(images), images)


class PerSampleUInt8(nn.Module):
    """Apply a torchvision (v2) transform to each sample as a uint8 ``[C, H, W]`` image.

    For the policies (RandAugment, TrivialAugment) whose operations are defined on uint8 images
    (posterize, solarize, equalize ...). The float batch is rounded back to uint8, which restores
    images that came from uint8 exactly; the result is float ``[0, 1]`` again.
    """

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        as_uint8 = to_uint8(images)
        out = torch.stack([self.transform(image) for image in as_uint8])
        return to_float(out)


def _randaugment() -> list[nn.Module]:
    from torchvision.transforms import v2

    return [PerSampleUInt8(v2.RandAugment())]


def _trivialaugment() -> list[nn.Module]:
    from torchvision.transforms import v2

    return [PerSampleUInt8(v2.TrivialAugmentWide())]


def _natural() -> list[nn.Module]:
    return [
        RandomResizedCrop(scale=(0.35, 1.0)),
        RandomHorizontalFlip(),
        ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
    ]


AUGMENT_PRESETS: dict[str, Callable[[], list[nn.Module]]] = {
    "none": lambda: [],
    "digits": lambda: [RandomAffine(degrees=10, translate=0.08, scale=(0.9, 1.1))],
    "natural": _natural,
    "crop_flip": lambda: [RandomPadCrop(4), RandomHorizontalFlip()],
    "randaugment": _randaugment,
    "trivialaugment": _trivialaugment,
    "erasing": lambda: [RandomErasing(p=0.25)],
    "natural_erasing": lambda: [*_natural(), RandomErasing(p=0.25)],
}


def preset_names(augment: str | Sequence[str] | None) -> list[str]:
    """``data.augment`` as a list of preset names (a single name, a list, or none)."""
    if augment is None:
        return []
    if isinstance(augment, str):
        return [augment]
    return [str(name) for name in augment]


def build_augment(name: str | Sequence[str] | None, random_erasing: float = 0.0) -> nn.Module:
    """The training-time augmentation as one module: presets in order, then random erasing."""
    modules: list[nn.Module] = []
    for key in preset_names(name):
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

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str | Sequence[str] | None = None,
        random_erasing: float = 0.0,
    ):
        super().__init__()
        self.augment = build_augment(augment, random_erasing)
        self.normalize = Normalize(mean, std)

    def forward(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        images = to_float(images)
        if train:
            images = self.augment(images)
        return self.normalize(images)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Replace the normalisation statistics (e.g. once computed from the training split)."""
        device = self.normalize.mean.device
        self.normalize = Normalize(mean, std).to(device)
