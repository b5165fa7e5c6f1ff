"""Every recipe composes as documented, trains on its own kind of data, and builds with every
trainer; the default recipe learns."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate

from imgcls.config import CONFIG_DIR
from imgcls.train import build_trainer, train
from imgcls.utils.runs import instantiate_list

from .conftest import write_fake_mnist

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml"))

#: experiment -> (net class name, optimizer, lr, SGD momentum, batch size, epochs)
RECIPES = {
    "mnist_alexnet": ("AlexNet", "SGD", 0.01, 0.0, 16, 2),
    "mnist_alexnet_lrn": ("AlexNetLRN", "Adam", 0.0001, None, 64, 40),
    "mnist_convnet": ("ConvNet", "SGD", 0.01, 0.9, 64, 20),
    "mnist_tinynet": ("TinyNet", "SGD", 0.01, 0.9, 64, 20),
    "mnist_tinynet_fast": ("TinyNet", "SGD", 0.1, 0.9, 128, 8),
    "binary_mlp": ("MLP", "Adam", 0.001, None, 64, 30),
}


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


def test_mnist_tinynet_keeps_its_published_recipe(make_cfg) -> None:
    """StepLR(15, 0.1), dropout 0.1 and no label smoothing (the default run's model has none of
    these: the recipe sets them itself)."""
    cfg = make_cfg("train", ["experiment=mnist_tinynet"])
    assert cfg.model.scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
    assert (cfg.model.scheduler.step_size, cfg.model.scheduler.gamma) == (15, 0.1)
    assert (cfg.model.net.dropout, cfg.model.label_smoothing, cfg.data.augment) == (
        0.1,
        0.0,
        "digits",
    )


def test_binary_mlp_is_two_class_with_early_stopping(make_cfg, fake_mnist: Path) -> None:
    cfg = make_cfg("train", ["experiment=binary_mlp", f"data.data_dir={fake_mnist}"])
    assert list(cfg.data.classes) == [3, 8]
    assert cfg.model.num_classes == 2
    assert cfg.callbacks.early_stopping.monitor == "val/acc"
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    labels = torch.cat([datamodule.splits[s][1] for s in ("train", "val", "test")])
    assert set(labels.tolist()) == {0, 1}  # threes and eights, relabelled
    assert datamodule.class_names == ["3", "8"]


def small_data(name: str, tmp_path: Path) -> list[str]:
    """Overrides that point experiment ``name`` at a few generated images in its data's format."""
    if name.startswith("folder_"):
        from .test_folder import write_flat_folder

        root = write_flat_folder(tmp_path / "pics", n=12)
        # small images, so AlexNet is quick; folder_finetune: random weights (offline)
        offline = ["model.net.weights=null"] if "finetune" in name else []
        return [f"data.root={root}", "data.image_size=32", *offline]
    if name.startswith("svhn_"):
        from imgcls.data.svhn import SVHN_FILES

        from .test_svhn import write_svhn_mat

        for seed, (split, n) in enumerate((("train", 80), ("test", 20))):
            write_svhn_mat(tmp_path / "data" / "svhn" / SVHN_FILES[split], n, seed)
        return [f"data.data_dir={tmp_path / 'data'}", "data.val_size=20"]
    if name.startswith("cifar10_"):
        from .test_datasets import write_cifar10

        write_cifar10(tmp_path / "data", n=20)
        return [f"data.data_dir={tmp_path / 'data'}", "data.download=false", "data.val_size=20"]
    # 600 fake training images: carve 100 for validation (binary_mlp keeps its fraction)
    val = [] if name == "binary_mlp" else ["data.val_size=100"]
    return [f"data.data_dir={write_fake_mnist(tmp_path / 'data')}", "data.download=false", *val]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_trains_on_its_kind_of_data(make_cfg, tmp_path: Path, name: str) -> None:
    """One small training, validation and test batch (fast_dev_run) with the recipe's own net,
    trainer, callbacks and data format."""
    small = [*small_data(name, tmp_path), "data.batch_size=4", "data.eval_batch_size=null"]
    cfg = make_cfg("train", [f"experiment={name}", *small, "trainer.fast_dev_run=true"])
    metrics = train(cfg)
    for key in ("train/loss", "val/loss", "test/loss", "test/acc"):
        assert math.isfinite(metrics[key]), (key, sorted(metrics))
    assert (Path(cfg.paths.output_dir) / "metrics.json").is_file()


def test_experiments_set_no_trainer_value_but_epochs_and_precision() -> None:
    """What makes building each trainer once enough: an experiment's trainer values are at most
    ``max_epochs`` and ``precision`` (and mnist_speedrun_gpu sets both, on the fast trainer)."""
    for name in EXPERIMENTS:
        recipe = yaml.safe_load((CONFIG_DIR / "experiment" / f"{name}.yaml").read_text())
        assert set(recipe.get("trainer", {})) <= {"max_epochs", "precision"}, name
    assert set(yaml.safe_load((CONFIG_DIR / "experiment/mnist_speedrun_gpu.yaml").read_text())[
        "trainer"]) == {"max_epochs", "precision"}  # fmt: skip


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_builds_with_a_recipe(make_cfg, monkeypatch, trainer: str) -> None:
    """Each trainer config with the recipe that sets the most trainer values, built as train()
    builds it (the gpu trainers too: a GPU is faked)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = make_cfg("train", ["experiment=mnist_speedrun_gpu", f"trainer={trainer}"])
    built = build_trainer(cfg, callbacks=instantiate_list(cfg.callbacks), logger=False)
    assert built.max_epochs == 4
    assert built.precision == "bf16-mixed"


def test_the_default_recipe_learns_digits(make_cfg) -> None:
    """``python train.py data=digits``: the default model and schedule on 1,797 digits (3 epochs,
    about 10 s) reach 97% test accuracy (98.9% with seeds 42 and 1)."""
    metrics = train(make_cfg("train", ["data=digits", "logger=csv", "callbacks=lean"]))
    assert metrics["test/acc"] >= 0.97
