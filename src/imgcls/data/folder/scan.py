"""A folder's layout and classes, its image files and the splits it lacks (carved from train)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torchvision.datasets.folder import make_dataset

from imgcls.data.base import stratified_split
from imgcls.imaging import IMAGE_SUFFIXES
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
TEST_SPLIT_SEED = 0  # fixed: carving test images never depends on the run's seed
Items = list[tuple[Path, int]]  # (image file, label)


def subdirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def find_layout(root: Path) -> tuple[list[str], dict[str, Path]]:
    """The class names and the folders ``root`` gives (train always, val and test if present);
    lists ``root`` and ``root/train`` only."""
    if not root.is_dir():
        raise UserError(
            f"data.root={root} does not exist or is not a folder; point data.root at a folder "
            "of class folders (<class>/*.jpg) or of train/ val/ test/ folders"
        )
    names, dirs = subdirs(root), {"train": root}
    if "train" in names and set(names) <= {n for aliases in SPLIT_DIRS.values() for n in aliases}:
        dirs = {}
        for split, aliases in SPLIT_DIRS.items():
            found = [name for name in names if name in aliases]
            if len(found) > 1:
                raise UserError(
                    f"data.root={root} has several validation folders {found}; keep one"
                )
            if found:
                dirs[split] = root / found[0]
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
    if fraction <= 0:
        raise UserError(
            f"data.root={root} has no test/ folder and data.split gives test 0; "
            "set a test fraction, e.g. data.split=[0.8,0.1,0.1]"
        )
    pool = files["train"]
    count = math.floor(fraction * len(pool) + 0.5)
    rest, test = stratified_split(
        torch.tensor([label for _, label in pool]), count, TEST_SPLIT_SEED
    )
    files["train"], files["test"] = [pool[i] for i in rest], [pool[i] for i in test]
    if not files["test"]:
        raise UserError(
            f"data.root={root}: too few images to carve a test split with data.split; "
            "add images or raise the fraction"
        )
    if given:
        log.info(
            f"data.root={root} has no test/ folder: the test split is {fraction:.0%} of train/ "
            f"({len(test)} images, stratified, fixed seed), set aside before validation"
        )
