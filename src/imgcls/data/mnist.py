"""MNIST and Fashion-MNIST through torchvision's own IDX parser; the test split stays as given."""

from pathlib import Path

from torchvision.datasets import MNIST, FashionMNIST

from imgcls.data.base import ImageDataModule, Split


class MNISTDataModule(ImageDataModule):
    """MNIST digits, 1x28x28; validation carved from the 60k training images by a seeded split."""

    dataset = MNIST
    all_class_names = tuple(str(d) for d in range(10))
    default_mean, default_std = (0.1307,), (0.3081,)

    def __init__(self, download: bool = True, val_size: float = 5000, **kwargs) -> None:
        super().__init__(val_size=val_size, **kwargs)

    def prepare_data(self) -> None:
        # torchvision extracts the .gz files (downloading missing ones): the extracted files count
        files = [name for name, _md5 in self.dataset.resources]
        raw = Path(self.data_dir) / self.dataset.__name__ / "raw"
        calls = [{"root": self.data_dir, "train": train} for train in (True, False)]
        self.fetch(raw, [name.removesuffix(".gz") for name in files], calls, files)

    def load_split(self, split: str) -> Split:
        dataset = self.dataset(self.data_dir, train=split == "train")
        return dataset.data.unsqueeze(1), dataset.targets.long()


class FashionMNISTDataModule(MNISTDataModule):
    """Zalando's Fashion-MNIST: 10 clothing classes, 1x28x28, in MNIST's file format."""

    dataset = FashionMNIST
    all_class_names = tuple(FashionMNIST.classes)
    default_mean, default_std = (0.2860,), (0.3530,)
