"""Every model-zoo recipe composes as documented and trains (fast_dev_run) on MNIST-format data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from imgcls.config import CONFIG_DIR
from imgcls.train import build_trainer, train
from imgcls.utils.runs import instantiate_list

#: experiment -> (net class name, optimizer, lr, SGD momentum, batch size, epochs)
RECIPES = {
    "mnist_alexnet": ("AlexNet", "SGD", 0.01, 0.0, 16, 2),
    "mnist_alexnet_lrn": ("AlexNetLRN", "Adam", 0.0001, None, 64, 40),
    "mnist_convnet": ("ConvNet", "SGD", 0.01, 0.9, 64, 20),
    "mnist_tinynet": ("TinyNet", "SGD", 0.01, 0.9, 64, 20),
    "mnist_tinynet_fast": ("TinyNet", "SGD", 0.1, 0.9, 128, 8),
    "binary_mlp": ("MLP", "Adam", 0.001, None, 64, 30),
}


def recipe_cfg(make_cfg, name: str, data_dir: Path, *extra: str):
    # 600 fake training images: carve 100 for validation (the 10-class recipes keep MNIST's 5000)
    val = [] if name == "binary_mlp" else ["data.val_size=100"]
    return make_cfg(
        "train",
        [
            f"experiment={name}",
            f"data.data_dir={data_dir}",
            "data.download=false",
            "trainer.accelerator=cpu",
            *val,
            *extra,
        ],
    )


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_settings(make_cfg, name: str) -> None:
    net, optimizer, lr, momentum, batch_size, epochs = RECIPES[name]
    cfg = make_cfg("train", [f"experiment={name}"])
    assert cfg.data._target_ == "imgcls.data.mnist.MNISTDataModule"
    assert cfg.model.net._target_.rsplit(".", 1)[-1] == net
    assert cfg.model.optimizer._target_ == f"torch.optim.{optimizer}"
    assert cfg.model.optimizer.lr == lr
    assert cfg.model.optimizer.get("momentum") == momentum
    assert cfg.data.batch_size == batch_size
    assert cfg.trainer.max_epochs == epochs


def test_mnist_convnet_steps_lr_every_15_epochs(make_cfg) -> None:
    cfg = make_cfg("train", ["experiment=mnist_convnet"])
    assert cfg.model.optimizer.momentum == 0.9
    assert cfg.model.scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
    assert (cfg.model.scheduler.step_size, cfg.model.scheduler.gamma) == (15, 0.1)


def test_binary_mlp_is_two_class_with_early_stopping(make_cfg, fake_mnist: Path) -> None:
    cfg = recipe_cfg(make_cfg, "binary_mlp", fake_mnist)
    assert list(cfg.data.classes) == [3, 8]
    assert cfg.model.num_classes == 2
    assert cfg.callbacks.early_stopping.monitor == "val/acc"
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    labels = torch.cat([datamodule.splits[s][1] for s in ("train", "val", "test")])
    assert set(labels.tolist()) == {0, 1}  # threes and eights, relabelled
    assert datamodule.class_names == ["3", "8"]


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_trains_fast_dev_run(make_cfg, fake_mnist: Path, name: str) -> None:
    """One training, validation and test batch through ``train()`` (about 3 s for AlexNet)."""
    cfg = recipe_cfg(make_cfg, name, fake_mnist, "trainer.fast_dev_run=true")
    metrics = train(cfg)
    for key in ("train/loss", "val/loss", "test/loss", "test/acc"):
        assert key in metrics, f"{name}: {key} missing from {sorted(metrics)}"
        assert math.isfinite(metrics[key])
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert (Path(cfg.paths.output_dir) / "metrics.json").is_file()


def test_folder_alexnet_trains_on_a_generated_folder(make_cfg, tmp_path: Path) -> None:
    from .test_folder import write_flat_folder

    root = write_flat_folder(tmp_path / "pics", n=12)
    cfg = make_cfg(
        "train", ["experiment=folder_alexnet", f"data.root={root}", "trainer.fast_dev_run=true"]
    )
    assert (cfg.model.num_classes, cfg.model.in_channels, cfg.model.image_size) == (
        3,
        3,
        64,
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and 0.0 <= metrics["test/acc"] <= 1.0


def test_svhn_convnet_aug_trains_on_generated_mat_files(make_cfg, tmp_path: Path) -> None:
    from imgcls.data.svhn import SVHN_FILES

    from .test_svhn import write_svhn_mat

    data_dir = tmp_path / "data"
    for seed, (split, n) in enumerate((("train", 80), ("test", 20))):
        write_svhn_mat(data_dir / "svhn" / SVHN_FILES[split], n, seed)
    cfg = make_cfg(
        "train",
        [
            "experiment=svhn_convnet_aug",
            f"data.data_dir={data_dir}",
            "data.val_size=20",
            "trainer.fast_dev_run=true",
        ],
    )
    assert (cfg.model.in_channels, cfg.model.image_size) == (3, 32)
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and 0.0 <= metrics["test/acc"] <= 1.0


# ------------------------------------------------------------------ experiments x trainers
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml"))
#: trainers run in-process with fast_dev_run; ddp ones re-launch the command line (pytest), the
#: gpu ones need a GPU and cpu is default with accelerator=cpu (what default is on a CPU machine),
#: so those are composed and built only
RUNNABLE = ["default", "fast"]


def matrix_cfg(experiment: str, trainer: str, tmp_path: Path, folder: Path) -> DictConfig:
    """The experiment with the trainer, as composed from the command line (callbacks untouched)."""
    data = [f"data.root={folder}"] if experiment.startswith("folder_") else ["data=digits"]
    if experiment == "folder_finetune":  # random weights (offline) and small images: it is quick
        data += ["model.net.weights=null", "data.image_size=32"]
    overrides = [f"experiment={experiment}", f"trainer={trainer}", *data]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "trainer.fast_dev_run=true"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / experiment / trainer)
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.extras.print_config = False
    return cfg


def test_every_experiment_composes_with_every_trainer(tmp_path: Path, monkeypatch) -> None:
    from .test_folder import write_flat_folder

    folder = write_flat_folder(tmp_path / "pics", n=12)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # build the gpu trainers too
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for experiment in EXPERIMENTS:
        for trainer in TRAINERS:
            cfg = matrix_cfg(experiment, trainer, tmp_path, folder)
            callbacks = instantiate_list(cfg.callbacks)
            built = build_trainer(cfg, callbacks=callbacks, logger=False)
            assert isinstance(built, pl.Trainer), (experiment, trainer)


@pytest.mark.parametrize(
    "trainer", [t if t == "fast" else pytest.param(t, marks=pytest.mark.slow) for t in RUNNABLE]
)
def test_every_experiment_trains_with_every_runnable_trainer(tmp_path: Path, trainer) -> None:
    """fast_dev_run in-process: the lean trainer in every test run, the others with -m slow."""
    from .test_folder import write_flat_folder

    folder = write_flat_folder(tmp_path / "pics", n=12)
    for experiment in EXPERIMENTS:
        metrics = train(matrix_cfg(experiment, trainer, tmp_path, folder))
        assert math.isfinite(metrics["train/loss"]), (experiment, trainer)
        assert 0.0 <= metrics["test/acc"] <= 1.0
