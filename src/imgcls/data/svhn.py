"""SVHN: torchvision downloads the ``.mat`` files, read here without its md5 pass (1.3 GB extra)."""

from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import SVHN

from imgcls.data.base import ImageDataModule, Split
from imgcls.utils.errors import UserError

SVHN_FILES = {split: SVHN.split_list[split][1] for split in ("train", "test", "extra")}


class SVHNDataModule(ImageDataModule):
    """SVHN digits, 3x32x32, 73,257 train / 26,032 test (+ 531,131 extra with ``use_extra``)."""

    dataset = SVHN
    all_class_names = tuple(str(d) for d in range(10))
    in_channels, native_size = 3, 32
    default_mean, default_std = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)

    def __init__(
        self, download: bool = True, use_extra: bool = False, val_size: float = 5000, **kwargs
    ) -> None:
        super().__init__(val_size=val_size, **kwargs)
        self.root = Path(self.data_dir) / "svhn"
        self.needed = ["train", "test", *(["extra"] if use_extra else [])]

    def prepare_data(self) -> None:
        missing = [s for s in self.needed if not (self.root / SVHN_FILES[s]).is_file()]
        calls = [{"root": str(self.root), "split": split} for split in missing]
        self.fetch(self.root, [SVHN_FILES[split] for split in self.needed], calls)

    def load_split(self, split: str) -> Split:
        from scipy.io import loadmat

        images, labels = [], []
        for name in ["test"] if split == "test" else [s for s in self.needed if s != "test"]:
            path = self.root / SVHN_FILES[name]
            try:
                mat = loadmat(str(path))
                images.append(np.transpose(mat["X"], (3, 2, 0, 1)))
                labels.append(mat["y"].astype(np.int64).squeeze(1) % 10)
            except (ValueError, OSError, KeyError, TypeError) as err:  # scipy: not a MATLAB file
                raise UserError(
                    f"{path} is not a readable SVHN .mat file ({type(err).__name__}: {err}); "
                    "delete it to download it again, or replace it with the original file"
                ) from err
        images = np.ascontiguousarray(np.concatenate(images), dtype=np.uint8)
        return torch.from_numpy(images), torch.from_numpy(np.concatenate(labels))
