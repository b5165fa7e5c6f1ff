"""``python train.py``: fit a model, then test its best checkpoint; returns the sweep objective."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from imgcls.loggers import finish_loggers
from imgcls.tune import run_tuner, tunes_only
from imgcls.utils.checkpoint import read_checkpoint
from imgcls.utils.devices import apply_gpus, apply_matmul_precision
from imgcls.utils.errors import UserError
from imgcls.utils.interrupts import InterruptCheckpoint, interruptible
from imgcls.utils.resume import LAST_CHECKPOINT
from imgcls.utils.runs import (
    apply_extras,
    ensure_seed,
    explicit_overrides,
    instantiate_list,
    output_dir,
    quiet_other_ranks,
    read_status,
    report_errors,
    to_floats,
    write_json,
    write_status,
)

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, **kwargs: Any) -> pl.Trainer:
    """The Lightning Trainer of ``cfg.trainer`` with ``gpus`` mapped to accelerator/devices,
    after ``float32_matmul_precision`` is applied."""
    apply_matmul_precision(cfg.get("float32_matmul_precision"))
    apply_gpus(cfg.trainer, explicit_overrides("trainer"))
    return instantiate(cfg.trainer, **kwargs)


#: overrides that say where a run is, not how it trains: never hyperparameters
NOT_HYPERPARAMETERS = ("hydra", "paths", "resume", "ckpt_path", "extras", "tags", "task_name")


def run_overrides() -> list[str]:
    """This run's command-line overrides (with a sweep's or Optuna's values); [] outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def hyperparameters(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """The run's key hyperparameters plus every key its overrides set (what a sweep varies).

    An override's value is read back from the composed config (``0.01`` stays a number); a group
    choice such as ``model/optimizer=sgd`` is logged as given.
    """
    params: dict[str, Any] = {
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "net": cfg.model.net._target_.rsplit(".", 1)[-1],
        "optimizer": cfg.model.optimizer._target_.rsplit(".", 1)[-1],
        "lr": cfg.model.optimizer.get("lr"),
        "batch_size": cfg.data.batch_size,
        "max_epochs": cfg.trainer.get("max_epochs"),
        "seed": cfg.seed,
    }
    for override in overrides:
        if "=" not in override or override.startswith("~"):
            continue
        key, given = override.lstrip("+").split("=", 1)
        if key.split(".", 1)[0].split("/", 1)[0] in NOT_HYPERPARAMETERS:
            continue
        value = OmegaConf.select(cfg, key, default=given) if "/" not in key else given
        if isinstance(value, DictConfig) or OmegaConf.is_list(value):
            value = given  # a group picked with a dot key (data=digits): its name
        params[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return params


def log_hparams_with_metrics(
    loggers: list[Any], cfg: DictConfig, metrics: dict[str, float], overrides: list[str]
) -> None:
    """Write the run's hyperparameters with its real final metrics (TensorBoard hparams tab)."""
    params = hyperparameters(cfg, overrides)
    hp_metrics = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items()}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=hp_metrics)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(hp_metrics)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test as configured; returns every final metric as a float."""
    pl.seed_everything(ensure_seed(cfg), workers=True)
    if cfg.get("ckpt_path"):
        # fail now, clearly, rather than after set-up; mapped, so Lightning's resume is the one read
        read_checkpoint(cfg.ckpt_path, mmap=True)
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    model: pl.LightningModule = instantiate(cfg.model)
    if cfg.get("tune"):
        tuned = run_tuner(cfg, model, datamodule)
        if tunes_only(cfg):
            return tuned
        pl.seed_everything(cfg.seed, workers=True)  # as if the tuned value had been given
        datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    run_dir = output_dir(cfg)
    interrupt = InterruptCheckpoint(run_dir / LAST_CHECKPOINT)
    callbacks = [*instantiate_list(cfg.get("callbacks")), interrupt]
    loggers = instantiate_list(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    model.run_info = {"config": resolved, "class_names": list(datamodule.class_names)}
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)  # Hydra makes it; a direct train(cfg) may not
        OmegaConf.save(OmegaConf.create(resolved), run_dir / "config.yaml")

    if cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = to_floats(trainer.callback_metrics)
    interrupt.raise_if_requested()

    if cfg.test:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("no best checkpoint (checkpointing off): testing the current weights")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(to_floats(trainer.callback_metrics))

    log_hparams_with_metrics(loggers, cfg, metrics, run_overrides())
    finish_loggers(loggers)
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def finished_metrics(cfg: DictConfig) -> dict[str, float] | None:
    """With ``resume=true``: the metrics of this run dir if it already completed, else None.

    An unfinished run dir with a last checkpoint continues from it (``ckpt_path`` is set).
    """
    if cfg.get("resume") is not True:
        return None
    run_dir = output_dir(cfg)
    status = read_status(run_dir)
    if status.get("status") == "completed":
        log.info(f"{run_dir} already completed: skipped (resume=true)")
        return status["metrics"]
    last = run_dir / LAST_CHECKPOINT
    if last.is_file() and not cfg.get("ckpt_path"):
        log.info(f"resuming {run_dir} from {last}")
        cfg.ckpt_path = str(last)
    return None


@report_errors
def run(cfg: DictConfig) -> float | None:
    """Hydra task: train, print the results and return ``optimized_metric`` for sweepers."""
    quiet_other_ranks()
    apply_extras(cfg)
    metrics = finished_metrics(cfg)
    if metrics is None:
        write_status(output_dir(cfg), "running")
        with interruptible(cfg):
            metrics = train(cfg)
        write_status(output_dir(cfg), "completed", metrics=metrics)
    for name in ("val/acc_best", "test/acc", "test/loss"):
        if name in metrics:
            log.info(f"{name}: {metrics[name]:.4f}")
    log.info(f"run dir: {output_dir(cfg)}")
    name = cfg.get("optimized_metric")
    if not name or tunes_only(cfg):
        return None
    if name not in metrics:
        raise UserError(
            f"optimized_metric={name} was not logged; available: {', '.join(sorted(metrics))}"
        )
    return metrics[name]


if __name__ == "__main__":
    from imgcls.cli import train

    train()
