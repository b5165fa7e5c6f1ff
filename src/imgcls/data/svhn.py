"""SVHN: torchvision downloads the ``.mat`` files (md5-checked); read here without its md5 pass
over 1.3 GB of ``extra`` (``X`` uint8 ``[32, 32, 3, N]``, ``y`` ``[N, 1]``, 10 for the digit 0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import SVHN

from imgcls.data.base import ImageDataModule, Split, missing_data
from imgcls.utils.errors import UserError

SVHN_FILES = {split: SVHN.split_list[split][1] for split in ("train", "test", "extra")}


class SVHNDataModule(ImageDataModule):
    """SVHN digits, 3x32x32, 73,257 train / 26,032 test (+ 531,131 extra, ~1.6 GB of RAM) images;
    validation carved from the training pool (train, plus extra with ``use_extra``), seeded."""

    all_class_names = tuple(str(d) for d in range(10))
    native_channels, native_size = 3, 32
    default_mean, default_std = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)

    def __init__(
        self, download: bool = True, use_extra: bool = False, val_size: float = 5000, **kwargs
    ) -> None:
        super().__init__(val_size=val_size, **kwargs)
        self.download, self.use_extra = download, use_extra
        self.root = Path(self.data_dir) / "svhn"
        self.needed = ["train", "test", *(["extra"] if use_extra else [])]

    def _missing(self, reason: object) -> Exception:
        files = [SVHN_FILES[split] for split in self.needed]
        return missing_data("SVHN", self.data_dir, self.root, files, reason)

    def prepare_data(self) -> None:
        missing = [s for s in self.needed if not (self.root / SVHN_FILES[s]).is_file()]
        if missing and not self.download:
            raise self._missing("data.download=false")
        try:
            for split in missing:
                SVHN(str(self.root), split=split, download=True)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; bad md5 a RuntimeError
            raise self._missing(str(err).splitlines()[0] if str(err) else err) from err

    def _read(self, split: str) -> Split:
        from scipy.io import loadmat

        path = self.root / SVHN_FILES[split]
        if not path.is_file():
            raise self._missing(f"{path.name} not found")
        try:
            mat = loadmat(str(path))
            images = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)), dtype=np.uint8)
            labels = mat["y"].astype(np.int64).squeeze(1) % 10
        except (ValueError, OSError, KeyError, TypeError) as err:  # scipy: not a MATLAB file
            raise UserError(
                f"{path} is not a readable SVHN .mat file ({type(err).__name__}: {err}); "
                f"delete it to download it again, or replace it with the original file"
            ) from err
        return torch.from_numpy(images), torch.from_numpy(labels)

    def load_split(self, split: str) -> Split:
        names = ["test"] if split == "test" else [s for s in self.needed if s != "test"]
        parts = [self._read(name) for name in names]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
