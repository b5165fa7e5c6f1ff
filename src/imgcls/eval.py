"""``python eval.py ckpt_path=PATH``: test a checkpoint with the config it was trained with."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from imgcls.callbacks.eval_report import EvalReport
from imgcls.lifecycle import run_dir
from imgcls.train import build_trainer
from imgcls.utils.checkpoint import restore, store_temperature
from imgcls.utils.errors import UserError
from imgcls.utils.runs import apply_extras, instantiate_list, report_errors, to_floats

log = logging.getLogger(__name__)


def check_compatible(datamodule: Any, trained: dict[str, Any], class_names: list[str]) -> None:
    """The data must have the checkpoint's classes and input shape (model or net config)."""
    model_cfg = trained["model"]
    for name in ("num_classes", "in_channels", "image_size"):
        want = model_cfg.get(name, (model_cfg.get("net") or {}).get(name))
        got = getattr(datamodule, name)
        if want is not None and got != want:
            names = f" ({', '.join(class_names)})" if name == "num_classes" and class_names else ""
            raise UserError(
                f"the checkpoint was trained with {name}={want}{names} but the evaluation "
                f"data has {name}={got}; evaluate on data of the same shape (data=..., data.*=...)"
            )


def match_classes(model: Any, trained: list[str], data: list[str]) -> None:
    """The same class names in another order reorder the outputs (a hook on ``model.net``)."""
    if not trained or trained == data:
        return
    if sorted(trained) != sorted(data):
        raise UserError(
            f"the checkpoint was trained on the classes {trained} but the evaluation data has "
            f"{data}; evaluate on data with the same class names (data.classes=...)"
        )
    order = torch.tensor([trained.index(name) for name in data])
    model.net.register_forward_hook(lambda _net, _inputs, out: out[:, order.to(out.device)])
    log.info(
        f"the data lists the checkpoint's classes in another order: outputs matched by name "
        f"({trained} -> {data})"
    )


def evaluate(cfg: DictConfig) -> dict[str, float]:
    pl.seed_everything(cfg.seed, workers=True)
    restored = restore(cfg.ckpt_path, data_override=cfg.get("data"))
    check_compatible(restored.datamodule, restored.config, restored.class_names)
    match_classes(restored.model, restored.class_names, restored.datamodule.class_names)
    trainer = build_trainer(
        cfg,
        callbacks=instantiate_list(cfg.get("callbacks")),
        logger=instantiate_list(cfg.get("logger")),
    )
    report = next((c for c in trainer.callbacks if isinstance(c, EvalReport)), None)
    if report is not None:  # its validation logits give the temperature
        trainer.validate(restored.model, datamodule=restored.datamodule)
    trainer.test(restored.model, datamodule=restored.datamodule)
    metrics = to_floats(trainer.callback_metrics) | (report.headline if report else {})
    if cfg.get("calibrate") and trainer.is_global_zero:
        if report is None or report.temperature is None:
            raise UserError("calibrate=true needs the eval_report callback (callbacks=eval_report)")
        path = store_temperature(cfg.ckpt_path, report.temperature)
        log.info(f"temperature {report.temperature:.4f} stored in {path}")
    if trainer.is_global_zero:
        run_dir(cfg).write_metrics({"ckpt_path": str(cfg.ckpt_path), **metrics})
    return metrics


@report_errors
def run(cfg: DictConfig) -> dict[str, float]:
    apply_extras(cfg)
    metrics = evaluate(cfg)
    for name, value in sorted(metrics.items()):
        log.info(f"{name}: {value:.4f}")
    log.info(f"run dir: {run_dir(cfg).path}")
    return metrics
