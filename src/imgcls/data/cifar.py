"""CIFAR-10/100: torchvision downloads the pickles, read here without its md5 pass."""

import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from imgcls.data.base import ImageDataModule, Split

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
    in_channels, native_size = 3, 32
    default_mean, default_std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

    def __init__(self, download: bool = True, val_size: float = 5000, **kwargs) -> None:
        super().__init__(val_size=val_size, **kwargs)
        self.folder = Path(self.data_dir) / self.dataset.base_folder

    def files(self, split: str) -> list[str]:
        return [name for name, _md5 in getattr(self.dataset, f"{split}_list")]

    def prepare_data(self) -> None:
        self.fetch(self.folder, self.files("train") + self.files("test"), [{"root": self.data_dir}])

    def load_split(self, split: str) -> Split:
        entries = [
            pickle.loads((self.folder / name).read_bytes(), encoding="latin1")
            for name in self.files(split)
        ]
        data = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries])
        labels = [label for entry in entries for label in entry[self.label_key]]
        return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.tensor(labels)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: 100 fine classes (``fine_labels``; the 20 coarse ones are not used)."""

    dataset, label_key = CIFAR100, "fine_labels"
    all_class_names = tuple(CIFAR100_CLASSES)
    default_mean, default_std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
