"""Image basics: load an image, inspect it, convert dtypes safely."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from imgcls.utils.errors import UserError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def load_image_tensor(path: str | Path, channels: int = 3) -> torch.Tensor:
    """Decode an image file to uint8 ``[C, H, W]`` with 1 (grayscale) or 3 (RGB) channels."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()
