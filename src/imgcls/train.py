"""``python train.py``: fit a model, then test its best checkpoint; returns the sweep objective."""

import logging
import os
import random
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LambdaCallback, ModelSummary, ProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from imgcls import lifecycle, provenance
from imgcls.tune import run_tuner, tunes_only
from imgcls.utils import checkpoint as ckpt
from imgcls.utils import runs
from imgcls.utils.devices import apply_gpus, apply_matmul_precision
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

#: overrides that say where a run is, not how it trains: never hyperparameters
NOT_HYPERPARAMETERS = ("hydra", "paths", "resume", "rerun", "ckpt_path", "extras", "tags",
                       "task_name")  # fmt: skip
#: ``trainer.enable_progress_bar=false`` leaves out the progress bar callback instead of failing
SWITCHED_CALLBACKS = {"enable_progress_bar": ProgressBar, "enable_model_summary": ModelSummary}


def build_trainer(cfg: DictConfig, callbacks: list[Any] = (), **kwargs: Any) -> pl.Trainer:
    """``cfg.trainer`` with ``trainer.gpus`` mapped (under SLURM, Lightning requeues on SIGUSR1)."""
    apply_matmul_precision(cfg.get("float32_matmul_precision"))
    trainer_cfg = OmegaConf.create(OmegaConf.to_container(cfg.trainer, resolve=True))
    given = {key for key, _, _ in runs.parse_overrides(run_overrides())}
    apply_gpus(trainer_cfg, trainer_cfg.pop("gpus", None), "trainer.devices" in given)
    switched_off = tuple(t for k, t in SWITCHED_CALLBACKS.items() if trainer_cfg.get(k) is False)
    kept = [c for c in callbacks if not isinstance(c, switched_off)]
    return instantiate(trainer_cfg, callbacks=kept, **kwargs)


def run_overrides() -> list[str]:
    """This run's command-line overrides (with a sweep's or Optuna's values); [] outside Hydra."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def log_hparams_with_metrics(
    loggers: list[Any], cfg: DictConfig, metrics: dict[str, float], overrides: list[str]
) -> None:
    """Key hyperparameters, every key the overrides set, provenance, with the final metrics."""
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
    for key, given, deletes in runs.parse_overrides(overrides):
        if deletes or key.split(".")[0].split("/")[0] in NOT_HYPERPARAMETERS:
            continue
        value = OmegaConf.select(cfg, key, default=given) if "/" not in key else given
        # a group picked with a dot key (data=digits), or a list: as given
        params[key] = value if isinstance(value, (int, float, str, bool)) else given
    params |= provenance.hparams(cfg.paths.output_dir)
    hp_metrics = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items()}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=hp_metrics)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(hp_metrics)


def ensure_seed(cfg: DictConfig) -> int:
    """Seed everything; ``seed=null``: rank 0 draws one, the ranks Lightning starts read it."""
    if cfg.get("seed") is None:
        if rank_zero_only.rank != 0 and "PL_GLOBAL_SEED" not in os.environ:
            raise UserError(
                "seed=null draws a different seed in every process of this distributed run, so "
                "each rank would split the data differently; set seed=<integer>"
            )
        drawn = random.SystemRandom().randrange(2**31)
        with open_dict(cfg):
            cfg.seed = int(os.environ["PL_GLOBAL_SEED"]) if rank_zero_only.rank else drawn
    return pl.seed_everything(cfg.seed, workers=True)


def log_start(ckpt_path: str | Path, run: lifecycle.RunDir) -> bool:
    """Log where training starts: this run's own checkpoint (True: it continues) or another's."""
    source = Path(ckpt_path).resolve()
    if source.is_relative_to(run.path.resolve()):  # checkpoints/ or a requeue's hpc_ckpt_<n>
        log.info(f"continuing {run.path} from {source}")
        return True
    origin = source.parent.parent  # resume= needs its config.yaml
    in_checkpoints = source.parent.name == lifecycle.CHECKPOINT_DIR
    known = in_checkpoints and (origin / lifecycle.CONFIG_FILE).is_file()
    hint = f" (resume={origin} would continue that run in its own dir instead)" if known else ""
    log.info(f"ckpt_path={source}: a new run in {run.path}, starting from that checkpoint{hint}")
    return False


def forget_restored_best(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """A new run from another run's checkpoint (``ckpt_path=``): its own ``val/acc_best``."""
    if getattr(pl_module, "val_acc_best", None) is not None:
        pl_module.val_acc_best.reset()


def write_provenance(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Rank 0, when fit starts (the data is set up: its fingerprint)."""
    if trainer.is_global_zero:
        provenance.write(Path(trainer.default_root_dir), provenance.collect(trainer.datamodule))


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """The run's datamodule and model, the model starting from ``init_from``'s weights."""
    model = instantiate(cfg.model)
    if cfg.get("init_from"):
        ckpt.init_weights(model, cfg.init_from, reset_head=bool(cfg.get("init_from_reset_head")))
    return instantiate(cfg.data), model


def train(cfg: DictConfig, stop: lifecycle.StopOnSignal | None = None) -> dict[str, float]:
    """Fit and test as configured; returns every final metric as a float."""
    ensure_seed(cfg)
    run = lifecycle.run_dir(cfg)
    extra_callbacks: list[pl.Callback] = []
    continuing = False
    if cfg.get("ckpt_path"):
        cfg.ckpt_path = str(ckpt.find_checkpoint(cfg.ckpt_path, prefer="last"))  # a run dir: newest
        # fail now, clearly, rather than after set-up; mapped, so Lightning's resume is the one read
        checkpoint = ckpt.read_checkpoint(cfg.ckpt_path, mmap=True)
        continuing = log_start(cfg.ckpt_path, run)
        if continuing:  # its own checkpoint holds the weights, its config the tuned values
            with open_dict(cfg):
                cfg.init_from = cfg.tune = None
        else:  # a new run from that whole training state: something must be left to train
            loops = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
            done = int(loops.get("current", {}).get("processed", checkpoint.get("epoch", 0)))
            if (epochs := cfg.trainer.get("max_epochs")) is not None and 0 <= epochs <= done:
                raise UserError(
                    f"ckpt_path={cfg.ckpt_path} already trained {done} epochs and "
                    f"trainer.max_epochs={epochs}: nothing left to train; use init_from="
                    f"{cfg.ckpt_path} to start a new run from its weights (or raise "
                    "trainer.max_epochs, unless its LR schedule is sized for its steps: "
                    "OneCycle, warm-up cosine)"
                )
            extra_callbacks.append(LambdaCallback(on_train_start=forget_restored_best))
    if cfg.get("init_from") and cfg.get("ckpt_path"):
        raise UserError("init_from= and ckpt_path= both set: pass one (weights or a full state)")
    datamodule, model = build(cfg)
    # optimized_metric, before training (a module declaring no logged_metrics: after the run)
    name, declared = cfg.get("optimized_metric"), getattr(model, "logged_metrics", None)
    stages = ({"train", "val"} if cfg.get("train") else set()) | ({"test"} if cfg.test else set())
    available = sorted(m for m in declared or () if m.split("/", 1)[0] in stages)
    if name and declared and name not in available and not tunes_only(cfg):
        raise UserError(
            f"optimized_metric={name} is not a metric this run logs; "
            f"available: {', '.join(available) or 'none (train=false test=false)'}"
        )
    if cfg.get("tune"):  # (init_from's weights are tuned, not random ones)
        tuned = run_tuner(cfg, model, datamodule, lambda **kw: build_trainer(cfg, **kw))
        if tunes_only(cfg):
            return tuned
        pl.seed_everything(cfg.seed, workers=True)  # as if the tuned value had been given
        datamodule, model = build(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [
        *runs.instantiate_list(cfg.get("callbacks")),
        *(lifecycle.RunInfo(resolved), stop or lifecycle.StopOnSignal(run.path)),
        *(lifecycle.Randomness(cfg.seed), LambdaCallback(on_fit_start=write_provenance)),
        *extra_callbacks,
    ]
    loggers = runs.instantiate_list(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers)
    if trainer.is_global_zero:
        run.path.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(resolved, run.path / lifecycle.CONFIG_FILE)

    if cfg.train:
        # continuing in its own dir: the run's checkpoints are expected there
        with runs.quiet_lightning(*["Checkpoint directory .* is not empty"] * continuing):
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        if not trainer.callback_metrics:  # nothing trained (resumed after its last epoch, say
            trainer.validate(model, datamodule=datamodule, verbose=False)  # Ctrl-C in testing)
    metrics = runs.to_floats(trainer.callback_metrics)
    monitored = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    best = next((c.best_model_path for c in monitored), "")
    if cfg.test:
        if not best:
            log.warning("no best checkpoint (checkpointing off): testing the current weights")
        with runs.quiet_lightning():
            trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(runs.to_floats(trainer.callback_metrics))

    log_hparams_with_metrics(loggers, cfg, metrics, run_overrides())
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):  # WandbLogger leaves it open,
        import wandb  # and a sweep's next job in this process would log into it

        wandb.finish()
    if trainer.is_global_zero:  # where each final metric comes from
        best_file = {"checkpoint": os.path.relpath(best, run.path)} if best else {}
        last = {"from": "last epoch", "epoch": trainer.current_epoch - 1}
        tested = {"from": "best checkpoint", **best_file} if best else last
        best_epoch = {"from": "best epoch", **best_file}
        sources = {
            k: best_epoch if k == "val/acc_best" else tested if k.startswith("test/") else last
            for k in metrics
        }
        run.write_metrics({**metrics, "sources": sources})
    return metrics


@runs.report_errors
def run(cfg: DictConfig) -> float | None:
    """Hydra task: train, log the best val/acc and the run dir, return ``optimized_metric``; with
    ``resume=true`` a completed job is skipped and an unfinished (or requeued) one continues."""
    runs.apply_extras(cfg)
    if isinstance(cfg.get("resume"), str):  # resume=<run dir>: Hydra runs in that dir already
        cfg = lifecycle.resumed_config(cfg.resume, cfg, run_overrides())
    rerun_of = Path(cfg.rerun).resolve() if cfg.get("rerun") else None
    if rerun_of is not None:  # that run's saved, resolved config, in this new run dir
        if not (saved := lifecycle.RunDir(rerun_of).config()):
            raise UserError(f"rerun={rerun_of} is not a run dir (no readable config.yaml in it)")
        log.info(f"rerun={rerun_of}: its config, in a new run dir {cfg.paths.output_dir}")
        moved = runs.relocated(saved, cfg.paths.output_dir)  # its checkpoints, logs: here
        rerun = OmegaConf.create({**moved, "rerun": None, "resume": False, "ckpt_path": None})
        lifecycle.apply_overrides(rerun, cfg, run_overrides(), "rerun=")  # rerun=X seed=2
        cfg = rerun
    run_here = lifecycle.run_dir(cfg)
    status = run_here.status()
    if cfg.get("resume") is True and status.get("status") == "completed":
        log.info(f"{run_here.path} already completed: skipped (resume=true)")
        metrics = status.get("metrics", {})
    else:
        resuming = cfg.get("resume") is True or status.get("status") == lifecycle.REQUEUED
        if resuming and not cfg.get("ckpt_path"):  # stopped part-way: from its newest state
            cfg.ckpt_path = str(last) if (last := ckpt.latest_checkpoint(run_here.path)) else None
        tags = list(cfg.get("tags") or [])
        run_here.write_status("running", tags=tags)  # rank 0
        stop = lifecycle.StopOnSignal(run_here.path)
        with lifecycle.interruptible(cfg, stop):
            metrics = train(cfg, stop)
        run_here.write_status("completed", metrics=metrics, tags=tags)
    if "val/acc_best" in metrics:  # the test metrics: in the table trainer.test printed
        log.info(f"val/acc_best: {metrics['val/acc_best']:.4f}")
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
