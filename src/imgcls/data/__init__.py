"""LightningDataModules (one file per dataset) and the transforms they share."""

from imgcls.data.base import ImageDataModule
from imgcls.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from imgcls.data.digits import DigitsDataModule
from imgcls.data.folder import FolderDataModule
from imgcls.data.mnist import FashionMNISTDataModule, MNISTDataModule
from imgcls.data.svhn import SVHNDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "FolderDataModule",
    "ImageDataModule",
    "MNISTDataModule",
    "SVHNDataModule",
]
