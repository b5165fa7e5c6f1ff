"""A folder's layout, files, decoding (in memory or streamed), test split and auto statistics."""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets.folder import make_dataset

from imgcls.data.base import stratified_split
from imgcls.data.transforms import resize_uint8
from imgcls.imaging import IMAGE_SUFFIXES, check_image_file, load_image_tensor
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

TEST_SPLIT_SEED = 0  # fixed: carving test images never depends on the run's seed
Items = list[tuple[Path, int]]  # (image file, label)
MAX_LISTED = 20
STATS_IMAGES = 4096  # normalize=auto: at most this many training images (fixed draw)
Stats = dict[str, list[float]]  # {"mean": [...], "std": [...]}


def subdirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def find_layout(root: Path) -> tuple[list[str], dict[str, Path]]:
    """The class names and split folders (train always; val, test if present): two listings."""
    if not root.is_dir():
        raise UserError(
            f"data.root={root} does not exist or is not a folder; point data.root at a folder "
            "of class folders (<class>/*.jpg) or of train/ val/ test/ folders"
        )
    names, dirs = subdirs(root), {"train": root}
    if "train" in names and set(names) <= {"train", "val", "test"}:
        dirs = {name: root / name for name in names}
    classes = subdirs(dirs["train"])
    if len(classes) < 2:
        raise UserError(
            f"data.root={root}: {'only one class folder' if classes else 'no class folders'} in "
            f"{dirs['train']}; classification needs at least two, each holding its images "
            "(<class>/*.jpg)"
        )
    return classes, dirs


def scan_files(classes: list[str], dirs: dict[str, Path]) -> dict[str, Items]:
    """The image files of every split (recursive, by suffix in any case, hidden ones left out)."""
    files = {}
    for split, folder in dirs.items():
        present = subdirs(folder)
        if stray := sorted(set(present) - set(classes)):
            raise UserError(
                f"{folder / stray[0]} is not a class of {dirs['train']} (classes: {classes}); "
                "every split must use the training split's class folders"
            )

        def is_image(path: str, skip: int = len(str(folder))) -> bool:
            return Path(path).suffix.lower() in IMAGE_SUFFIXES and "/." not in path[skip:]

        to_index = {name: classes.index(name) for name in present}
        found = make_dataset(folder, to_index, is_valid_file=is_image, allow_empty=True)
        if empty := sorted(set(to_index.values()) - {label for _, label in found}):
            raise UserError(
                f"class folder {folder / classes[empty[0]]} holds no image files "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder"
            )
        files[split] = [(Path(path), label) for path, label in found]
    return files


def carve_test(files: dict[str, Items], root: Path, given: bool, fraction: float) -> None:
    """Without a test/ folder, a stratified share of train (fixed seed) is the test split."""
    if "test" in files:
        return
    pool = files["train"]
    count = math.floor(fraction * len(pool) + 0.5)
    rest, test = stratified_split(torch.tensor([i[1] for i in pool]), count, TEST_SPLIT_SEED)
    files["train"], files["test"] = [pool[i] for i in rest], [pool[i] for i in test]
    if not test.numel():
        raise UserError(
            f"data.root={root} has no test/ folder and data.split carves no test images from "
            "its images; add images or raise the test fraction, e.g. data.split=[0.8,0.1,0.1]"
        )
    if given:
        log.info(
            f"data.root={root} has no test/ folder: the test split is {fraction:.0%} of train/ "
            f"({len(test)} images, stratified, fixed seed), set aside before validation"
        )


def decode_image(path: Path, channels: int, size: int, resize: str = "squash") -> torch.Tensor:
    return resize_uint8(load_image_tensor(path, channels=channels)[None], size, resize)[0]


class FileImages:
    """Streamed uint8 ``[N, C, S, S]`` images: an int or slice decodes, an index or mask subsets."""

    dtype = torch.uint8

    def __init__(self, paths: list[Path], channels: int, size: int, resize: str) -> None:
        self.paths, self.args = list(paths), (channels, size, resize)
        self.shape = (len(self.paths), channels, size, size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | slice | torch.Tensor) -> torch.Tensor | FileImages:
        if isinstance(key, torch.Tensor):
            index = key.nonzero().flatten() if key.dtype == torch.bool else key.flatten()
            return FileImages([self.paths[i] for i in index.tolist()], *self.args)
        if isinstance(key, slice):
            return torch.stack([decode_image(path, *self.args) for path in self.paths[key]])
        return decode_image(self.paths[key], *self.args)


def read_splits(
    files: dict[str, Items], root: Path, args: tuple, in_memory: bool, on_bad_image: str, workers
) -> dict[str, tuple[Any, torch.Tensor]]:
    """Every split as (decoded images or checked ``FileImages``, labels), bad images listed once."""

    def read_one(path: Path) -> torch.Tensor | Path | str:
        try:
            return decode_image(path, *args) if in_memory else check_image_file(path) or path
        except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
            return str(err) if isinstance(err, UserError) else f"{path}: unreadable ({err!r})"

    items = [(split, *item) for split, split_items in files.items() for item in split_items]
    log.info(f"{'decoding' if in_memory else 'checking'} {len(items)} images from data.root={root}")
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(read_one, [path for _, path, _ in items]))
    if bad := [result for result in results if isinstance(result, str)]:
        if on_bad_image == "error":
            more = f"; ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
            raise UserError(
                f"{len(bad)} unreadable images in data.root={root}: {'; '.join(bad[:MAX_LISTED])}"
                f"{more}; fix or delete them, or set data.on_bad_image=skip"
            )
        log.warning(
            f"skipping {len(bad)} of {len(items)} images that cannot be read "
            "(data.on_bad_image=skip):\n  " + "\n  ".join(bad)
        )
    splits = {}
    for split in files:
        kept = [
            (r, i[2])
            for i, r in zip(items, results, strict=True)
            if i[0] == split and not isinstance(r, str)
        ]
        if not kept:
            raise UserError(f"data.root={root}: no readable images left in the {split} split")
        images, labels = zip(*kept, strict=True)
        stacked = torch.stack(images) if in_memory else FileImages(images, *args)
        splits[split] = (stacked, torch.tensor(labels))
    return splits


def compute_stats(images: Any) -> Stats:
    """Per-channel mean and std in [0, 1] units of uint8 images (tensor or ``FileImages``),
    summed in float64 chunks over at most ``STATS_IMAGES`` of them (a fixed-seed draw)."""
    if len(images) > STATS_IMAGES:
        draw = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        images = images[draw[:STATS_IMAGES].sort().values]
    sums = torch.zeros(2, images.shape[1], dtype=torch.float64)
    for start in range(0, len(images), 1024):
        chunk = images[start : start + 1024].double().div_(255.0)
        sums += torch.stack([chunk.sum(dim=(0, 2, 3)), chunk.square().sum(dim=(0, 2, 3))])
    mean, squares = sums / (images.shape[0] * images.shape[2] * images.shape[3])
    std = (squares - mean.square()).clamp(min=0).sqrt().clamp(min=1 / 255)
    return {"mean": mean.tolist(), "std": std.tolist()}
