"""Validation split, stratified k-fold and class subsets (base datamodule, on sklearn digits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.data.digits import DigitsDataModule
from imgcls.data.folder import FolderDataModule
from imgcls.utils.errors import UserError

COLORS = {"apple": 0, "banana": 1, "cherry": 2}


def write_class_images(folder: Path, channel: int, n: int, seed: int) -> None:
    """``n`` distinct PNG images, bright in colour ``channel``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        array = rng.integers(0, 40, size=(10, 10, 3), dtype=np.uint8)
        array[..., channel] = rng.integers(180, 256, size=(10, 10), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"{i}.png")


def dominant_channel(images: torch.Tensor) -> torch.Tensor:
    return images.float().mean(dim=(2, 3)).argmax(dim=1)


@pytest.fixture(scope="module")
def digits_train() -> tuple[torch.Tensor, torch.Tensor]:
    return DigitsDataModule().load_split("train")


def test_kfold_is_disjoint_covering_stratified_and_seeded(digits_train):
    _, labels = digits_train
    n, k = len(labels), 4
    val_sets = []
    for fold in range(k):
        dm = DigitsDataModule(num_folds=k, fold=fold, seed=7)
        train_idx, val_idx = dm.train_val_indices(labels)
        train_set, val_set = set(train_idx.tolist()), set(val_idx.tolist())
        assert not train_set & val_set and len(train_set | val_set) == n  # disjoint, complete
        val_sets.append(val_set)
        # stratified: each class's share of the fold is within one sample of its share overall
        expected = torch.bincount(labels, minlength=10).double() / k
        counts = torch.bincount(labels[val_idx], minlength=10).double()
        assert (counts - expected).abs().max() <= 1
        again, _ = DigitsDataModule(num_folds=k, fold=fold, seed=7).train_val_indices(labels)
        assert torch.equal(again, train_idx)  # seeded
    assert set().union(*val_sets) == set(range(n))  # the folds' validation parts cover the pool
    assert sum(len(s) for s in val_sets) == n  # ... each sample exactly once
    other, _ = DigitsDataModule(num_folds=k, fold=0, seed=8).train_val_indices(labels)
    assert not torch.equal(
        other, DigitsDataModule(num_folds=k, fold=0, seed=7).train_val_indices(labels)[0]
    )


def test_kfold_setup_sizes_and_bad_fold(digits_train):
    _, labels = digits_train
    dm = DigitsDataModule(num_folds=5, fold=4)
    dm.setup()
    assert len(dm.splits["train"][1]) + len(dm.splits["val"][1]) == len(labels)
    assert abs(len(dm.splits["val"][1]) - len(labels) / 5) <= 1
    with pytest.raises(UserError, match="data.fold=5 is out of range"):
        DigitsDataModule(num_folds=5, fold=5)
    with pytest.raises(UserError, match="num_folds must be >= 2"):
        DigitsDataModule(num_folds=1)


def test_val_split_is_seeded_and_sized(digits_train):
    _, labels = digits_train
    a = DigitsDataModule(val_size=0.2, seed=1).train_val_indices(labels)
    b = DigitsDataModule(val_size=0.2, seed=1).train_val_indices(labels)
    c = DigitsDataModule(val_size=0.2, seed=2).train_val_indices(labels)
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    assert len(a[1]) == round(0.2 * len(labels)) and not set(a[0].tolist()) & set(a[1].tolist())
    assert len(DigitsDataModule(val_size=100).train_val_indices(labels)[1]) == 100
    with pytest.raises(UserError, match="val_size"):
        DigitsDataModule(val_size=1.5)


def test_class_subset_relabels_in_the_given_order():
    full = DigitsDataModule()
    full.setup()
    subset = DigitsDataModule(classes=[8, "3"])
    assert subset.class_names == ["8", "3"] and subset.num_classes == 2
    subset.setup()
    images, labels = subset.splits["test"]  # the test split keeps its order: compare directly
    full_images, full_labels = full.splits["test"]
    keep = (full_labels == 8) | (full_labels == 3)
    assert torch.equal(images, full_images[keep])
    assert torch.equal(labels, (full_labels[keep] == 3).long())  # 8 -> 0, 3 -> 1
    counts = subset.class_counts()
    assert counts.tolist() == torch.bincount(subset.splits["train"][1], minlength=2).tolist()
    for bad in ([3], [3, 3], [3, 42], ["x", 1]):
        with pytest.raises(UserError, match="data.classes"):
            _ = DigitsDataModule(classes=bad).class_names


def test_kfold_over_a_folder_with_given_val_pools_train_and_val(tmp_path):
    root = tmp_path / "ds"
    for k, (name, channel) in enumerate(COLORS.items()):
        write_class_images(root / "train" / name, channel, 6, seed=k)
        write_class_images(root / "val" / name, channel, 3, seed=10 + k)
        write_class_images(root / "test" / name, channel, 2, seed=20 + k)
    seen = []
    for fold in range(3):
        dm = FolderDataModule(root=str(root), image_size=12, num_folds=3, fold=fold)
        dm.setup()
        train_images, train_labels = dm.splits["train"]
        val_images, val_labels = dm.splits["val"]
        assert len(train_labels) + len(val_labels) == 27  # train/ + val/ pooled
        assert len(dm.splits["test"][1]) == 6  # test/ untouched
        assert torch.bincount(val_labels).tolist() == [3, 3, 3]  # stratified folds
        assert torch.equal(dominant_channel(val_images), val_labels)
        seen.append(val_images)
    pooled = torch.cat(seen)
    assert len(torch.unique(pooled.flatten(1), dim=0)) == 27  # folds cover the pool once


def test_hydra_lists_are_stored_as_plain_lists_for_safe_checkpoints(tmp_path):
    from omegaconf import OmegaConf

    dm = DigitsDataModule(
        classes=OmegaConf.create([3, 8]), augment=OmegaConf.create(["digits", "erasing"])
    )
    assert dm.hparams.classes == [3, 8] and type(dm.hparams.classes) is list
    assert dm.class_names == ["3", "8"] and len(dm.pipeline.augment) == 2
    torch.save({"datamodule_hyper_parameters": dict(dm.hparams)}, tmp_path / "hp.ckpt")
    loaded = torch.load(tmp_path / "hp.ckpt", weights_only=True)  # no ListConfig inside
    assert loaded["datamodule_hyper_parameters"]["augment"] == ["digits", "erasing"]


def _setup_under_global_seed(make, seed: int):
    torch.manual_seed(seed)  # DDP ranks are seeded seed + rank: the split must not see it
    np.random.seed(seed)
    dm = make()
    dm.setup()
    return dm.splits


@pytest.mark.parametrize("kwargs", [{}, {"num_folds": 3, "fold": 1}, {"classes": [8, 3]}])
def test_splits_ignore_the_global_rng_augmentation_draws_from_it(kwargs):
    first = _setup_under_global_seed(lambda: DigitsDataModule(seed=5, **kwargs), 0)
    second = _setup_under_global_seed(lambda: DigitsDataModule(seed=5, **kwargs), 1)
    for split in ("train", "val", "test"):
        assert torch.equal(first[split][0], second[split][0])
        assert torch.equal(first[split][1], second[split][1])
    dm = DigitsDataModule(augment="digits")
    images = first["train"][0][:8]
    views = []
    for seed in (0, 1, 0):  # per-rank RNG: another seed, another augmentation; same seed, same
        torch.manual_seed(seed)
        views.append(dm.pipeline(images, train=True))
    assert torch.equal(views[0], views[2]) and not torch.equal(views[0], views[1])


def test_carved_folder_splits_ignore_the_global_rng(tmp_path):
    root = tmp_path / "ds"
    for k, (name, channel) in enumerate(COLORS.items()):
        write_class_images(root / name, channel, 10, seed=k)
    make = lambda: FolderDataModule(root=str(root), image_size=12, seed=3)  # noqa: E731
    first, second = _setup_under_global_seed(make, 0), _setup_under_global_seed(make, 1)
    for split in ("train", "val", "test"):
        assert torch.equal(first[split][0], second[split][0])
