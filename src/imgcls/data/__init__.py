"""LightningDataModules (one file per dataset) and the transforms they share."""

from imgcls.data.base import ImageDataModule as ImageDataModule
from imgcls.data.cifar import CIFAR10DataModule as CIFAR10DataModule
from imgcls.data.cifar import CIFAR100DataModule as CIFAR100DataModule
from imgcls.data.digits import DigitsDataModule as DigitsDataModule
from imgcls.data.folder import FolderDataModule as FolderDataModule
from imgcls.data.mnist import FashionMNISTDataModule as FashionMNISTDataModule
from imgcls.data.mnist import MNISTDataModule as MNISTDataModule
from imgcls.data.svhn import SVHNDataModule as SVHNDataModule
