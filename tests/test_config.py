"""Composing configs: Hydra's own API after ``import imgcls``, ``imgcls.compose``, the default run,
data choices that change nothing but the data, the value checks' list of precisions."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from imgcls import compose
from imgcls.config import CONFIG_DIR


def test_import_imgcls_is_enough_for_hydras_own_api() -> None:
    """Plain Hydra after ``import imgcls`` (the resolvers are registered on import, no torch)."""
    code = f"""
import sys, imgcls
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from imgcls.utils.checks import bad_value
cfg = imgcls.compose(["data.batch_size=0"])
print(bad_value(cfg))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "pytorch_lightning")))
with initialize_config_dir({str(CONFIG_DIR)!r}, version_base="1.3"):
    cfg = compose("train", overrides=["data=digits"])
model = instantiate(cfg.model)
import torch
print(type(model).__name__, type(model.net).__name__, tuple(model(torch.zeros(2, 1, 28, 28)).shape))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "data.batch_size=0: must be a positive integer; e.g. 64",
        "[]",
        "ImageClassifier TinyNet (2, 10)",
    ]


def test_the_default_run_is_the_documented_first_run() -> None:
    """``python train.py``: MNIST + tinynet, 3 epochs of its one-cycle schedule (>= 99.0%)."""
    cfg = compose(output_dir="x")
    assert cfg.data._target_ == "imgcls.data.mnist.MNISTDataModule"
    assert (cfg.data.batch_size, cfg.data.eval_batch_size, cfg.data.augment) == (128, 1000, "none")
    assert cfg.model.net._target_ == "imgcls.models.nets.tinynet.TinyNet"
    assert (cfg.model.net.width, cfg.model.net.dropout, cfg.model.label_smoothing) == (16, 0, 0.1)
    assert cfg.model.channels_last is True and cfg.trainer.max_epochs == 3
    assert cfg.model.optimizer.lr == 0.1 and cfg.model.optimizer.nesterov is True
    assert cfg.model.scheduler.anneal_strategy == "linear"


@pytest.mark.parametrize("model", ["tinynet", "alexnet"])
def test_choosing_the_data_changes_only_the_data_node(model: str) -> None:
    """``data=`` never changes another group's values (no config looked up by data and model)."""
    composed = []
    for data in ("mnist", "digits", "svhn"):
        cfg = OmegaConf.to_container(compose([f"data={data}", f"model={model}"], output_dir="x"))
        assert cfg.pop("data")["_target_"].split(".")[2] == data
        composed.append(cfg)
    assert composed[0] == composed[1] == composed[2]


def test_every_trainer_precision_lightning_accepts_passes_the_check() -> None:
    """The list in imgcls.utils.checks is the one in Lightning's ``Trainer`` signature."""
    import typing

    import pytorch_lightning as pl

    from imgcls.utils.checks import PRECISIONS

    def literals(tp) -> set:
        if typing.get_origin(tp) is typing.Literal:
            return set(typing.get_args(tp))
        return set().union(*map(literals, typing.get_args(tp)))

    hint = typing.get_type_hints(pl.Trainer.__init__)["precision"]
    assert literals(hint) == set(PRECISIONS)


@pytest.mark.parametrize("value", [0, -2, -1.0, 1.5, True])
def test_max_epochs_is_a_positive_integer_or_minus_one(value) -> None:
    from imgcls.utils.checks import bad_value

    for fine in (None, -1, 1, 40):
        assert bad_value(OmegaConf.create({"trainer": {"max_epochs": fine}}), False) is None
    message = bad_value(OmegaConf.create({"trainer": {"max_epochs": value}}), required=False)
    assert message.endswith("must be >= 1, or -1 (no limit); e.g. 10")
