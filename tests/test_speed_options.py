"""Speed options: bf16, channels_last, compile checkpoints, the lean trainer, the fast data path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, ModelSummary

from imgcls.callbacks.run_info import RunInfo
from imgcls.config import CONFIG_DIR
from imgcls.data.digits import DigitsDataModule
from imgcls.data.loaders import TensorBatchLoader
from imgcls.models.classifier import ImageClassifier
from imgcls.train import build_trainer, train
from imgcls.utils.errors import UserError
from imgcls.utils.runs import instantiate_list


@pytest.mark.parametrize(
    "option", ["trainer.precision=bf16-mixed", "model.channels_last=true"], ids=["bf16", "cl"]
)
def test_speed_option_trains_on_cpu(make_cfg, option) -> None:
    cfg = make_cfg("train", ["data=digits", "trainer.fast_dev_run=true", option])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert 0.0 <= metrics["test/acc"] <= 1.0


def test_fast_trainer_leaves_out_progress_bar_and_summary_but_keeps_checkpoints(tmp_path):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=fast", "data=digits"])
    assert cfg.trainer.enable_progress_bar is False
    assert cfg.trainer.enable_model_summary is False
    assert {"rich_progress_bar", "rich_model_summary", "plots"} <= set(cfg.callbacks)  # untouched
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = str(tmp_path)
    callbacks = instantiate_list(cfg.callbacks)
    trainer = build_trainer(cfg, callbacks=callbacks, logger=False)  # no progress-bar conflict
    assert trainer.progress_bar_callback is None
    assert not [c for c in trainer.callbacks if isinstance(c, ModelSummary)]
    assert len(trainer.checkpoint_callbacks) == 2  # the best and last.ckpt


@pytest.mark.parametrize("experiment", ["mnist_speedrun", "mnist_tinynet_fast"])
def test_speed_experiments_run(make_cfg, fake_mnist, experiment) -> None:
    cfg = make_cfg(
        "train",
        [
            f"experiment={experiment}",
            f"data.data_dir={fake_mnist}",
            "data.val_size=100",
            "trainer.fast_dev_run=true",
        ],
    )
    assert torch.isfinite(torch.tensor(train(cfg)["train/loss"]))


@pytest.mark.slow
def test_compiled_model_checkpoint_round_trip(make_cfg) -> None:
    """``model.compile=true``: checkpoints keep plain ``net.`` names and reload to the same net."""
    cfg = make_cfg(
        "train",
        [
            "data=digits",
            "model.compile=true",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1",
        ],
    )
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    checkpointing = ModelCheckpoint(dirpath=ckpt_dir, save_last=True)
    run_info = RunInfo(OmegaConf.to_container(cfg, resolve=True))
    trainer = build_trainer(cfg, callbacks=[checkpointing, run_info], logger=False)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 3

    ckpt = ckpt_dir / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
    assert set(state) == set(model.state_dict())

    loaded = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    model.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = model.net(x)
        assert torch.equal(loaded.net(x), expected)
    assert model.compiled_net._orig_mod is model.net  # the compiled forward ran these weights


# ------------------------------------------------------------------ fast path == standard path
def _datamodule(in_memory: bool, augment: str = "none"):  # noqa: ANN202
    datamodule = DigitsDataModule(batch_size=32, augment=augment, in_memory=in_memory, seed=7)
    datamodule.setup("fit")
    return datamodule


def _fast_batches(datamodule, training: bool):  # noqa: ANN001, ANN202
    """The in-memory path as the Trainer runs it: uint8 batches, then on_after_batch_transfer."""
    loader = datamodule.val_dataloader()
    assert isinstance(loader, TensorBatchLoader)
    datamodule.trainer = SimpleNamespace(training=training)
    try:
        return [datamodule.on_after_batch_transfer(batch, 0) for batch in loader]
    finally:
        datamodule.trainer = None


def test_in_memory_and_standard_paths_give_the_same_normalised_val_batches() -> None:
    fast = _fast_batches(_datamodule(in_memory=True), training=False)
    standard_dm = _datamodule(in_memory=False)
    standard = list(standard_dm.val_dataloader())
    assert standard and len(fast) == len(standard)
    for (x_fast, y_fast), (x_std, y_std) in zip(fast, standard, strict=True):
        assert x_fast.dtype == x_std.dtype == torch.float32
        assert torch.equal(y_fast, y_std)  # same samples, same order
        torch.testing.assert_close(x_fast, x_std, rtol=0, atol=1e-6)
    images, _ = standard_dm.splits["val"]
    assert sum(len(y) for _, y in fast) == len(images)


def test_augmentation_applies_only_while_training() -> None:
    plain = _fast_batches(_datamodule(in_memory=True), training=False)[0][0]
    augmenting = _datamodule(in_memory=True, augment="digits")
    torch.manual_seed(0)
    evaluated = _fast_batches(augmenting, training=False)[0][0]
    trained = _fast_batches(augmenting, training=True)[0][0]
    torch.testing.assert_close(evaluated, plain, rtol=0, atol=0)
    assert not torch.allclose(trained, plain, atol=1e-3)

    standard = _datamodule(in_memory=False, augment="digits")
    train_set = standard.train_dataloader().dataset
    val_set = standard.val_dataloader().dataset
    assert train_set.train and not val_set.train
    raw, _ = standard.splits["val"]
    expected = standard.pipeline(raw[:1], train=False)[0]
    torch.testing.assert_close(val_set[0][0], expected, rtol=0, atol=0)
    train_raw, _ = standard.splits["train"]
    unaugmented = standard.pipeline(train_raw[:1], train=False)[0]
    assert not torch.allclose(train_set[0][0], unaugmented, atol=1e-3)


GiB = 2**30


@pytest.mark.parametrize(
    ("on_device", "device", "free", "expected"),
    [
        (None, "cuda", 100 * GiB, True),  # auto: the splits fit in a quarter of free memory
        (None, "cuda", 1000, False),  # auto: too big for this GPU, stay in host memory
        (None, "cpu", None, False),  # already where training runs
        (True, "cpu", None, False),
        (False, "cuda", 100 * GiB, False),
        (True, "cuda", 100 * GiB, True),
    ],
)
def test_on_device_decision(monkeypatch, on_device, device, free, expected) -> None:  # noqa: ANN001
    monkeypatch.setattr("imgcls.data.base.device_free_memory", lambda _device: free)
    datamodule = DigitsDataModule(on_device=on_device)
    datamodule.setup("fit")
    assert datamodule._use_device_copies(torch.device(device)) is expected


def test_on_device_without_room_is_a_one_line_error(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr("imgcls.data.base.device_free_memory", lambda _device: 1000)
    datamodule = DigitsDataModule(on_device=True)
    datamodule.setup("fit")
    with pytest.raises(UserError, match=r"data.on_device=true needs .* set data.on_device=false"):
        datamodule._use_device_copies(torch.device("cuda"))


def test_on_device_copies_each_split_once_and_cuts_batches_there(monkeypatch) -> None:  # noqa: ANN001
    """The whole path but CUDA itself: "meta" stands in for the GPU (no data, real placement)."""
    monkeypatch.setattr("imgcls.data.base.device_free_memory", lambda _device: 100 * GiB)
    datamodule = DigitsDataModule(batch_size=32, on_device=True)
    datamodule.setup("fit")
    meta = torch.device("meta")
    monkeypatch.setattr(datamodule, "_training_device", lambda: meta)
    loader = datamodule.train_dataloader()
    assert loader.images.device == meta and loader.labels.device == meta
    assert datamodule.train_dataloader().images is loader.images  # copied once, then reused
    monkeypatch.setattr("imgcls.data.base.device_free_memory", lambda _device: 0)
    assert datamodule.val_dataloader().images.device == meta  # one decision for every split
    batches = list(loader)
    assert len(batches) == len(loader) > 1
    assert all(x.device == meta and y.device == meta and x.shape[0] == 32 for x, y in batches[:-1])
    assert not loader.pin_memory
    assert datamodule.splits["train"][0].device.type == "cpu"  # the host copy stays
    datamodule.teardown("fit")
    assert not datamodule._device_splits
