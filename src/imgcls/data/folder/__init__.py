"""Your own images: one folder per class, optionally split into train/ val/ test/ (docs/data.md).

Modules: ``scan`` (layout, files, carved splits), ``read`` (decoding, bad files, ``FileImages`` for
streaming), ``stats`` (``normalize=auto``), ``datamodule`` (``FolderDataModule``, the target).
"""

from imgcls.data.folder.datamodule import FolderDataModule
from imgcls.data.folder.read import FileImages
from imgcls.data.folder.stats import STATS_CACHE

__all__ = ["STATS_CACHE", "FileImages", "FolderDataModule"]
