"""A folder's layout and classes, its image files and the splits it lacks (carved from train)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imgcls.imaging import IMAGE_SUFFIXES
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
TEST_SPLIT_SEED = 0  # fixed: carving test images never depends on the run's seed

Item = tuple[Path, int]  # image file, label


@dataclass
class FolderLayout:
    root: Path
    kind: str  # "classes" (root/<class>) or "splits" (root/train/<class> ...)
    class_names: list[str]
    split_dirs: dict[str, Path]  # the class roots the folder gives: train (always), val, test


@dataclass
class FolderIndex:
    layout: FolderLayout
    files: dict[str, list[Item]] = field(default_factory=dict)  # train, val, test
    ignored: int = 0  # non-image files


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def find_layout(root: Path) -> FolderLayout:
    """The layout and class names of ``root`` (lists ``root`` and ``root/train`` only)."""
    if not root.is_dir():
        raise UserError(
            f"data.root={root} does not exist or is not a folder; point data.root at a folder "
            "of class folders (<class>/*.jpg) or of train/ val/ test/ folders"
        )
    subdirs = _class_dirs(root)
    split_names = {name for names in SPLIT_DIRS.values() for name in names}
    given: dict[str, Path] = {}
    if any(d.name == "train" for d in subdirs) and all(d.name in split_names for d in subdirs):
        for split, names in SPLIT_DIRS.items():
            found = [d for d in subdirs if d.name in names]
            if len(found) > 1:
                raise UserError(
                    f"data.root={root} has several validation folders "
                    f"({', '.join(p.name for p in found)}); keep one"
                )
            if found:
                given[split] = found[0]
        kind, class_dirs = "splits", _class_dirs(given["train"])
    else:
        kind, class_dirs, given = "classes", subdirs, {"train": root}
    class_root = given["train"]
    if not class_dirs:
        raise UserError(
            f"data.root={root}: no class folders in {class_root}; put each class's images "
            "in its own folder (<class>/*.jpg)"
        )
    if len(class_dirs) < 2:
        raise UserError(
            f"data.root={root}: only one class folder ({class_dirs[0]}); classification needs "
            "at least two classes"
        )
    return FolderLayout(root, kind, [d.name for d in class_dirs], given)


def _image_files(class_dir: Path) -> tuple[list[Path], int]:
    """Image files below ``class_dir`` (recursive, sorted) and the count of other files."""
    images, ignored = [], 0
    for path in sorted(class_dir.rglob("*")):
        relative = path.relative_to(class_dir).parts
        if any(part.startswith(".") for part in relative) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            ignored += 1
    return images, ignored


def scan_files(layout: FolderLayout) -> FolderIndex:
    index = FolderIndex(layout)
    class_names, class_root = layout.class_names, layout.split_dirs["train"]
    for split, folder in layout.split_dirs.items():
        items: list[Item] = []
        for class_dir in _class_dirs(folder):
            if class_dir.name not in class_names:
                raise UserError(
                    f"{class_dir} is not a class of {class_root} (classes: {class_names}); "
                    "every split must use the training split's class folders"
                )
            files, ignored = _image_files(class_dir)
            index.ignored += ignored
            if not files:
                raise UserError(
                    f"class folder {class_dir} holds no image files "
                    f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder"
                )
            label = class_names.index(class_dir.name)
            items += [(path, label) for path in files]
        index.files[split] = items
    if index.ignored:
        log.info(f"data.root={layout.root}: ignored {index.ignored} files without an image suffix")
    return index


def take_stratified(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """(rest, taken): ``round(fraction * n)`` items taken, stratified by largest remainders,
    seeded; at least one item per class stays in ``rest``."""
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[Item]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    labels = sorted(by_class)
    exact = {label: fraction * len(by_class[label]) for label in labels}
    counts = {label: math.floor(exact[label]) for label in labels}
    extra = math.floor(fraction * len(items) + 0.5) - sum(counts.values())
    tie_break = torch.rand(len(labels), generator=generator).tolist()
    order = sorted(labels, key=lambda c: (-(exact[c] - counts[c]), tie_break[labels.index(c)]))
    for label in order[: max(extra, 0)]:
        counts[label] += 1
    rest, taken = [], []
    for label in labels:
        members = by_class[label]
        k = min(counts[label], len(members) - 1)
        perm = torch.randperm(len(members), generator=generator).tolist()
        taken += [members[i] for i in sorted(perm[:k])]
        rest += [members[i] for i in sorted(perm[k:])]
    return rest, taken


def carve_missing_splits(
    index: FolderIndex, fractions: tuple[float, float, float], seed: int, k_fold: bool
) -> None:
    """Carve the missing test (fixed seed) and validation (``seed``; empty with ``k_fold``: the
    folds carve it) splits from train, stratified by class."""
    root, given = index.layout.root, index.layout.kind == "splits"
    train_frac, val_frac, test_frac = fractions
    pool = index.files["train"]
    if "test" not in index.files:
        if test_frac <= 0:
            raise UserError(
                f"data.root={root} has no test/ folder and data.split gives test 0; "
                "set a test fraction, e.g. data.split=[0.8,0.1,0.1]"
            )
        pool, index.files["test"] = take_stratified(pool, test_frac, TEST_SPLIT_SEED)
        if given:
            log.info(
                f"data.root={root} has no test/ folder: the test split is {test_frac:.0%} of "
                f"train/ ({len(index.files['test'])} images, stratified, fixed seed), "
                "set aside before validation and training"
            )
    if "val" not in index.files:
        if k_fold:
            index.files["val"] = []
        elif val_frac <= 0:
            raise UserError(
                f"data.root={root} has no val/ folder and data.split gives val 0; "
                "set a val fraction, e.g. data.split=[0.8,0.1,0.1], or use data.num_folds"
            )
        else:  # the pool is now the train + val share of the images
            fraction = val_frac / (train_frac + val_frac)
            pool, index.files["val"] = take_stratified(pool, fraction, seed)
            if given:
                log.info(
                    f"data.root={root} has no val/ folder: the validation split is "
                    f"{len(index.files['val'])} images of train/ (stratified, data.seed={seed})"
                )
    index.files["train"] = pool
    for split in ("train", "test") + (() if k_fold else ("val",)):
        if not index.files[split]:
            raise UserError(
                f"data.root={root}: too few images to carve a {split} split with "
                f"data.split={list(fractions)}; add images or raise the fraction"
            )
