"""``python eval.py ckpt_path=PATH``: test a checkpoint with the config it was trained with."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from imgcls.models.classifier import ImageClassifier
from imgcls.train import build_trainer
from imgcls.utils.checkpoint import read_checkpoint, stored_class_names, stored_config
from imgcls.utils.errors import UserError
from imgcls.utils.runs import (
    apply_extras,
    instantiate_list,
    output_dir,
    quiet_other_ranks,
    report_errors,
    to_floats,
    write_json,
)

log = logging.getLogger(__name__)


def eval_data_config(cfg: DictConfig, trained: dict[str, Any]) -> DictConfig:
    """The training run's data config, replaced by ``data=NAME`` or patched by ``+data.KEY=V``."""
    override = cfg.get("data")
    if override is not None and "_target_" in override:
        return override
    data_cfg = OmegaConf.create(trained["data"])
    return OmegaConf.merge(data_cfg, override) if override else data_cfg


def check_compatible(datamodule: Any, trained: dict[str, Any], class_names: list[str]) -> None:
    """The data must have the classes and input shape the checkpoint was trained on."""
    net_cfg = trained["model"]["net"]
    expected = {
        "num_classes": net_cfg.get("num_classes"),
        "in_channels": net_cfg.get("in_channels"),
        "image_size": net_cfg.get("image_size"),
    }
    for name, want in expected.items():
        got = getattr(datamodule, name)
        if want is not None and got != want:
            trained_on = (
                f" ({', '.join(class_names)})" if name == "num_classes" and class_names else ""
            )
            raise UserError(
                f"the checkpoint was trained with {name}={want}{trained_on} but the evaluation "
                f"data has {name}={got}; evaluate on data of the same shape (data=..., data.*=...)"
            )


def evaluate(cfg: DictConfig) -> dict[str, float]:
    checkpoint = read_checkpoint(cfg.ckpt_path)
    trained, class_names = stored_config(checkpoint), stored_class_names(checkpoint)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(eval_data_config(cfg, trained))
    datamodule.load_state_dict(checkpoint.get(type(datamodule).__qualname__, {}))
    check_compatible(datamodule, trained, class_names)
    model = ImageClassifier.from_checkpoint(checkpoint)
    trainer = build_trainer(
        cfg,
        callbacks=instantiate_list(cfg.get("callbacks")),
        logger=instantiate_list(cfg.get("logger")),
    )
    trainer.test(model, datamodule=datamodule)
    metrics = to_floats(trainer.callback_metrics)
    write_json(output_dir(cfg) / "metrics.json", {"ckpt_path": str(cfg.ckpt_path), **metrics})
    return metrics


@report_errors
def run(cfg: DictConfig) -> dict[str, float]:
    quiet_other_ranks()
    apply_extras(cfg)
    metrics = evaluate(cfg)
    for name, value in sorted(metrics.items()):
        log.info(f"{name}: {value:.4f}")
    log.info(f"run dir: {output_dir(cfg)}")
    return metrics


if __name__ == "__main__":
    from imgcls.cli import evaluate

    evaluate()
