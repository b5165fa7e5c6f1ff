"""Your own images: one folder per class, optionally in train/ val/ test/ (docs/data.md)."""

from imgcls.data.folder.datamodule import FolderDataModule as FolderDataModule
from imgcls.data.folder.read import FileImages as FileImages
