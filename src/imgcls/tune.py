"""``python train.py tune=lr_find`` / ``tune=batch_size`` (docs/tools.md): Lightning's Tuner."""

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.tuner import Tuner

from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)
LR_FINDER_BETA = 0.98  # the moving-average factor of Lightning's lr finder


def tunes_only(cfg: DictConfig) -> bool:
    """``tune=...`` without ``tune.apply``: the run reports the tuned value and trains nothing."""
    return bool(cfg.get("tune")) and not cfg.tune.apply


def suggest_lr(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The lr where the smoothed loss falls fastest per decade before its minimum (Lightning's
    ``suggestion()`` picks the noise of the first tiny steps: 9.5e-05 on digits, which fails)."""
    loss = np.asarray(losses, dtype=float)
    steps = np.arange(len(loss))
    # Lightning's debiasing divides by 1 - beta**(step + 2): one too many (undone here)
    loss = loss * (1 - LR_FINDER_BETA ** (steps + 2)) / (1 - LR_FINDER_BETA ** (steps + 1))
    start = len(loss) // 10  # the moving average settling
    finite = len(loss) - start >= 3 and np.isfinite(loss[start:]).any()
    end = start + int(np.nanargmin(loss[start:])) + 1 if finite else start  # up to the minimum
    if end - start < 2:
        return None  # too few points, or the loss only rose: no descent to pick from
    slope = np.gradient(loss[start:end], np.log(np.asarray(lrs, dtype=float)[start:end]))
    return float(lrs[start + int(np.nanargmin(slope))])


def run_tuner(
    cfg: DictConfig,
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    make_trainer: Callable[..., pl.Trainer],
) -> dict[str, float]:
    """Run ``cfg.tune`` on a throwaway Trainer: ``{"tune/lr" or "tune/batch_size": value}``."""
    options = {k: v for k, v in cfg.tune.items() if k not in ("tuner", "apply")}
    mode = cfg.tune.tuner
    if mode not in ("lr_find", "batch_size"):
        raise UserError(f"tune.tuner={mode} is not supported; use tune=lr_find or tune=batch_size")
    if cfg.trainer.get("fast_dev_run"):
        raise UserError(f"tune={mode} cannot run with trainer.fast_dev_run; drop one of them")
    # as many epochs as the tuner's steps need (with trainer.limit_train_batches they are short)
    trainer = make_trainer(logger=False, callbacks=[], enable_checkpointing=False, max_epochs=-1)
    # the optimizer alone: lr_find replaces the LR schedule with its own ramp, and a batch-size
    # trial's memory does not depend on it (a OneCycle schedule cannot be sized for either)
    model.scheduler_factory = None
    tuner, run_dir = Tuner(trainer), Path(cfg.paths.output_dir)
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
        results = {"suggestion": lr, **finder.results}
        (run_dir / "lr_find.json").write_text(json.dumps(results, indent=2))
        if lr is None:
            raise UserError(
                f"lr_find tried {len(finder.results['lr'])} learning rates and saw the loss fall "
                f"nowhere (see {run_dir / 'lr_find.png'}); raise tune.num_training or widen "
                "tune.min_lr/tune.max_lr"
            )
        key, value = "model.optimizer.lr", float(lr)
    else:
        size = tuner.scale_batch_size(model, datamodule=datamodule, **options)
        (run_dir / "batch_size.json").write_text(json.dumps({"batch_size": size, **options}))
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
