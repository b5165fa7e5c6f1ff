"""CIFAR-10, CIFAR-100 and Fashion-MNIST read from files in torchvision's formats, written here."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import FashionMNIST

from imgcls.data import CIFAR10DataModule, CIFAR100DataModule, FashionMNISTDataModule
from imgcls.data.transforms import random_pad_crop
from imgcls.utils.errors import UserError

from .conftest import write_idx


def _batch(n: int, classes: int, seed: int, key: str) -> dict:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % classes).tolist()
    data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
    entry = {"batch_label": b"x", key: labels, "data": data, "filenames": [b"f"] * n}
    return {**entry, "coarse_labels": [c % 20 for c in labels]} if classes == 100 else entry


def _write(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(entry))


def write_cifar10(data_dir: Path, n: int = 20) -> Path:
    folder = data_dir / "cifar-10-batches-py"
    for i in range(1, 6):
        _write(folder / f"data_batch_{i}", _batch(n, 10, seed=i, key="labels"))
    _write(folder / "test_batch", _batch(n, 10, seed=9, key="labels"))
    _write(folder / "batches.meta", {"label_names": list(CIFAR10DataModule.all_class_names)})
    return folder


def write_cifar100(data_dir: Path) -> Path:
    folder = data_dir / "cifar-100-python"
    _write(folder / "train", _batch(300, 100, seed=1, key="fine_labels"))
    _write(folder / "test", _batch(100, 100, seed=2, key="fine_labels"))
    _write(folder / "meta", {"fine_label_names": list(CIFAR100DataModule.all_class_names)})
    return folder


def test_cifar10_reads_the_pickles_in_file_order(tmp_path):
    folder = write_cifar10(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_size=10, seed=1)
    dm.prepare_data()  # files present: no download
    dm.setup()
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 3, 32)
    assert (len(dm.splits["train"][1]), len(dm.splits["val"][1])) == (90, 10)
    test = pickle.loads((folder / "test_batch").read_bytes())
    images, labels = dm.splits["test"]
    assert torch.equal(images.flatten(1), torch.from_numpy(test["data"]))  # RGB planes, as given
    assert labels.tolist() == test["labels"]
    first = pickle.loads((folder / "data_batch_1").read_bytes())
    train_images, _ = dm.load_split("train")
    assert len(train_images) == 100 and torch.equal(
        train_images[0, 0, 0, :4], torch.from_numpy(first["data"][0, :4])
    )


def test_cifar100_fine_labels_class_subset_and_k_fold(tmp_path):
    write_cifar100(tmp_path)
    meta = pickle.loads((tmp_path / "cifar-100-python" / "meta").read_bytes())
    assert list(CIFAR100DataModule.all_class_names) == meta["fine_label_names"]
    dm = CIFAR100DataModule(data_dir=str(tmp_path), classes=["whale", "apple"], num_folds=3, fold=2)
    dm.setup()
    assert dm.class_names == ["whale", "apple"] and dm.num_classes == 2
    train, val = dm.splits["train"][1], dm.splits["val"][1]
    assert len(train) + len(val) == 6 and torch.bincount(val).tolist() == [1, 1]
    assert torch.bincount(dm.splits["test"][1]).tolist() == [1, 1]


def test_fashion_mnist_reads_idx_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=10, augment="digits")
    dm.prepare_data()
    dm.setup()
    assert dm.class_names[:2] == ["T-shirt/top", "Trouser"] and dm.in_channels == 1
    reference = FashionMNIST(str(tmp_path), train=False)
    assert torch.equal(dm.splits["test"][0].squeeze(1), reference.data)
    assert len(dm.splits["train"][1]) == 50


@pytest.mark.parametrize("module", [CIFAR10DataModule, CIFAR100DataModule, FashionMNISTDataModule])
def test_missing_files_give_one_line_naming_them_and_where(tmp_path, module, monkeypatch):
    for name in ("url", "mirrors"):  # offline: a download that fails at once
        if hasattr(module.dataset, name):
            value = f"file://{tmp_path}/nowhere/x.tar.gz"
            monkeypatch.setattr(module.dataset, name, [value] if name == "mirrors" else value)
    dm = module(data_dir=str(tmp_path / "empty"))
    with pytest.raises(UserError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "empty") in message
    expected = {
        CIFAR10DataModule: "data_batch_1, data_batch_2, data_batch_3",
        CIFAR100DataModule: "copy train, test into",
        FashionMNISTDataModule: "train-images-idx3-ubyte.gz",
    }[module]
    assert expected in message


def test_pad_crop_shifts_each_image_with_zero_fill():
    torch.manual_seed(0)
    images = torch.rand(16, 3, 8, 8) + 0.5  # no zeros: the padding is recognisable
    out = random_pad_crop(images, 2)
    shifts = set()
    for image, cropped in zip(images, out, strict=True):
        padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
        found = [
            (y, x)
            for y in range(5)
            for x in range(5)
            if torch.equal(padded[:, y : y + 8, x : x + 8], cropped)
        ]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 4  # drawn per sample


@pytest.mark.parametrize("name", ["cifar10_resnet18", "cifar10_speedrun_gpu"])
def test_cifar_recipes_compose_and_build(make_cfg, name):
    from hydra.utils import instantiate

    cfg = make_cfg("train", [f"experiment={name}"])
    assert (
        cfg.data._target_ == "imgcls.data.cifar.CIFAR10DataModule"
        and cfg.data.augment == "crop_flip"
    )
    model = instantiate(cfg.model)
    assert model.net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
