"""End-to-end training through the composed configs: fit, test, checkpoints, resume, logs."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcls.config import CONFIG_DIR
from imgcls.lifecycle import RunInfo
from imgcls.models.classifier import ImageClassifier
from imgcls.train import build_trainer, train
from imgcls.utils.checkpoint import restore
from imgcls.utils.errors import UserError

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
#: logger targets that need an optional extra, and the package it installs
OPTIONAL_LOGGERS = {
    "pytorch_lightning.loggers.MLFlowLogger": "mlflow",
    "pytorch_lightning.loggers.WandbLogger": "wandb",
}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("data", ["mnist", "digits"])
def test_fast_dev_run_every_model_on_every_builtin_dataset(make_cfg, fake_mnist, model, data):
    overrides = [f"model={model}", f"data={data}", "trainer.fast_dev_run=true"]
    overrides += ["data.batch_size=4", "data.eval_batch_size=4"]  # one batch each: any size does
    if data == "mnist":
        overrides += [f"data.data_dir={fake_mnist}", "data.val_size=100"]
    metrics = train(make_cfg("train", overrides))
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_every_config_group_option_instantiates(make_cfg) -> None:
    from hydra.utils import instantiate
    from pytorch_lightning.loggers import Logger

    kinds = {"callbacks": pl.Callback, "logger": Logger}
    for group in ("callbacks", "logger", "trainer"):
        for option in sorted((CONFIG_DIR / group).glob("*.yaml")):
            cfg = make_cfg("train", [f"{group}={option.stem}", "data=digits"], subdir=option.stem)
            node = cfg[group]
            if group == "logger" and not all(  # logger=mlflow/wandb without their extra
                find_spec(OPTIONAL_LOGGERS.get(v._target_, "imgcls")) for v in node.values()
            ):
                continue
            if group != "trainer":
                for name, entry in (node or {}).items():
                    assert isinstance(instantiate(entry), kinds[group]), (option.stem, name)
            elif (node.gpus or node.accelerator == "gpu") and not torch.cuda.is_available():
                with pytest.raises(UserError, match="GPU"):
                    build_trainer(cfg)
            else:  # trainer.gpus is the one imgcls key: build_trainer maps it, Lightning the rest
                built = build_trainer(cfg)
                assert (built.max_epochs, built.num_devices) == (node.max_epochs, node.devices)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """One short real training run on digits, shared by the tests that inspect its outputs."""
    from .conftest import compose_config

    run_dir = tmp_path_factory.mktemp("digits_run")
    cfg = compose_config("train", ["data=digits", "trainer.max_epochs=1", "seed=3"], run_dir)
    return run_dir, train(cfg)


def test_one_epoch_on_digits_learns(digits_run) -> None:
    run_dir, metrics = digits_run
    assert metrics["test/acc"] > 0.5  # chance is 0.1
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"])
    # where each value comes from: the last epoch, the best epoch, the checkpoint tested
    (best,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
    assert saved["sources"]["val/acc"] == {"from": "last epoch", "epoch": 0}
    tested = {"from": "best checkpoint", "checkpoint": f"checkpoints/{best.name}"}
    assert saved["sources"]["test/acc"] == tested
    assert saved["sources"]["val/acc_best"] == {**tested, "from": "best epoch"}
    assert "num_classes: 10" in (run_dir / "config.yaml").read_text()  # resolved


def test_checkpoint_restores_the_model_that_was_tested(digits_run) -> None:
    """Read with weights_only, rebuilt from the config inside, it scores the run's test/acc."""
    run_dir, metrics = digits_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"  # one epoch: also the best, the one tested
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)  # no pickled code inside
    assert raw["imgcls"]["class_names"] == [str(d) for d in range(10)]
    restored = restore(ckpt)
    tester = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (scores,) = tester.test(restored.model, datamodule=restored.datamodule, verbose=False)
    assert scores["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    loaded = ImageClassifier.load_from_checkpoint(ckpt)
    for name, value in raw["state_dict"].items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_a_model_trained_without_train_py_restores_with_run_info(make_cfg) -> None:
    """A plain Trainer with the RunInfo callback writes checkpoints eval and predict can use."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = make_cfg("train", ["data=digits", "seed=4"])
    model, datamodule = instantiate(cfg.model), instantiate(cfg.data)
    trainer = pl.Trainer(
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=cfg.paths.output_dir,
        callbacks=[RunInfo(OmegaConf.to_container(cfg, resolve=True))],
    )
    trainer.fit(model, datamodule=datamodule)
    ckpt = Path(cfg.paths.output_dir) / "plain.ckpt"
    trainer.save_checkpoint(ckpt)
    restored = restore(ckpt)
    assert restored.class_names == datamodule.class_names
    assert restored.config["seed"] == 4
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(restored.model.eval()(x), model.eval()(x))


def test_tensorboard_holds_logged_scalars_and_hparams(digits_run) -> None:
    run_dir, metrics = digits_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc"} <= scalars
    assert events.Scalars("test/acc")[-1].value == pytest.approx(metrics["test/acc"])
    assert "hp/test_acc" in scalars  # the hparams tab's metric carries the real final value
    assert events.Scalars("hp/test_acc")[-1].value == pytest.approx(metrics["test/acc"])


def test_resume_from_last_checkpoint_continues_epochs(make_cfg) -> None:
    common = [  # a schedule independent of the run's length: max_epochs grows on resume
        "data=digits",
        "model/scheduler=step",
        "trainer.limit_train_batches=5",
        "trainer.limit_val_batches=2",
    ]
    first = make_cfg("train", [*common, "trainer.max_epochs=1", "test=false"], subdir="first")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    resumed = make_cfg(
        "train", [*common, "trainer.max_epochs=2", f"ckpt_path={last}"], subdir="resumed"
    )
    train(resumed)
    new_last = torch.load(
        Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert new_last["epoch"] == 1  # one more epoch, the first not repeated
    assert new_last["global_step"] == 10


def test_resume_with_more_epochs_than_its_onecycle_covers_is_one_line(make_cfg) -> None:
    common = ["data=digits", "trainer.limit_train_batches=5", "trainer.limit_val_batches=2"]
    first = make_cfg("train", [*common, "trainer.max_epochs=1", "test=false"], subdir="first")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    longer = make_cfg("train", [*common, "trainer.max_epochs=2", f"ckpt_path={last}"], subdir="2")
    with pytest.raises(UserError, match="OneCycleLR was sized for 5 optimizer steps but this run"):
        train(longer)


def test_an_endless_run_trains_and_a_schedule_over_it_is_one_line(make_cfg) -> None:
    endless = ["data=digits", "trainer.max_epochs=-1", "trainer.limit_train_batches=2"]
    endless += ["trainer.limit_val_batches=1", "test=false"]
    plain = make_cfg("train", [*endless, "model.scheduler=null", "+trainer.max_time=00:00:00:03"])
    train(plain)  # stopped by max_time: no schedule needs the run's length
    assert (Path(plain.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()
    sized = make_cfg("train", endless, subdir="onecycle")
    with pytest.raises(UserError, match="model.scheduler spans the whole run and needs its length"):
        train(sized)


def test_last_checkpoint_follows_every_epoch_even_without_improvement(make_cfg) -> None:
    frozen = [  # an lr this small cannot change val/acc: only epoch 0 is ever "best"
        "data=digits",
        "model.optimizer.lr=1e-12",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2",
        "test=false",
    ]
    cfg = make_cfg("train", frozen)
    train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 2


def test_train_called_directly_creates_its_run_dir(make_cfg, tmp_path) -> None:
    """Without Hydra's run dir set-up (a script calling ``train(cfg)``) nothing is missing."""
    from omegaconf import open_dict

    cfg = make_cfg("train", ["data=digits", "trainer.fast_dev_run=true", "logger=csv"])
    run_dir = tmp_path / "not" / "yet" / "there"
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    metrics = train(cfg)
    assert (run_dir / "config.yaml").is_file() and "test/acc" in metrics


def test_hparams_hold_every_overridden_key_as_a_sweep_varies_it(make_cfg, tmp_path) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.plugins.hparams import plugin_data_pb2

    from imgcls.train import log_hparams_with_metrics

    overrides = [
        "model/optimizer=sgd",
        "model.optimizer.lr=0.003",
        "data.batch_size=32",
        "model.net.dropout=0.2",
        "trainer.max_epochs=2",
        "hydra.sweep.dir=/tmp/x",
        "extras.print_config=false",
    ]
    cfg = make_cfg("train", ["data=digits", *overrides[:5]])
    logger = TensorBoardLogger(tmp_path / "tb", name="", version="")
    log_hparams_with_metrics([logger], cfg, {"val/acc_best": 0.5}, overrides)
    logger.finalize("success")
    saved = yaml.safe_load((tmp_path / "tb" / "hparams.yaml").read_text())
    expected = {
        "model/optimizer": "sgd",
        "model.optimizer.lr": 0.003,
        "data.batch_size": 32,
        "model.net.dropout": 0.2,
        "trainer.max_epochs": 2,
    }
    assert expected.items() <= saved.items()
    assert not {"hydra.sweep.dir", "extras.print_config"} & set(saved)  # not hyperparameters
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    logged = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert set(expected) <= set(logged)  # the HParams tab can compare trials on each of them
    assert logged["model.optimizer.lr"].number_value == pytest.approx(0.003)
