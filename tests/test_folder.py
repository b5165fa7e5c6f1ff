"""data=folder on image folders written with PIL: layouts, splits, bad files, normalisation."""

from __future__ import annotations

import builtins
import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from imgcls.data.folder import FileImages, FolderDataModule
from imgcls.data.folder import read as folder_read
from imgcls.utils.errors import UserError

#: class -> the RGB channel its images are bright in (lets a test check every label)
COLORS = {"apple": 0, "banana": 1, "cherry": 2}


def write_class_images(folder: Path, channel: int, n: int, seed: int, size=(20, 14)) -> None:
    """``n`` PNG/JPEG images, bright in ``channel``, with noise so statistics are not trivial."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        array = rng.integers(0, 40, size=(size[1], size[0], 3), dtype=np.uint8)
        array[..., channel] = rng.integers(180, 256, size=(size[1], size[0]), dtype=np.uint8)
        suffix = ".png" if i % 2 else ".jpg"
        Image.fromarray(array).save(folder / f"img_{i:03d}{suffix}", quality=95)


def write_flat_folder(root: Path, n: int = 10, classes=COLORS) -> Path:
    for k, (name, channel) in enumerate(classes.items()):
        write_class_images(root / name, channel, n, seed=k)
    return root


def dominant_channel(images: torch.Tensor) -> torch.Tensor:
    return images.float().mean(dim=(2, 3)).argmax(dim=1)


def make(root: Path, **kwargs) -> FolderDataModule:
    kwargs.setdefault("image_size", 16)
    kwargs.setdefault("decode_workers", 2)
    return FolderDataModule(root=str(root), **kwargs)


def test_flat_layout_classes_split_and_bad_files(tmp_path, caplog):
    root = write_flat_folder(tmp_path / "pics")
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / "banana" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage, not a jpeg")
    (root / "cherry" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    dm = make(root, split=[0.6, 0.2, 0.2], seed=1)
    # shape facts before any decoding (what ${datamodule:...} reads)
    assert dm._decoded is None
    assert dm.class_names == ["apple", "banana", "cherry"]
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (3, 3, 16)
    assert dm._decoded is None and "files" not in vars(dm)  # not even the files were listed

    with caplog.at_level(logging.INFO, logger="imgcls.data.folder.read"):
        dm.setup("fit")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # all unreadable files reported once, together
    assert "skipping 2 of 32 images" in warnings[0].getMessage()
    assert "broken.jpg" in warnings[0].getMessage()
    assert "truncated.png" in warnings[0].getMessage()
    assert "notes.txt" not in warnings[0].getMessage()  # non-image files are simply ignored

    sizes = {split: len(labels) for split, (_, labels) in dm.splits.items()}
    # per class: 10 readable images (+1 corrupt in two of them) -> 2 test, 2 val, rest train
    assert sum(sizes.values()) == 30
    for split, (images, labels) in dm.splits.items():
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 16, 16)
        assert torch.equal(dominant_channel(images), labels), split  # label = class folder
    assert dm.class_counts().tolist() == torch.bincount(dm.splits["train"][1]).tolist()
    for split in ("val", "test"):  # stratified: every class in every split
        assert set(dm.splits[split][1].tolist()) == {0, 1, 2}


def test_test_split_is_fixed_and_val_split_is_seeded(tmp_path):
    root = write_flat_folder(tmp_path / "pics", n=12)
    splits = []
    for seed in (1, 2):
        dm = make(root, seed=seed, split=[0.5, 0.25, 0.25])
        dm.setup()
        splits.append(dm.splits)
    assert torch.equal(splits[0]["test"][0], splits[1]["test"][0])
    assert not torch.equal(splits[0]["val"][0], splits[1]["val"][0])
    again = make(root, seed=1, split=[0.5, 0.25, 0.25])
    again.setup()
    assert torch.equal(again.splits["val"][0], splits[0]["val"][0])
    assert [len(splits[0][s][1]) for s in ("train", "val", "test")] == [18, 9, 9]


def test_split_layout_used_as_given_and_missing_val_carved(tmp_path):
    root = tmp_path / "ds"
    for k, (name, channel) in enumerate(COLORS.items()):
        write_class_images(root / "train" / name, channel, 8, seed=k)
        write_class_images(root / "test" / name, channel, 3, seed=10 + k)
    dm = make(root, split=[0.75, 0.25, 0.0])
    assert dm.layout[1] == {"train": root / "train", "test": root / "test"}
    dm.setup()
    assert len(dm.splits["test"][1]) == 9  # the test folder as given
    assert len(dm.splits["val"][1]) == 6  # 25 % of each train class
    assert len(dm.splits["train"][1]) == 18

    for k, (name, channel) in enumerate(COLORS.items()):
        write_class_images(root / "val" / name, channel, 2, seed=20 + k)
    dm = make(root)
    dm.setup()
    sizes = [len(dm.splits[s][1]) for s in ("train", "val", "test")]
    assert sizes == [24, 6, 9]
    for images, labels in dm.splits.values():
        assert torch.equal(dominant_channel(images), labels)


@pytest.mark.parametrize(
    "split", [[0.5, 0.2, 0.2], [0.8, 0.2], [0.0, 0.5, 0.5], [1.2, -0.1, -0.1], "abc"]
)
def test_split_fractions_must_sum_to_one(tmp_path, split):
    with pytest.raises(UserError, match="data.split"):
        make(tmp_path, split=split)


def test_bad_roots_give_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="data.root=PATH"):
        FolderDataModule(root=None)
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=str(missing)):
        _ = make(missing).num_classes

    single = tmp_path / "single"
    write_class_images(single / "only", 0, 3, seed=0)
    with pytest.raises(UserError, match="only one class folder"):
        _ = make(single).class_names

    empty = write_flat_folder(tmp_path / "empty", n=4)
    (empty / "durian").mkdir()
    (empty / "durian" / "readme.md").write_text("no images here")
    with pytest.raises(UserError, match=str(empty / "durian")):  # found when files are listed
        make(empty).setup()

    stray = tmp_path / "stray"
    for k, name in enumerate(("a", "b")):
        write_class_images(stray / "train" / name, k, 3, seed=k)
    write_class_images(stray / "test" / "zebra", 0, 2, seed=5)
    with pytest.raises(UserError, match="zebra"):
        make(stray).setup()


def test_on_bad_image_error_lists_every_bad_file(tmp_path):
    root = write_flat_folder(tmp_path / "pics", n=4)
    (root / "apple" / "bad1.png").write_bytes(b"nope")
    (root / "cherry" / "bad2.jpg").write_bytes(b"nope either")
    dm = make(root, on_bad_image="error")
    with pytest.raises(UserError, match="2 unreadable images") as err:
        dm.setup()
    assert "bad1.png" in str(err.value) and "bad2.jpg" in str(err.value)
    assert "on_bad_image=skip" in str(err.value)
    with pytest.raises(UserError, match="on_bad_image"):
        make(root, on_bad_image="ignore")


def test_a_class_without_readable_training_images_is_one_clear_error(tmp_path):
    root = tmp_path / "pics"
    for k, name in enumerate(["apple", "banana"]):
        write_class_images(root / "train" / name, k, 4, seed=k)
    (root / "train" / "cherry").mkdir()
    for i in range(3):
        (root / "train" / "cherry" / f"bad{i}.png").write_bytes(b"nope")
    with pytest.raises(UserError, match=r"no readable training images for classes \['cherry'\]"):
        make(root).setup()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_refused(tmp_path, monkeypatch, caplog):
    root = write_flat_folder(tmp_path / "pics", n=8)
    Image.new("RGB", (64, 64)).save(root / "apple" / "bomb.png")
    # 20x14 images pass; 64x64 = 4096 pixels is over the limit but under PIL's own hard error
    # (2x the limit, where PIL only warns): refused all the same
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    dm = make(root)
    with caplog.at_level(logging.WARNING, logger="imgcls.data.folder.read"):
        dm.setup()
    assert "bomb.png" in caplog.text and "DecompressionBomb" in caplog.text
    assert sum(len(labels) for _, labels in dm.splits.values()) == 24


def test_grayscale_and_class_subset_by_name(tmp_path):
    root = write_flat_folder(tmp_path / "pics", n=6)
    dm = make(root, grayscale=True, classes=["cherry", "apple"], image_size=12)
    assert dm.in_channels == 1 and dm.class_names == ["cherry", "apple"] and dm.num_classes == 2
    assert dm.pipeline.normalize.mean.numel() == 1
    dm.setup()
    images, labels = dm.splits["train"]
    assert images.shape[1:] == (1, 12, 12) and set(labels.tolist()) == {0, 1}


def exact_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel mean and (population) std of uint8 images, in [0, 1] units."""
    pixels = (images.double() / 255).permute(1, 0, 2, 3).reshape(images.shape[1], -1)
    return pixels.mean(dim=1), pixels.std(dim=1, unbiased=False)


def normalization(dm: FolderDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    return dm.pipeline.normalize.mean.flatten(), dm.pipeline.normalize.std.flatten()


def test_normalize_auto_computes_at_setup_writes_nothing_and_restores(tmp_path):
    root = write_flat_folder(tmp_path / "pics", n=6)
    before = sorted(root.rglob("*"))
    dm = make(root, normalize="auto")
    dm.setup()
    expected_mean, expected_std = exact_stats(dm.splits["train"][0])
    mean, std = normalization(dm)
    assert torch.allclose(mean.double(), expected_mean, atol=1e-5)
    assert torch.allclose(std.double(), expected_std, atol=1e-5)
    assert dm.state_dict()["mean"] == pytest.approx(expected_mean.tolist(), abs=1e-5)
    # preprocessing at predict time (no setup, no checkpoint) computes them from the images
    fresh = make(root, normalize="auto")
    image = torch.full((1, 3, 16, 16), 128, dtype=torch.uint8)
    assert torch.allclose(fresh.preprocess(image), dm.preprocess(image))
    assert sorted(root.rglob("*")) == before  # nothing written into the data folder
    # checkpoint state restores the statistics without any data
    restored = make(tmp_path / "gone", normalize="auto")
    restored.load_state_dict(dm.state_dict())
    assert torch.allclose(restored.preprocess(image), dm.preprocess(image))
    with pytest.raises(UserError, match="normalize=auto") as err:
        make(tmp_path / "gone", normalize="auto").preprocess(image)
    assert "\n" not in str(err.value) and ".json" not in str(err.value)


def test_normalize_auto_uses_a_fixed_draw_of_at_most_stats_images(tmp_path, monkeypatch):
    root = write_flat_folder(tmp_path / "pics", n=6)
    monkeypatch.setattr(folder_read, "STATS_IMAGES", 5)
    original, decoded = folder_read.decode_image, []
    monkeypatch.setattr(
        folder_read,
        "decode_image",
        lambda *a: decoded.append((a[0], original(*a))) or decoded[-1][1],
    )
    streamed = [make(root, normalize="auto", in_memory=False) for _ in range(2)]
    streamed[0].setup()  # setup checks headers only: every decode is a statistics image
    drawn = decoded[:]
    assert len(drawn) == 5 and len({path for path, _ in drawn}) == 5
    assert len(streamed[0].splits["train"][1]) > 5
    expected_mean, expected_std = exact_stats(torch.stack([image for _, image in drawn]))
    mean, std = normalization(streamed[0])
    assert torch.allclose(mean.double(), expected_mean, atol=1e-5)
    assert torch.allclose(std.double(), expected_std, atol=1e-5)
    decoded.clear()
    streamed[1].setup()
    assert [path for path, _ in decoded] == [path for path, _ in drawn]  # the same draw
    in_memory = make(root, normalize="auto")
    in_memory.setup()
    for dm in (streamed[1], in_memory):
        for ours, theirs in zip(normalization(dm), (mean, std), strict=True):
            torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "streaming"])
def test_trains_on_a_folder_and_learns_it(tmp_path, make_cfg, in_memory):
    from imgcls.train import train

    root = write_flat_folder(tmp_path / "pics", n=10)
    (root / "banana" / "corrupt.png").write_bytes(b"broken")
    cfg = make_cfg(
        "train",
        [
            "data=folder",
            f"data.root={root}",
            "data.image_size=24",
            "data.augment=natural",
            f"data.in_memory={in_memory}",
            "data.num_workers=0",
            "data.batch_size=8",
            "model=mlp",
            "trainer.max_epochs=4",
            "callbacks=lean",
            "logger=csv",
        ],
    )
    metrics = train(cfg)
    assert metrics["test/acc"] == 1.0  # each class is bright in its own colour: it learns them
    assert cfg.model.num_classes == 3 and cfg.model.in_channels == 3


def test_class_weights_auto_weigh_rare_classes_up(tmp_path, make_cfg):
    from hydra.utils import instantiate

    root = tmp_path / "imbalanced"
    for k, (name, channel) in enumerate(COLORS.items()):
        write_class_images(root / name, channel, n=(30, 10, 10)[k], seed=k)
    cfg = make_cfg(
        "train",
        [
            "data=folder",
            f"data.root={root}",
            "data.image_size=16",
            "data.split=[0.6,0.2,0.2]",
            "model=mlp",
            "model.class_weights=auto",
            "trainer.fast_dev_run=true",
        ],
    )
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    trainer = pl.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False)
    trainer.fit(model, datamodule=datamodule)
    counts = datamodule.class_counts().float()
    assert counts[0] > counts[1]  # apples dominate
    expected = counts.sum() / (3 * counts)
    weights = model.loss_weights.cpu()  # on the training device (a buffer)
    torch.testing.assert_close(weights, expected)
    assert weights[1] > weights[0]


# ------------------------------------------------------------------ streaming (in_memory=false)
def _splits_equal(streamed: FolderDataModule, decoded: FolderDataModule) -> None:
    assert streamed.splits.keys() == decoded.splits.keys()
    for split, (images, labels) in decoded.splits.items():
        lazy, lazy_labels = streamed.splits[split]
        assert isinstance(lazy, FileImages) and lazy.shape == tuple(images.shape)
        assert torch.equal(lazy_labels, labels), split
        assert torch.equal(lazy[:], images), split  # decoded on access, byte for byte


def test_streaming_keeps_no_pixels_and_matches_the_in_memory_splits(tmp_path, monkeypatch, caplog):
    root = write_flat_folder(tmp_path / "pics")
    (root / "banana" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage, not a jpeg")
    (root / "cherry" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    decoded = make(root, split=[0.6, 0.2, 0.2], seed=1)
    decoded.setup()
    streamed = make(root, split=[0.6, 0.2, 0.2], seed=1, in_memory=False)
    calls = []
    original = folder_read.decode_image
    monkeypatch.setattr(folder_read, "decode_image", lambda *a: calls.append(a) or original(*a))
    with caplog.at_level(logging.WARNING, logger="imgcls.data.folder.read"):
        streamed.setup()
    assert calls == []  # setup checks headers only
    assert "skipping 2 of 32 images" in caplog.text  # the same bad files, reported the same way
    assert "broken.jpg" in caplog.text and "truncated.png" in caplog.text
    _splits_equal(streamed, decoded)
    assert streamed.class_counts().tolist() == decoded.class_counts().tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_loader_decodes_in_workers_like_the_fast_path(tmp_path, workers):
    root = write_flat_folder(tmp_path / "pics", n=6)
    decoded = make(root)
    decoded.setup()
    streamed = make(root, in_memory=False, num_workers=workers, batch_size=4)
    streamed.setup()
    loader = streamed.val_dataloader()
    assert loader.num_workers == workers and loader.persistent_workers == (workers > 0)
    images, labels = decoded.splits["val"]
    batches = list(loader)
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), decoded.preprocess(images))
    assert torch.equal(torch.cat([y for _, y in batches]), labels)


def test_streaming_k_fold_class_subset_and_auto_statistics_match(tmp_path):
    root = write_flat_folder(tmp_path / "pics", n=8)
    options = dict(num_folds=3, fold=1, classes=["cherry", "apple"], normalize="auto")
    decoded = make(root, **options)
    decoded.setup()
    streamed = make(root, in_memory=False, **options)
    streamed.setup()
    _splits_equal(streamed, decoded)
    for stat in ("mean", "std"):
        torch.testing.assert_close(
            getattr(streamed.pipeline.normalize, stat), getattr(decoded.pipeline.normalize, stat)
        )


def test_streaming_names_a_file_that_breaks_after_setup(tmp_path):
    root = write_flat_folder(tmp_path / "pics", n=4)
    dm = make(root, in_memory=False, num_workers=0)
    dm.setup()
    victim = dm.splits["val"][0].paths[0]
    victim.write_bytes(victim.read_bytes()[:40])  # header intact, pixels gone
    with pytest.raises(UserError, match=f"{victim.name}: unreadable image"):
        list(dm.val_dataloader())


def test_worker_errors_reach_the_user_as_the_workers_own_line() -> None:
    from imgcls.utils.runs import one_line

    wrapped = UserError(
        "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        'last):\n  File "x.py", line 1, in f\nimgcls.utils.errors.UserError: /d/a.png: unreadable '
        "image (OSError: truncated)\n"
    )
    assert one_line(wrapped) == "/d/a.png: unreadable image (OSError: truncated)"
    assert one_line(UserError("plain\n  message")) == "plain message"


def test_resolving_shape_facts_lists_no_class_folder_and_opens_no_file(
    tmp_path, make_cfg, monkeypatch
):
    from omegaconf import OmegaConf

    root = tmp_path / "ds"
    for k, (name, channel) in enumerate(COLORS.items()):
        write_class_images(root / "train" / name / "batch1", channel, 4, seed=k)
        write_class_images(root / "val" / name, channel, 2, seed=10 + k)
    cfg = make_cfg("train", ["data=folder", f"data.root={root}", "data.grayscale=true"])
    listed, opened = [], []
    real_scandir, real_listdir, real_open = os.scandir, os.listdir, io.open

    def counting(real, log):
        def call(path=".", *args, **kwargs):
            log.append(str(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "scandir", counting(real_scandir, listed))
    monkeypatch.setattr(os, "listdir", counting(real_listdir, listed))
    monkeypatch.setattr(io, "open", counting(real_open, opened))
    monkeypatch.setattr(builtins, "open", counting(real_open, opened))
    model = OmegaConf.to_container(cfg.model, resolve=True)  # ${datamodule:...} on every net
    monkeypatch.undo()
    assert model["num_classes"] == 3 and model["in_channels"] == 1
    assert set(listed) <= {str(root), str(root / "train")}, listed  # the folders, not the files
    assert opened == []


def write_images_as_users_have_them(folder: Path, level: int) -> None:
    """One image per awkward case, all of brightness ``level`` (so the label is checkable)."""
    other = 255 - level
    (folder / "nested" / "deeper").mkdir(parents=True)
    Image.new("RGB", (12, 9), (level,) * 3).save(folder / "IMG_0001.JPG", quality=100)
    Image.new("L", (9, 12), level).save(folder / "nested" / "deeper" / "scan.PNG")
    Image.new("CMYK", (10, 10), (0, 0, 0, 255 - level)).save(folder / "print.jpeg", quality=100)
    deep = np.full((8, 8), level * 257, dtype=np.uint16)
    Image.fromarray(deep).save(folder / "sixteen_bit.png")  # I;16
    Image.new("RGB", (8, 8), (level,) * 3).convert("P").save(folder / "palette.png")
    frames = [Image.new("RGB", (8, 8), (v,) * 3) for v in (level, other)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=40)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotated 90 degrees
    Image.new("RGB", (16, 8), (level,) * 3).save(folder / "phone.jpg", exif=exif, quality=100)


def test_folders_as_users_have_them(tmp_path, caplog):
    root = tmp_path / "photos"  # train/ and val/ only: test/ is carved from train/
    for name, level in (("dark", 40), ("light", 210)):
        write_images_as_users_have_them(root / "train" / name, level)
        (root / "val" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (level,) * 3).save(root / "val" / name / "v.PNG")
        Image.new("RGB", (8, 8), (level,) * 3).save(root / "val" / name / "w.JPEG")
    with caplog.at_level(logging.INFO, logger="imgcls.data.folder"):
        dm = make(root, split=[0.5, 0.25, 0.25])
        dm.setup()
    assert "has no test/ folder: the test split is 25% of train/" in caplog.text
    assert "skipping" not in caplog.text  # every file read
    sizes = {split: len(labels) for split, (_, labels) in dm.splits.items()}
    assert sizes == {"train": 10, "val": 4, "test": 4}  # 7 files per class in train/
    for split, (images, labels) in dm.splits.items():
        brightness = images.float().mean(dim=(1, 2, 3))
        assert torch.equal((brightness > 128).long(), labels), (split, brightness)
        # the first frame, 16-bit scaled, CMYK converted: every image at its class's level
        assert ((brightness - torch.tensor([40.0, 210.0])[labels]).abs() < 6).all(), brightness


def test_resize_crop_keeps_the_aspect_ratio_everywhere(tmp_path):
    from imgcls.data.transforms import resize_uint8

    # 30 x 10 images: a left third, a middle third and a right third of different brightness
    wide = torch.zeros(1, 3, 10, 30, dtype=torch.uint8)
    wide[..., 10:20] = 200
    wide[..., 20:] = 100
    cropped = resize_uint8(wide, 10, "crop")  # the shorter side is already 10: the middle
    assert torch.equal(cropped, torch.full((1, 3, 10, 10), 200, dtype=torch.uint8))
    squashed = resize_uint8(wide, 10, "squash")
    assert squashed[..., 0].max() < 50 and squashed[..., -1].min() > 50  # all three thirds
    root = tmp_path / "pics"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(wide[0].permute(1, 2, 0).numpy()).save(root / name / f"{i}.png")
    for in_memory in (True, False):  # decoded at setup, or by the streaming loader
        dm = make(root, image_size=10, resize="crop", split=[0.6, 0.2, 0.2], in_memory=in_memory)
        dm.setup()
        assert torch.equal(dm.splits["test"][0][0:1], cropped)
    # predict and export preprocess a file through the same function
    assert torch.equal(dm.preprocess(wide), dm.pipeline(cropped, train=False))
    with pytest.raises(UserError, match="data.resize='fit' is not supported"):
        make(root, resize="fit")
