"""Augmentation presets, the batch pipeline, fast vs standard loaders, the augmentation grid."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from pytorch_lightning.loggers import TensorBoardLogger

from imgcls.callbacks.plots import AugmentationGrid
from imgcls.data.base import ImageDataModule
from imgcls.data.transforms import (
    AUGMENT_PRESETS,
    BatchPipeline,
    build_augment,
    per_sample_uint8,
    random_erase,
    random_resized_crop,
    to_float,
    to_uint8,
)
from imgcls.utils.errors import UserError


class RandomImages(ImageDataModule):
    """Random uint8 images with 3 channels at 20x20 (tiny, no files)."""

    all_class_names = ("a", "b", "c")
    in_channels = 3
    native_size = 20
    default_mean = (0.5, 0.4, 0.3)
    default_std = (0.2, 0.25, 0.3)

    def load_split(self, split):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = 40 if split == "train" else 12
        images = torch.randint(0, 256, (n, 3, 20, 20), dtype=torch.uint8, generator=g)
        return images, torch.arange(n) % 3


def batch(channels: int = 3, n: int = 6, size: int = 20) -> torch.Tensor:
    g = torch.Generator().manual_seed(channels)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", sorted(AUGMENT_PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_preset_keeps_shape_dtype_and_range(name, channels):
    torch.manual_seed(0)
    images = to_float(batch(channels, n=16))
    out = images
    for transform in build_augment(name):
        out = transform(out)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    if name != "none":  # over 16 samples at least one is changed
        assert not torch.equal(out, images)
    else:
        assert torch.equal(out, images)


def test_train_augments_eval_only_normalises():
    torch.manual_seed(0)
    pipeline = BatchPipeline((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), augment="natural")
    images = batch()
    expected = (images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(pipeline(images, train=False), expected)
    assert torch.allclose(pipeline(images, train=False), expected)  # deterministic
    trained = pipeline(images, train=True)
    assert trained.shape == expected.shape and not torch.allclose(trained, expected)


def test_presets_compose_in_order_and_erasing_is_appended():
    def name(transform):
        return getattr(transform, "func", transform).__name__

    transforms = build_augment(["digits", "natural"], random_erasing=0.5)
    assert [name(t) for t in transforms] == [
        "random_affine",
        "random_resized_crop",
        "random_flip",
        "color_jitter",
        "random_erase",
    ]
    assert transforms[-1].keywords["p"] == 0.5
    assert len(build_augment(None)) == 0 and len(build_augment("none")) == 0
    assert [name(t) for t in build_augment("natural_erasing")][-1] == "random_erase"
    with pytest.raises(UserError, match="unknown augmentation preset"):
        build_augment(["natural", "sparkle"])
    with pytest.raises(UserError, match="random_erasing"):
        build_augment("none", random_erasing=1.5)


def test_random_erasing_fills_one_rectangle_per_sample():
    torch.manual_seed(0)
    images = torch.full((8, 3, 20, 20), 2.0)  # outside [0, 1]: erased pixels are recognisable
    assert torch.equal(random_erase(images, p=0.0), images)
    out = random_erase(images, p=1.0)
    erased = (out != 2.0).all(dim=1)  # [N, H, W]: all channels replaced together
    for mask in erased:
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        assert mask.sum() > 0
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == h * w  # a filled rectangle
        assert 0.02 * 400 * 0.5 <= mask.sum() <= 0.33 * 400 * 1.5


def test_random_resized_crop_is_per_sample_and_full_crop_is_identity():
    images = to_float(batch(n=4))
    identity = random_resized_crop(images, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(identity, images, atol=1e-5)
    torch.manual_seed(0)
    cropped = random_resized_crop(images.repeat(2, 1, 1, 1), scale=(0.2, 0.3))
    assert not torch.allclose(cropped[:4], cropped[4:])  # different crops of the same images


def test_uint8_policies_round_trip_exactly():
    images = batch(n=3)
    out = per_sample_uint8(to_float(images), lambda image: image)
    assert torch.equal(to_uint8(out), images)
    assert torch.equal(to_uint8(torch.tensor([-0.2, 0.5, 1.7])), torch.tensor([0, 128, 255]).byte())


def first(loader):
    return next(iter(loader))


def test_fast_and_standard_paths_give_identical_batches():
    fast = RandomImages(batch_size=8, val_size=10, in_memory=True, image_size=16)
    standard = RandomImages(batch_size=8, val_size=10, in_memory=False, image_size=16)
    for dm in (fast, standard):
        dm.setup()
    for name in ("val_dataloader", "test_dataloader"):
        fast_batches = [fast.on_after_batch_transfer(b, 0) for b in getattr(fast, name)()]
        std_batches = [standard.on_after_batch_transfer(b, 0) for b in getattr(standard, name)()]
        assert len(fast_batches) == len(std_batches) > 1
        for (x1, y1), (x2, y2) in zip(fast_batches, std_batches, strict=True):
            assert x1.dtype == x2.dtype == torch.float32 and x1.shape == (len(y1), 3, 16, 16)
            assert torch.allclose(x1, x2, atol=1e-6) and torch.equal(y1, y2)
    # training batches (shuffled differently by design): without augmentation each standard-path
    # sample is exactly one of the normalised training images of the fast path
    x, y = first(standard.train_dataloader())
    assert x.dtype == torch.float32
    images, labels = fast.splits["train"]
    normalised = fast.pipeline(images, train=False)
    distance = (x.unsqueeze(1) - normalised.unsqueeze(0)).abs().amax(dim=(2, 3, 4))
    best = distance.argmin(dim=1)
    assert (distance.min(dim=1).values < 1e-6).all() and torch.equal(labels[best], y)


def test_augmentation_grid_logs_to_tensorboard_without_touching_the_rng(tmp_path):
    dm = RandomImages(batch_size=8, val_size=10, augment=["natural", "erasing"])
    dm.setup()
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    trainer = SimpleNamespace(is_global_zero=True, datamodule=dm, loggers=[logger], global_step=0)
    callback = AugmentationGrid(num_images=10, nrow=5, save_path=str(tmp_path / "grid.png"))
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    callback.on_train_start(trainer, None)
    assert torch.equal(torch.rand(3), expected_next)  # forked RNG: training randomness unchanged
    grid = callback.grid
    assert grid.shape == (3, 2 * 20 + 3 * 2, 5 * 20 + 6 * 2)  # 2 rows x 5 images + padding
    assert grid.min() >= 0 and grid.max() <= 1
    logger.experiment.flush()
    assert list((tmp_path / "tb" / "version_0").glob("events.out.tfevents.*"))
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_augmentation_grid_config_adds_to_defaults(make_cfg):
    cfg = make_cfg("train", ["data=digits", "callbacks=augmentation_grid"])
    assert "model_checkpoint" in cfg.callbacks
    assert isinstance(instantiate(cfg.callbacks.augmentation_grid), AugmentationGrid)
