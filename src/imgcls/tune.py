"""``python train.py tune=lr_find`` / ``tune=batch_size``: Lightning's Tuner before training.

The tuner runs on a throwaway Trainer (no loggers, callbacks or checkpoints) and writes its result
into the run dir: ``lr_find.png`` + ``lr_find.json``, or ``batch_size.json``. With
``tune.apply=false`` (default) it reports the value and stops; with ``tune.apply=true`` the value
replaces ``model.optimizer.lr`` / ``data.batch_size`` in the run's config and training starts from
fresh weights, exactly as a run given that value on the command line would. With a OneCycle
schedule (the default) the learning rate found is its peak, ``max_lr``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.tuner import Tuner

# the run life cycle: where the run dir is and how its files are written
from imgcls.lifecycle import run_dir as run_dir_of
from imgcls.utils.errors import UserError
from imgcls.utils.runs import write_json

log = logging.getLogger(__name__)

MODES = ("lr_find", "batch_size")
#: the moving-average factor of Lightning's lr finder (its ``_LRCallback``)
LR_FINDER_BETA = 0.98


def tunes_only(cfg: DictConfig) -> bool:
    """``tune=...`` without ``tune.apply``: the run reports the tuned value and trains nothing."""
    return bool(cfg.get("tune")) and not cfg.tune.apply


def suggest_lr(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The learning rate where the smoothed loss falls fastest per decade, before its minimum.

    Lightning's own ``suggestion()`` takes the steepest slope per unit of lr (not per decade), so
    on an exponential ramp the noise of the first, tiny steps wins (9.5e-05 on digits, which
    does not train; this pick: 0.14-0.23, which trains as well as the default 0.1). Its moving
    average is divided by ``1 - beta**(step + 2)`` at step ``step`` (one too many), so the first
    points read about half the loss and would pass for the minimum: undone here. The first tenth
    of the points is skipped (the average is still settling there).
    """
    loss = np.asarray(losses, dtype=float)
    steps = np.arange(len(loss))
    loss = loss * (1 - LR_FINDER_BETA ** (steps + 2)) / (1 - LR_FINDER_BETA ** (steps + 1))
    start = len(loss) // 10
    if len(loss) - start < 3 or not np.isfinite(loss[start:]).any():
        return None
    end = start + int(np.nanargmin(loss[start:])) + 1  # up to the minimum
    if end - start < 2:
        return None  # the loss only rose: no descent to pick from
    slope = np.gradient(loss[start:end], np.log(np.asarray(lrs, dtype=float)[start:end]))
    return float(lrs[start + int(np.nanargmin(slope))])


def run_tuner(
    cfg: DictConfig,
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    make_trainer: Callable[..., pl.Trainer],
) -> dict[str, float]:
    """Run ``cfg.tune``; returns ``{"tune/lr": value}`` or ``{"tune/batch_size": value}``.

    ``make_trainer(**trainer_kwargs)`` builds the run's Trainer (the life cycle's). With
    ``tune.apply`` the value is written into ``cfg`` (the caller rebuilds model and data).
    """
    options: dict[str, Any] = {k: v for k, v in cfg.tune.items() if k not in ("tuner", "apply")}
    mode = cfg.tune.tuner
    if mode not in MODES:
        raise UserError(f"tune.tuner={mode} is not supported; use tune=lr_find or tune=batch_size")
    if cfg.trainer.get("fast_dev_run"):
        raise UserError(f"tune={mode} cannot run with trainer.fast_dev_run; drop one of them")
    # as many epochs as the tuner's steps need (with trainer.limit_train_batches, epochs are short)
    trainer = make_trainer(logger=False, callbacks=[], enable_checkpointing=False, max_epochs=-1)
    # the optimizer alone: lr_find replaces the LR schedule with its own ramp, and a batch-size
    # trial's memory does not depend on it (a OneCycle schedule cannot be sized for either)
    model.scheduler_factory = None
    tuner = Tuner(trainer)
    run_dir = run_dir_of(cfg).path
    run_dir.mkdir(parents=True, exist_ok=True)
    if mode == "lr_find":
        finder = tuner.lr_find(model, datamodule=datamodule, update_attr=False, **options)
        lr = suggest_lr(finder.results["lr"], finder.results["loss"])
        figure = finder.plot(suggest=False)
        if lr is not None:
            figure.axes[0].axvline(lr, color="red", linestyle="--", label=f"suggested {lr:.3g}")
            figure.axes[0].legend()
        figure.savefig(run_dir / "lr_find.png", dpi=120)
        figure.clf()
        write_json(run_dir / "lr_find.json", {"suggestion": lr, **finder.results})
        if lr is None:
            raise UserError(
                f"lr_find tried {len(finder.results['lr'])} learning rates and saw the loss fall "
                f"nowhere (see {run_dir / 'lr_find.png'}); raise tune.num_training or widen "
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
