"""Reading a folder's image files: decoded into memory, or checked and left on disk (streaming)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from imgcls.data.base import Split
from imgcls.data.folder.scan import FolderIndex
from imgcls.data.transforms import resize_uint8
from imgcls.imaging import check_image_file, load_image_tensor
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

MAX_LISTED = 20


def decode_image(path: Path, channels: int, size: int, resize: str = "squash") -> torch.Tensor:
    """One image file as uint8 ``[channels, size, size]``; unreadable files raise ``UserError``."""
    return resize_uint8(load_image_tensor(path, channels=channels)[None], size, resize)[0]


class FileImages:
    """A folder's images read from disk on access, standing in for a uint8 ``[N, C, S, S]`` tensor.

    The streaming path (``in_memory=false``): an int gives one decoded image, a slice a stacked
    batch, a bool mask or an index tensor a (still lazy) subset. Pickled for DataLoader workers,
    it sends only the paths.
    """

    dtype = torch.uint8

    def __init__(
        self, paths: Sequence[Path], channels: int, size: int, workers: int = 1, resize="squash"
    ) -> None:
        self.paths, self.channels, self.size, self.workers = list(paths), channels, size, workers
        self.resize = resize
        self.shape = (len(self.paths), channels, size, size)

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, path: Path) -> torch.Tensor:
        return decode_image(path, self.channels, self.size, self.resize)

    def _subset(self, paths: Sequence[Path]) -> FileImages:
        return FileImages(paths, self.channels, self.size, self.workers, self.resize)

    def __getitem__(self, key: int | slice | torch.Tensor) -> torch.Tensor | FileImages:
        if isinstance(key, torch.Tensor):
            indices = key.nonzero().flatten() if key.dtype == torch.bool else key.flatten()
            return self._subset([self.paths[i] for i in indices.tolist()])
        if not isinstance(key, slice):
            return self._decode(self.paths[int(key)])
        if not self.paths[key]:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return torch.stack(list(pool.map(self._decode, self.paths[key])))

    def concat(self, other: FileImages) -> FileImages:
        return self._subset(self.paths + other.paths)


def read_splits(
    index: FolderIndex,
    channels: int,
    size: int,
    in_memory: bool,
    on_bad_image: str,
    workers: int,
    k_fold: bool,
    resize: str = "squash",
) -> dict[str, Split]:
    """Every split as (images, labels): decoded tensors, or ``FileImages`` when streaming.

    Unreadable images are reported all together, then skipped (``on_bad_image="skip"``) or fatal.
    Streaming checks only each file's header here; a file that breaks later stops training with
    its path. With ``k_fold`` an empty validation split is allowed (the folds carve it).
    """
    root = index.layout.root

    def read_one(path: Path) -> torch.Tensor | Path | str:
        """The decoded image (in memory) or the checked path (streaming); else why it failed."""
        try:
            if in_memory:
                return decode_image(path, channels, size, resize)
            check_image_file(path)
            return path
        except UserError as err:
            return str(err)
        except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
            return f"{path}: unreadable image ({type(err).__name__}: {err})"

    items = [(split, path, label) for split, files in index.files.items() for path, label in files]
    log.info(f"{'decoding' if in_memory else 'checking'} {len(items)} images from data.root={root}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(read_one, [path for _, path, _ in items]))
    bad = [r for r in results if isinstance(r, str)]
    if bad and on_bad_image == "error":
        more = f"; ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise UserError(
            f"{len(bad)} unreadable images in data.root={root}: {'; '.join(bad[:MAX_LISTED])}"
            f"{more}; fix or delete them, or set data.on_bad_image=skip"
        )
    if bad:
        log.warning(
            f"skipping {len(bad)} of {len(items)} images that cannot be read "
            "(data.on_bad_image=skip):\n  " + "\n  ".join(bad)
        )
    splits: dict[str, Split] = {}
    for split in index.files:
        kept = [
            (result, label)
            for (s, _, label), result in zip(items, results, strict=True)
            if s == split and not isinstance(result, str)
        ]
        if not kept and (split != "val" or not k_fold):
            raise UserError(f"data.root={root}: no readable images left in the {split} split")
        labels = torch.tensor([label for _, label in kept], dtype=torch.long)
        if not in_memory:
            images = FileImages([path for path, _ in kept], channels, size, workers, resize)
        elif kept:
            images = torch.stack([image for image, _ in kept])
        else:
            images = torch.empty((0, channels, size, size), dtype=torch.uint8)
        splits[split] = (images, labels)
    names = index.layout.class_names
    missing = [names[i] for i in sorted(set(range(len(names))) - set(splits["train"][1].tolist()))]
    if missing:
        raise UserError(
            f"data.root={root}: no readable training images for classes {missing}; "
            "add images to those class folders"
        )
    if in_memory:
        total = sum(images.numel() for images, _ in splits.values())
        log.info(
            f"decoded {len(items) - len(bad)} images at {channels}x{size}x{size} "
            f"({total / 1e6:.0f} MB in memory)"
        )
    return splits
