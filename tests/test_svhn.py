"""data=svhn on .mat files written with scipy in the real SVHN layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hydra.utils import instantiate

from imgcls.data.svhn import SVHN_FILES, SVHNDataModule
from imgcls.utils.errors import UserError


def write_svhn_mat(path: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``.mat`` like SVHN's: X uint8 [32, 32, 3, N], y uint8 [N, 1] with 10 for the digit 0.

    Returns the images as [N, 3, 32, 32] and the digit labels 0-9, the layout we expect back.
    """
    rng = np.random.default_rng(seed)
    digits = np.arange(n) % 10
    rng.shuffle(digits)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    images[:, 0, 0, 0] = digits * 20  # a marker tying each image to its label
    X = np.ascontiguousarray(images.transpose(2, 3, 1, 0))  # [H, W, C, N]
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"X": X, "y": y})
    return images, digits


@pytest.fixture
def svhn_dir(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    data_dir = tmp_path / "data"
    written = {
        split: write_svhn_mat(data_dir / "svhn" / SVHN_FILES[split], n, seed)
        for seed, (split, n) in enumerate((("train", 60), ("test", 20), ("extra", 30)))
    }
    return data_dir, written


def test_reads_real_layout_and_maps_10_to_0(svhn_dir):
    data_dir, written = svhn_dir
    dm = SVHNDataModule(data_dir=str(data_dir), download=False, val_size=10)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 3, 32)
    dm.prepare_data()  # files present: no download attempted
    for split in ("train", "test"):
        images, labels = dm.load_split(split)
        assert images.dtype == torch.uint8 and images.shape == (len(labels), 3, 32, 32)
        assert torch.equal(images, torch.from_numpy(written[split][0]))  # pixel-exact, [N, C, H, W]
        assert torch.equal(labels, torch.from_numpy(written[split][1]).long())
        assert labels.min() == 0 and labels.max() == 9 and (labels == 0).any()
    dm.setup()
    assert [len(dm.splits[s][1]) for s in ("train", "val", "test")] == [50, 10, 20]
    train_images, train_labels = dm.splits["train"]
    assert torch.equal(train_images[:, 0, 0, 0].long(), train_labels * 20)  # labels follow images


def test_use_extra_merges_into_training_pool(svhn_dir):
    data_dir, written = svhn_dir
    dm = SVHNDataModule(data_dir=str(data_dir), download=False, use_extra=True, val_size=10)
    images, labels = dm.load_split("train")
    assert len(labels) == 90
    assert torch.equal(images[60:], torch.from_numpy(written["extra"][0]))
    dm.setup()
    assert len(dm.splits["train"][1]) + len(dm.splits["val"][1]) == 90
    assert len(dm.splits["test"][1]) == 20


def test_missing_files_give_one_clear_error(tmp_path):
    dm = SVHNDataModule(data_dir=str(tmp_path), download=False, use_extra=True)
    with pytest.raises(UserError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "\n" not in message
    for part in (str(tmp_path), "train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"):
        assert part in message
    assert "data=digits" in message and str(tmp_path / "svhn") in message
    with pytest.raises(UserError, match="train_32x32.mat"):
        dm.load_split("train")


def test_corrupt_mat_file_is_reported(tmp_path):
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"this is not a MATLAB file at all" * 10)
    dm = SVHNDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(UserError, match="test_32x32.mat is not a readable SVHN"):
        dm.load_split("test")


def test_config_composes_with_shape_facts(svhn_dir, make_cfg):
    data_dir, _ = svhn_dir
    cfg = make_cfg(
        "train", ["data=svhn", f"data.data_dir={data_dir}", "data.classes=[3,8]", "data.val_size=4"]
    )
    assert cfg.model.num_classes == 2 and cfg.model.in_channels == 3
    assert cfg.model.image_size == 32
    dm = instantiate(cfg.data)
    assert isinstance(dm, SVHNDataModule) and dm.class_names == ["3", "8"]
    dm.setup()
    images, labels = dm.splits["test"]
    assert set(labels.tolist()) == {0, 1}
    assert torch.equal(images[:, 0, 0, 0].long(), torch.where(labels == 0, 60, 160))
