"""LightningDataModules (one file per dataset) and the transforms they share."""

from imgcls.data.base import ImageDataModule
from imgcls.data.digits import DigitsDataModule
from imgcls.data.folder import FolderDataModule
from imgcls.data.mnist import MNISTDataModule
from imgcls.data.svhn import SVHNDataModule

__all__ = [
    "DigitsDataModule",
    "FolderDataModule",
    "ImageDataModule",
    "MNISTDataModule",
    "SVHNDataModule",
]
