"""MNIST through torchvision's own IDX parser; the official 10k test split stays untouched."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import MNIST

from imgcls.data.base import ImageDataModule, Split
from imgcls.utils.errors import UserError

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


class MNISTDataModule(ImageDataModule):
    """MNIST digits, 1x28x28; validation carved from the 60k training images by a seeded split."""

    all_class_names = tuple(str(d) for d in range(10))
    native_channels = 1
    native_size = 28
    default_mean = (0.1307,)
    default_std = (0.3081,)

    def __init__(self, download: bool = True, val_size: float = 5000, **kwargs) -> None:
        super().__init__(val_size=val_size, **kwargs)
        self.download = download

    def _missing_data_error(self, reason: object) -> UserError:
        raw = Path(self.data_dir) / "MNIST" / "raw"
        return UserError(
            f"MNIST is not in data.data_dir={self.data_dir} and could not be downloaded "
            f"({reason}); copy {', '.join(MNIST_FILES)} into {raw}/ "
            "or train offline with data=digits"
        )

    def prepare_data(self) -> None:
        try:
            for train in (True, False):
                MNIST(self.data_dir, train=train, download=self.download)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; bad md5 a RuntimeError
            raise self._missing_data_error(str(err).splitlines()[0] if str(err) else err) from err

    def load_split(self, split: str) -> Split:
        try:
            dataset = MNIST(self.data_dir, train=split == "train", download=False)
        except RuntimeError as err:
            raise self._missing_data_error("dataset not found") from err
        images: torch.Tensor = dataset.data.unsqueeze(1)
        return images, dataset.targets.long()
