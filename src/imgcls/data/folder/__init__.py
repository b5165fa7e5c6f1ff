"""Your own images: one folder per class, optionally split into train/ val/ test/ (docs/data.md).

Modules: ``scan`` (layout, files, carved splits), ``read`` (decoding, bad files, streaming,
``normalize=auto`` statistics), ``datamodule`` (``FolderDataModule``, the target).
"""

from imgcls.data.folder.datamodule import FolderDataModule
from imgcls.data.folder.read import STATS_CACHE, FileImages

__all__ = ["STATS_CACHE", "FileImages", "FolderDataModule"]
