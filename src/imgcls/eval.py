"""``python eval.py ckpt_path=PATH``: test a checkpoint with the config it was trained with."""

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from imgcls.callbacks.eval_report import EvalReport
from imgcls.lifecycle import run_dir
from imgcls.train import build_trainer
from imgcls.utils import runs
from imgcls.utils.checkpoint import restore, store_temperature
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)


def match_data(restored: Any) -> None:
    """The checkpoint's input shape and classes; classes in another order reorder the outputs."""
    data, model_cfg, trained = restored.datamodule, restored.config["model"], restored.class_names
    for name in ("num_classes", "in_channels", "image_size"):
        want = model_cfg.get(name, (model_cfg.get("net") or {}).get(name))
        if want is not None and getattr(data, name) != want:
            names = f" ({', '.join(trained)})" if name == "num_classes" and trained else ""
            raise UserError(
                f"the checkpoint was trained with {name}={want}{names} but the evaluation data "
                f"has {name}={getattr(data, name)}; evaluate on data of the same shape (data=...)"
            )
    if not trained or trained == data.class_names:
        return
    if sorted(trained) != sorted(data.class_names):
        raise UserError(
            f"the checkpoint was trained on the classes {trained} but the evaluation data has "
            f"{data.class_names}; evaluate on data with the same class names (data.classes=...)"
        )
    order = torch.tensor([trained.index(name) for name in data.class_names])
    restored.model.net.register_forward_hook(lambda _n, _i, out: out[:, order.to(out.device)])
    log.info(
        "the data lists the checkpoint's classes in another order: outputs matched by name "
        f"({trained} -> {data.class_names})"
    )


def evaluate(cfg: DictConfig) -> dict[str, float]:
    runs.apply_extras(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    restored = restore(cfg.ckpt_path, data_override=cfg.get("data"))
    match_data(restored)
    callbacks = runs.instantiate_list(cfg.get("callbacks"))
    trainer = build_trainer(
        cfg, callbacks=callbacks, logger=runs.instantiate_list(cfg.get("logger"))
    )
    report = next((c for c in trainer.callbacks if isinstance(c, EvalReport)), None)
    with runs.quiet_lightning():
        if report is not None:  # its validation logits give the temperature
            trainer.validate(restored.model, datamodule=restored.datamodule)
        trainer.test(restored.model, datamodule=restored.datamodule)
    metrics = runs.to_floats(trainer.callback_metrics) | (report.headline if report else {})
    if cfg.get("calibrate") and trainer.is_global_zero:
        if report is None or report.temperature is None:
            raise UserError("calibrate=true needs the eval_report callback (callbacks=eval_report)")
        path = store_temperature(cfg.ckpt_path, report.temperature)
        log.info(f"temperature {report.temperature:.4f} stored in {path}")
    if trainer.is_global_zero:
        run_dir(cfg).write_metrics({"ckpt_path": str(cfg.ckpt_path), **metrics})
    for name, value in sorted(metrics.items()):
        log.info(f"{name}: {value:.4f}")
    log.info(f"run dir: {run_dir(cfg).path}")
    return metrics


run = runs.report_errors(evaluate)
