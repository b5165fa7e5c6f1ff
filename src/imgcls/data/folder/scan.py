"""A folder's layout and classes, its image files and the splits it lacks (carved from train)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torchvision.datasets.folder import make_dataset

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


def take_stratified(items: Items, fraction: float, seed: int) -> tuple[Items, Items]:
    """(rest, taken): ``round(fraction * n)`` items, each class's share within one item of its
    proportion (seeded); every class keeps at least one item in ``rest``."""
    generator, labels = torch.Generator().manual_seed(seed), torch.tensor([i[1] for i in items])
    keys = torch.full((len(items),), math.inf)
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)][1:]
        offset = torch.rand(1, generator=generator)
        keys[members] = (torch.arange(len(members)) + offset) / (len(members) + 1)
    order = keys.argsort(stable=True)[: math.floor(fraction * len(items) + 0.5)]
    taken = {i for i in order.tolist() if keys[i] < math.inf}
    return [x for i, x in enumerate(items) if i not in taken], [items[i] for i in sorted(taken)]


def carve_missing_splits(
    files: dict[str, Items], root: Path, given: bool, fractions, seed: int, k_fold: bool
) -> None:
    """Carve a missing test split (fixed seed), then a missing validation split (``seed``) from
    train, stratified; with ``k_fold`` validation images join the pool the folds split. ``given``:
    root holds train/ (the carving is logged)."""
    train_frac, val_frac, test_frac = fractions
    if "test" not in files:
        if test_frac <= 0:
            raise UserError(
                f"data.root={root} has no test/ folder and data.split gives test 0; "
                "set a test fraction, e.g. data.split=[0.8,0.1,0.1]"
            )
        files["train"], files["test"] = take_stratified(files["train"], test_frac, TEST_SPLIT_SEED)
        if given:
            log.info(
                f"data.root={root} has no test/ folder: the test split is {test_frac:.0%} of "
                f"train/ ({len(files['test'])} images, stratified, fixed seed), "
                "set aside before validation and training"
            )
    if k_fold:
        files["train"] += files.pop("val", [])
    elif "val" not in files:
        if val_frac <= 0:
            raise UserError(
                f"data.root={root} has no val/ folder and data.split gives val 0; "
                "set a val fraction, e.g. data.split=[0.8,0.1,0.1], or use data.num_folds"
            )
        fraction = val_frac / (train_frac + val_frac)  # of the train + val share that is left
        files["train"], files["val"] = take_stratified(files["train"], fraction, seed)
        if given:
            log.info(
                f"data.root={root} has no val/ folder: the validation split is "
                f"{len(files['val'])} images of train/ (stratified, data.seed={seed})"
            )
    for split, items in files.items():
        if not items:
            raise UserError(
                f"data.root={root}: too few images to carve a {split} split with "
                f"data.split={list(fractions)}; add images or raise the fraction"
            )
