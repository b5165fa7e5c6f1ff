"""``python train.py``: fit a model, then test its best checkpoint; returns the sweep objective."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from imgcls import provenance
from imgcls.checkpoints import find_checkpoint, relocated, resumed_config
from imgcls.lifecycle import (
    Randomness,
    RequeueStatus,
    RunInfo,
    StopOnSignal,
    best_checkpoint,
    build_trainer,
    init_weights,
    interruptible,
)
from imgcls.loggers import finish_loggers
from imgcls.run_dir import (
    REQUEUED,
    RunDir,
    finished_metrics,
    log_start,
    parse_overrides,
)
from imgcls.tune import run_tuner, tunes_only
from imgcls.utils.checkpoint import check_something_to_train, read_checkpoint
from imgcls.utils.errors import UserError
from imgcls.utils.runs import (
    apply_extras,
    ensure_seed,
    instantiate_list,
    quiet_other_ranks,
    report_errors,
    run_dir,
    to_floats,
)

log = logging.getLogger(__name__)

__all__ = ["build_trainer", "run", "train"]  # build_trainer: imgcls.lifecycle's
#: overrides that say where a run is, not how it trains: never hyperparameters
NOT_HYPERPARAMETERS = (
    *("hydra", "paths", "resume", "rerun", "ckpt_path", "extras", "tags", "task_name"),
)


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
        "tags": ",".join(map(str, cfg.get("tags") or [])),
    }
    for override in parse_overrides(overrides):
        if override.deletes or override.value is None:
            continue
        key, given = override.key, override.value
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
    params = {**hyperparameters(cfg, overrides), **provenance.hparams(cfg.paths.output_dir)}
    hp_metrics = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items()}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=hp_metrics)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(hp_metrics)


def check_optimized_metric(cfg: DictConfig, model: pl.LightningModule) -> None:
    """Before any training: ``optimized_metric`` must be a metric this run's module will log
    (a module that does not declare ``logged_metrics`` is checked after the run only)."""
    name = cfg.get("optimized_metric")
    declared = getattr(model, "logged_metrics", None)
    if not name or not declared:
        return
    stages = ({"train", "val"} if cfg.get("train") else set()) | ({"test"} if cfg.test else set())
    available = sorted(m for m in declared if m.split("/", 1)[0] in stages)
    if name not in available:
        raise UserError(
            f"optimized_metric={name} is not a metric this run logs; "
            f"available: {', '.join(available) or 'none (train=false test=false)'}"
        )


class ForgetRestoredBest(pl.Callback):
    """A new run started from another run's checkpoint (``ckpt_path=``): its ``val/acc_best``
    counts its own epochs only, not the best the restored module carried from that run."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best = getattr(pl_module, "val_acc_best", None)
        if best is not None:
            best.reset()


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """The run's datamodule and model, the model starting from ``init_from``'s weights."""
    model = instantiate(cfg.model)
    if cfg.get("init_from"):
        init_weights(model, cfg.init_from, reset_head=bool(cfg.get("init_from_reset_head")))
    return instantiate(cfg.data), model


def train(cfg: DictConfig, stop: StopOnSignal | None = None) -> dict[str, float]:
    """Fit and test as configured; returns every final metric as a float."""
    pl.seed_everything(ensure_seed(cfg), workers=True)
    run = run_dir(cfg)
    extra_callbacks: list[pl.Callback] = []
    continuing = False
    if cfg.get("ckpt_path"):
        if Path(cfg.ckpt_path).is_dir():  # a run dir: a new run from its last checkpoint
            cfg.ckpt_path = str(find_checkpoint(Path(cfg.ckpt_path), prefer="last"))
        # fail now, clearly, rather than after set-up; mapped, so Lightning's resume is the one read
        checkpoint = read_checkpoint(cfg.ckpt_path, mmap=True)
        continuing = log_start(cfg.ckpt_path, run)
        if continuing:  # its own checkpoint holds the weights, its config the tuned values
            with open_dict(cfg):
                cfg.init_from = cfg.tune = None
        else:
            check_something_to_train(cfg.ckpt_path, checkpoint, cfg.trainer.get("max_epochs"))
            extra_callbacks.append(ForgetRestoredBest())
    if cfg.get("init_from") and cfg.get("ckpt_path"):
        raise UserError("init_from= and ckpt_path= both set: pass one (weights or a full state)")
    datamodule, model = build(cfg)
    if not tunes_only(cfg):
        check_optimized_metric(cfg, model)
    if cfg.get("tune"):  # (init_from's weights are tuned, not random ones)
        tuned = run_tuner(cfg, model, datamodule, lambda **kw: build_trainer(cfg, **kw))
        if tunes_only(cfg):
            return tuned
        pl.seed_everything(cfg.seed, workers=True)  # as if the tuned value had been given
        datamodule, model = build(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [
        *instantiate_list(cfg.get("callbacks")),
        RunInfo(resolved),
        stop or StopOnSignal(run.path),
        RequeueStatus(run),
        Randomness(cfg.seed),
        WriteProvenance(),
        *extra_callbacks,
    ]
    loggers = instantiate_list(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers)
    if trainer.is_global_zero:
        run.write_config(resolved)

    if cfg.train:
        with warnings.catch_warnings():
            if continuing:  # in its own dir: the run's checkpoints are expected there
                warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        if not trainer.callback_metrics:
            # nothing trained (max_epochs=0, or resumed after its last epoch, say Ctrl-C while
            # testing): the val metrics of the weights it has
            trainer.validate(model, datamodule=datamodule, verbose=False)
    metrics = to_floats(trainer.callback_metrics)

    best = best_checkpoint(trainer)
    if cfg.test:
        if not best:
            log.warning("no best checkpoint (checkpointing off): testing the current weights")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(to_floats(trainer.callback_metrics))

    log_hparams_with_metrics(loggers, cfg, metrics, run_overrides())
    finish_loggers(loggers)
    if trainer.is_global_zero:
        sources = metric_sources(metrics, trainer.current_epoch - 1, best, run.path)
        run.write_metrics({**metrics, "sources": sources})
    return metrics


def metric_sources(
    metrics: dict[str, float], last_epoch: int, best: str, run_path: Path
) -> dict[str, dict[str, Any]]:
    """Where each final metric comes from: the last epoch (train/val), the best epoch
    (``val/acc_best``) or the checkpoint that was tested (``test/*``)."""
    best_file = {"checkpoint": os.path.relpath(best, run_path)} if best else {}
    last = {"from": "last epoch", "epoch": last_epoch}
    sources = {}
    for name in metrics:
        if name == "val/acc_best":
            sources[name] = {"from": "best epoch", **best_file}
        elif name.startswith("test/"):
            sources[name] = {"from": "best checkpoint", **best_file} if best else last
        else:
            sources[name] = last
    return sources


def rerun_config(old: Path, output_dir: str) -> DictConfig:
    """``rerun=<run dir>``: that run's saved, resolved config, writing to this new run dir."""
    saved = RunDir(old).config()
    if not saved:
        raise UserError(f"rerun={old} is not a run dir (no readable config.yaml in it)")
    log.info(f"rerun={old}: its config, in a new run dir {output_dir}")
    moved = relocated(saved, output_dir)  # the old run's paths (checkpoints, logs) move too
    return OmegaConf.create({**moved, "rerun": None, "resume": False, "ckpt_path": None})


class WriteProvenance(pl.Callback):
    """Rank 0 writes the run's provenance when fit starts (the data is set up: its fingerprint)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            provenance.write(Path(trainer.default_root_dir), provenance.collect(trainer.datamodule))


@report_errors
def run(cfg: DictConfig) -> float | None:
    """Hydra task: train, print the results and return ``optimized_metric`` for sweepers.

    With ``resume=true`` (a sweep job run again) a completed run dir reports its recorded metrics
    and an unfinished one continues from its newest checkpoint; a run dir SLURM ``requeued`` (the
    job SLURM starts again) always continues so.
    """
    quiet_other_ranks()
    apply_extras(cfg)
    if isinstance(cfg.get("resume"), str):  # resume=<run dir>: Hydra runs in that dir already
        cfg = resumed_config(cfg.resume, cfg, run_overrides())
    rerun_of = Path(cfg.rerun).resolve() if cfg.get("rerun") else None
    if rerun_of is not None:
        cfg = rerun_config(rerun_of, cfg.paths.output_dir)
    run_here = run_dir(cfg)
    resuming = cfg.get("resume") is True or run_here.status().get("status") == REQUEUED
    metrics = finished_metrics(run_here) if resuming else None
    if resuming and metrics is None and not cfg.get("ckpt_path"):
        last = run_here.latest_checkpoint()  # a job that stopped part-way: its newest state
        cfg.ckpt_path = str(last) if last else None
    if metrics is None:
        tags = list(cfg.get("tags") or [])
        if rank_zero_only.rank == 0:
            run_here.write_status("running", tags=tags)
        stop = StopOnSignal(run_here.path)
        with interruptible(cfg, stop):
            metrics = train(cfg, stop)
        if rank_zero_only.rank == 0:
            run_here.write_status("completed", metrics=metrics, tags=tags)
    for name in ("val/acc_best", "test/acc", "test/loss"):
        if name in metrics:
            log.info(f"{name}: {metrics[name]:.4f}")
    log.info(f"run dir: {run_here.path}")
    if rerun_of is not None and rank_zero_only.rank == 0:
        print(provenance.compare(rerun_of, run_here.path))
    name = cfg.get("optimized_metric")
    if not name or tunes_only(cfg):
        return None
    if name not in metrics:
        raise UserError(
            f"optimized_metric={name} was not logged; available: {', '.join(sorted(metrics))}"
        )
    return metrics[name]
