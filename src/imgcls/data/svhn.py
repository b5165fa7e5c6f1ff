"""SVHN (Street View House Numbers) through torchvision's own ``.mat`` reader.

Files: ``<data_dir>/svhn/train_32x32.mat``, ``test_32x32.mat`` and, with ``use_extra=true``,
``extra_32x32.mat`` (torchvision's SVHN reads them from its ``root`` directly, which is
``<data_dir>/svhn`` here). Each holds ``X`` uint8 ``[32, 32, 3, N]`` and ``y`` ``[N, 1]`` with the
label 10 for the digit zero; torchvision maps 10 -> 0, so labels are the digits 0-9.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import SVHN

from imgcls.data.base import ImageDataModule, Split
from imgcls.utils.errors import UserError

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


class _LocalSVHN(SVHN):
    """torchvision's SVHN reader; a present file counts as intact.

    torchvision checks the md5 of the whole ``.mat`` file on every construction (1.3 GB for
    ``extra``); the download itself is still md5-verified (``download_url``).
    """

    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


class SVHNDataModule(ImageDataModule):
    """SVHN digits, 3x32x32, 73,257 train / 26,032 test (+ 531,131 extra) images.

    Validation is carved from the training pool (train, plus extra with ``use_extra``) by a
    seeded split; the official test split stays untouched. The extra split needs ~1.6 GB of RAM.
    """

    all_class_names = tuple(str(d) for d in range(10))
    native_channels = 3
    native_size = 32
    # per-channel statistics of the SVHN training split
    default_mean = (0.4377, 0.4438, 0.4728)
    default_std = (0.1980, 0.2010, 0.1970)

    def __init__(
        self, download: bool = True, use_extra: bool = False, val_size: float = 5000, **kwargs
    ) -> None:
        super().__init__(val_size=val_size, **kwargs)
        self.download = download
        self.use_extra = use_extra

    @property
    def root(self) -> Path:
        return Path(self.data_dir) / "svhn"

    def _needed(self) -> list[str]:
        return ["train", "test", *(["extra"] if self.use_extra else [])]

    def _missing_data_error(self, reason: object) -> UserError:
        files = ", ".join(SVHN_FILES[split] for split in self._needed())
        return UserError(
            f"SVHN is not in data.data_dir={self.data_dir} and could not be downloaded ({reason}); "
            f"copy {files} into {self.root}/ or train offline with data=digits"
        )

    def prepare_data(self) -> None:
        missing = [s for s in self._needed() if not (self.root / SVHN_FILES[s]).is_file()]
        if not missing:
            return
        if not self.download:
            raise self._missing_data_error("data.download=false")
        try:
            for split in missing:
                SVHN(str(self.root), split=split, download=True)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; bad md5 a RuntimeError
            raise self._missing_data_error(str(err).splitlines()[0] if str(err) else err) from err

    def _read(self, split: str) -> Split:
        path = self.root / SVHN_FILES[split]
        if not path.is_file():
            raise self._missing_data_error(f"{path.name} not found")
        try:
            dataset = _LocalSVHN(str(self.root), split=split, download=False)
        except (ValueError, OSError, KeyError, TypeError) as err:  # scipy: not a MATLAB file
            raise UserError(
                f"{path} is not a readable SVHN .mat file ({type(err).__name__}: {err}); "
                f"delete it to download it again, or replace it with the original file"
            ) from err
        images = torch.from_numpy(np.ascontiguousarray(dataset.data, dtype=np.uint8))
        return images, torch.from_numpy(dataset.labels).long()

    def load_split(self, split: str) -> Split:
        if split == "test":
            return self._read("test")
        parts = [self._read(part) for part in ("train", *(["extra"] if self.use_extra else []))]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
