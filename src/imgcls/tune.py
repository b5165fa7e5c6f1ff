"""``python train.py tune=lr_find`` / ``tune=batch_size``: Lightning's Tuner before training.

The tuner runs on a throwaway Trainer (no loggers, callbacks or checkpoints) and writes its result
into the run dir: ``lr_find.png`` + ``lr_find.json``, or ``batch_size.json``. With
``tune.apply=false`` (default) it reports the value and stops; with ``tune.apply=true`` the value
replaces ``model.optimizer.lr`` / ``data.batch_size`` in the run's config and training starts from
fresh weights, exactly as a run given that value on the command line would.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.tuner import Tuner

from imgcls.run_dir import write_json
from imgcls.utils.errors import UserError
from imgcls.utils.runs import run_dir as run_dir_of

log = logging.getLogger(__name__)

MODES = ("lr_find", "batch_size")


def tunes_only(cfg: DictConfig) -> bool:
    """``tune=...`` without ``tune.apply``: the run reports the tuned value and trains nothing."""
    return bool(cfg.get("tune")) and not cfg.tune.apply


def run_tuner(
    cfg: DictConfig, model: pl.LightningModule, datamodule: pl.LightningDataModule
) -> dict[str, float]:
    """Run ``cfg.tune``; returns ``{"tune/lr": value}`` or ``{"tune/batch_size": value}``.

    With ``tune.apply`` the value is written into ``cfg`` (the caller rebuilds model and data).
    """
    from imgcls.train import build_trainer  # train.py calls this module

    options: dict[str, Any] = {k: v for k, v in cfg.tune.items() if k not in ("tuner", "apply")}
    mode = cfg.tune.tuner
    if mode not in MODES:
        raise UserError(f"tune.tuner={mode} is not supported; use tune=lr_find or tune=batch_size")
    if cfg.trainer.get("fast_dev_run"):
        raise UserError(f"tune={mode} cannot run with trainer.fast_dev_run; drop one of them")
    # as many epochs as the tuner's steps need (with trainer.limit_train_batches, epochs are short)
    trainer = build_trainer(
        cfg, logger=False, callbacks=[], enable_checkpointing=False, max_epochs=-1
    )
    # the optimizer alone: lr_find replaces the LR schedule with its own ramp, and a batch-size
    # trial's memory does not depend on it (a OneCycle schedule cannot be sized for either)
    model.scheduler_factory = None
    tuner = Tuner(trainer)
    run_dir = run_dir_of(cfg).path
    run_dir.mkdir(parents=True, exist_ok=True)
    if mode == "lr_find":
        finder = tuner.lr_find(model, datamodule=datamodule, update_attr=False, **options)
        lr = finder.suggestion()
        figure = finder.plot(suggest=lr is not None)
        figure.savefig(run_dir / "lr_find.png", dpi=120)
        figure.clf()
        write_json(run_dir / "lr_find.json", {"suggestion": lr, **finder.results})
        if lr is None:
            raise UserError(
                f"lr_find tried {len(finder.results['lr'])} learning rates and found no steepest "
                f"descent (see {run_dir / 'lr_find.png'}); raise tune.num_training or widen "
                "tune.min_lr/tune.max_lr"
            )
        key, value = "model.optimizer.lr", float(lr)
    else:
        size = tuner.scale_batch_size(model, datamodule=datamodule, **options)
        write_json(run_dir / "batch_size.json", {"batch_size": size, **options})
        key, value = "data.batch_size", int(size)
    if cfg.tune.apply:
        OmegaConf.update(cfg, key, value)
        log.info(f"tune={mode}: training with {key}={value:g} (tune.apply=true)")
    else:
        log.info(
            f"tune={mode} suggests {key}={value:g} (in {run_dir}); train with it: "
            f"`python train.py {key}={value:g} ...`, or tune and train at once with tune.apply=true"
        )
    return {f"tune/{key.rsplit('.', 1)[-1]}": float(value)}
