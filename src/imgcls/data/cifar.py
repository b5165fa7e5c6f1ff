"""CIFAR-10/100: torchvision downloads the pickles (md5-checked); read here, a copied-in set
needs no checksum pass (file layout: docs/data.md)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from imgcls.data.base import ImageDataModule, Split, missing_data

CIFAR100_CLASSES = """
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile
cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp
lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom
oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor
train trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split()  # noqa: SIM905 (100 names, alphabetical)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10, 3x32x32, 50k train / 10k test; validation carved from train by a seeded split."""

    dataset, label_key = CIFAR10, "labels"
    all_class_names = ("airplane", "automobile", "bird", "cat", "deer")
    all_class_names += ("dog", "frog", "horse", "ship", "truck")
    native_channels, native_size = 3, 32
    default_mean, default_std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

    def __init__(self, download: bool = True, val_size: float = 5000, **kwargs) -> None:
        super().__init__(val_size=val_size, **kwargs)
        self.download = download
        self.folder = Path(self.data_dir) / self.dataset.base_folder

    def files(self, split: str) -> list[str]:
        return [name for name, _ in getattr(self.dataset, f"{split}_list")]

    def _missing(self, reason: object) -> Exception:
        files = self.files("train") + self.files("test")
        return missing_data(self.dataset.__name__, self.data_dir, self.folder, files, reason)

    def prepare_data(self) -> None:
        if all((self.folder / name).is_file() for s in ("train", "test") for name in self.files(s)):
            return
        if not self.download:
            raise self._missing("data.download=false")
        try:
            self.dataset(self.data_dir, download=True)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; bad md5 a RuntimeError
            raise self._missing(str(err).splitlines()[0] if str(err) else err) from err

    def load_split(self, split: str) -> Split:
        data, labels = [], []
        for name in self.files(split):
            if not (self.folder / name).is_file():
                raise self._missing(f"{name} not found")
            with (self.folder / name).open("rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += list(entry[self.label_key])
        return torch.from_numpy(np.concatenate(data)), torch.tensor(labels, dtype=torch.long)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: 100 fine classes (``fine_labels``; the 20 coarse ones are not used)."""

    dataset, label_key = CIFAR100, "fine_labels"
    all_class_names = tuple(CIFAR100_CLASSES)
    default_mean, default_std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
