"""MNIST through torchvision's real IDX parser, and the embedded digits set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.datasets import MNIST

from imgcls.data import DigitsDataModule, MNISTDataModule
from imgcls.utils.errors import UserError

from .conftest import REPO_MNIST


def test_mnist_reads_idx_files_and_keeps_test_split(fake_mnist: Path) -> None:
    dm = MNISTDataModule(data_dir=str(fake_mnist), val_size=100, seed=1)
    dm.prepare_data()
    dm.setup()
    train_x, train_y = dm.splits["train"]
    val_x, _ = dm.splits["val"]
    test_x, test_y = dm.splits["test"]
    assert (len(train_y), len(val_x), len(test_y)) == (500, 100, 100)
    assert train_x.dtype == torch.uint8 and train_x.shape[1:] == (1, 28, 28)
    reference = MNIST(str(fake_mnist), train=False)
    assert torch.equal(test_x.squeeze(1), reference.data)  # untouched and in file order
    assert torch.equal(test_y, reference.targets)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 1, 28)


def test_validation_split_is_seeded_and_disjoint(fake_mnist: Path) -> None:
    def split(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        dm = MNISTDataModule(data_dir=str(fake_mnist), val_size=100, seed=seed)
        _, labels = dm.load_split("train")
        return dm.train_val_indices(labels)

    train_a, val_a = split(7)
    train_b, val_b = split(7)
    _, val_c = split(8)
    assert torch.equal(val_a, val_b) and torch.equal(train_a, train_b)
    assert not torch.equal(val_a, val_c)
    assert set(train_a.tolist()).isdisjoint(val_a.tolist())
    assert len(set(train_a.tolist()) | set(val_a.tolist())) == 600


def test_missing_mnist_names_data_dir_and_offline_alternative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MNIST, "mirrors", [f"file://{tmp_path}/nowhere/"])
    dm = MNISTDataModule(data_dir=str(tmp_path / "empty"))
    with pytest.raises(UserError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "empty") in message and "train-images-idx3-ubyte.gz" in message
    assert "data=digits" in message


def test_image_size_resizes_once(fake_mnist: Path) -> None:
    dm = MNISTDataModule(data_dir=str(fake_mnist), val_size=100, image_size=32)
    dm.setup()
    assert dm.splits["train"][0].shape[1:] == (1, 32, 32)
    assert dm.image_size == 32


def test_digits_is_real_offline_and_fixed_test_split() -> None:
    a, b = DigitsDataModule(seed=1), DigitsDataModule(seed=2)
    a.setup()
    b.setup()
    assert torch.equal(a.splits["test"][1], b.splits["test"][1])  # same test set for any seed
    assert not torch.equal(a.splits["val"][1], b.splits["val"][1])
    total = sum(len(y) for _, y in a.splits.values())
    assert total == 1797
    assert a.splits["train"][0].shape[1:] == (1, 28, 28)
    assert torch.bincount(a.splits["test"][1]).min() >= 35  # stratified


def test_real_mnist_files_verify_and_extract_offline(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    assert sorted(f.name for f in REPO_MNIST.glob("*.gz")) == sorted(
        name for name, _md5 in MNIST.resources
    )
    for f in REPO_MNIST.glob("*.gz"):
        (raw / f.name).symlink_to(f)
    dm = MNISTDataModule(data_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup()
    assert [len(dm.splits[s][1]) for s in ("train", "val", "test")] == [55000, 5000, 10000]
