"""Your own images: one folder per class, optionally already split into train/ val/ test/.

Layouts (class names are the folder names, sorted; labels follow that order):

- ``root/<class>/*.jpg``: split by ``split=[train, val, test]`` fractions, stratified per class.
  The test images are drawn with a fixed seed (the same test set for every run and seed); the
  validation images with ``seed``.
- ``root/train/<class>/*``, ``root/val/<class>/*`` (or ``valid/``, ``validation/``),
  ``root/test/<class>/*``: used as given. A missing ``val/`` or ``test/`` is carved from ``train/``
  by the same fractions, and the log says so.

Files are found recursively below each class folder; files without an image suffix are ignored.
With ``in_memory=true`` (default) every image is decoded once (thread pool) to uint8
``[C, image_size, image_size]`` and kept in memory (a 3x64x64 image is 12 KB: 100k images ~
1.2 GB; at 224 px, 150 KB each), so the base's fast in-memory path serves batches. With
``in_memory=false`` nothing is kept: setup only checks each file's header, and DataLoader workers
decode every image from disk when a batch needs it (folders larger than RAM).

Modules: ``scan`` (layout, files, carved splits), ``read`` (decoding, bad files, ``FileImages``),
``stats`` (``normalize=auto``), ``datamodule`` (``FolderDataModule``, the configs' target).
"""

from imgcls.data.folder.datamodule import FolderDataModule
from imgcls.data.folder.read import FileImages
from imgcls.data.folder.stats import STATS_CACHE

__all__ = ["STATS_CACHE", "FileImages", "FolderDataModule"]
