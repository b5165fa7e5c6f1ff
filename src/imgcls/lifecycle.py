"""A run's life cycle while it trains (the run dir's files are ``imgcls.run_dir``'s): the
Trainer (``build_trainer``), what checkpoints are and carry, reuse (``init_from``, ``ckpt_path``),
randomness per rank and across resumes, Ctrl-C/SIGTERM, SLURM requeues and the run's status."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import (
    ModelCheckpoint,
    ModelSummary,
    OnExceptionCheckpoint,
    ProgressBar,
)
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from imgcls.checkpoints import find_checkpoint
from imgcls.run_dir import CHECKPOINT_DIR, LAST_CHECKPOINT_NAME, REQUEUED, RunDir
from imgcls.utils.checkpoint import RUN_INFO_KEY, read_checkpoint
from imgcls.utils.devices import apply_gpus, apply_matmul_precision
from imgcls.utils.errors import UserError
from imgcls.utils.runs import explicit_overrides, is_multirun, run_dir

log = logging.getLogger(__name__)

#: logged when the training loop starts: from here on a signal saves a resumable checkpoint
TRAINING_STARTED = "training started: Ctrl-C or SIGTERM saves a resumable checkpoint"
#: ``trainer.enable_progress_bar=false`` leaves out the progress bar callback instead of failing
SWITCHED_CALLBACKS = {"enable_progress_bar": ProgressBar, "enable_model_summary": ModelSummary}


def build_trainer(cfg: DictConfig, callbacks: Sequence[Any] = (), **kwargs: Any) -> pl.Trainer:
    """The Lightning Trainer of ``cfg.trainer``; ``trainer.gpus`` (0 = CPU, N GPUs, -1 = all)
    becomes accelerator/devices, after ``float32_matmul_precision`` is applied."""
    apply_matmul_precision(cfg.get("float32_matmul_precision"))
    trainer_cfg = OmegaConf.create(OmegaConf.to_container(cfg.trainer, resolve=True))
    gpus = trainer_cfg.pop("gpus", None)
    apply_gpus(trainer_cfg, gpus, explicit_overrides("trainer"))
    switched_off = tuple(t for k, t in SWITCHED_CALLBACKS.items() if trainer_cfg.get(k) is False)
    kept = [c for c in callbacks if not isinstance(c, switched_off)]
    if SLURMEnvironment.detect() and "plugins" not in kwargs:
        # Lightning's own requeue: SIGUSR1 saves hpc_ckpt_<n>.ckpt and calls scontrol requeue
        plugins = list(instantiate(trainer_cfg.pop("plugins", None) or []))
        kwargs["plugins"] = [*plugins, SLURMEnvironment(auto_requeue=True)]
    return instantiate(trainer_cfg, callbacks=kept, **kwargs)


def init_weights(model: Any, source: str | Path, reset_head: bool = False) -> None:
    """``init_from=<ckpt or run dir>``: the network's weights only (no optimizer, schedule or
    epoch). Tensors whose shape differs (a head for another number of classes) are refused, or
    left freshly initialised with ``init_from_reset_head=true``."""
    source = find_checkpoint(Path(source)) if Path(source).is_dir() else source
    state = read_checkpoint(source)["state_dict"]
    weights = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    own = model.net.state_dict()
    if missing := sorted(own.keys() - weights.keys()) + sorted(weights.keys() - own.keys()):
        raise UserError(
            f"init_from={source} holds another network (e.g. {missing[0]} is only in one of "
            "them); start from a checkpoint of the same model=..."
        )
    differ = [k for k, v in weights.items() if v.shape != own[k].shape]
    if differ and not reset_head:
        name = differ[0]
        raise UserError(
            f"init_from={source}: {name} has shape {tuple(weights[name].shape)} there and "
            f"{tuple(own[name].shape)} here (another number of classes?); add "
            "init_from_reset_head=true to start those layers afresh"
        )
    for name in differ:
        log.info(f"init_from: {name} re-initialised (shape {tuple(own[name].shape)})")
        weights[name] = own[name]
    model.net.load_state_dict(weights)
    log.info(f"init_from={source}: weights loaded; optimizer, schedule and epochs are this run's")


def best_checkpoint(trainer: pl.Trainer) -> str:
    """The best model checkpoint of this fit (a ``ModelCheckpoint`` with a ``monitor``), or ""."""
    monitored = [
        c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor
    ]
    return monitored[0].best_model_path if monitored else ""


class LastCheckpoint(ModelCheckpoint):
    """``<run dir>/checkpoints/last.ckpt`` after every epoch, whatever val/acc did (Lightning's
    ``save_last`` writes it only when a top-k checkpoint is saved): what ``resume=`` reads."""

    def __init__(self, run_dir: str | Path, every_n_epochs: int = 1) -> None:
        super().__init__(
            dirpath=Path(run_dir) / CHECKPOINT_DIR,
            filename=LAST_CHECKPOINT_NAME,
            save_top_k=1,
            every_n_epochs=every_n_epochs,
            enable_version_counter=False,
        )


class RunInfo(pl.Callback):
    """Writes the resolved training config and the class names into every checkpoint (under
    ``RUN_INFO_KEY``): what ``eval.py``, ``predict.py`` and ``export.py`` rebuild the run from."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        names = getattr(trainer.datamodule, "class_names", None) or []
        checkpoint[RUN_INFO_KEY] = {"config": self.config, "class_names": [str(c) for c in names]}


class Randomness(pl.Callback):
    """Under DDP each process reseeds with ``seed + rank`` after the data split (the same on every
    rank): ranks draw different augmentation, mixup, dropout. The torch, numpy and Python RNG
    states go into each checkpoint; a resumed run continues the random stream it stopped in."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.restored: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            pl.seed_everything(self.seed + trainer.global_rank, workers=True, verbose=False)

    def state_dict(self) -> dict[str, Any]:
        _, keys, position, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "numpy": (torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state, self.restored = self.restored, None
        if state is None:
            return
        if trainer.world_size > 1:  # rank 0's state was saved: every rank continues apart
            step = self.seed + trainer.global_rank + trainer.world_size * trainer.global_step
            pl.seed_everything(step, workers=True, verbose=False)
            return
        torch.set_rng_state(state["torch"])
        keys, position, has_gauss, gauss = state["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))


class StopOnSignal(OnExceptionCheckpoint):
    """Ctrl-C or SIGTERM: the current batch finishes, ``last.ckpt`` holds the state, the run stops.

    SIGTERM is Lightning's: it raises ``SIGTERMException`` after the batch (in every DDP process)
    and ``on_exception`` saves. The first Ctrl-C is passed on as SIGTERM; a second stops at once.
    While testing nothing is saved (the module holds the best weights, not the last).
    """

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(Path(run_dir) / CHECKPOINT_DIR, LAST_CHECKPOINT_NAME)
        self.signal_name: str | None = None
        self.where = ""
        self.saved: Path | None = None
        self._previous: Any = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signal_name = "SIGINT"
        log.warning("SIGINT received: stopping after this batch (Ctrl-C again: at once)")
        signal.raise_signal(signal.SIGTERM)  # Lightning's handler: stop after this batch

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def teardown(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        # OnExceptionCheckpoint deletes its file here; last.ckpt is the run's, it stays
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log.info(TRAINING_STARTED)

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        self.teardown(trainer)
        if not isinstance(exception, SIGTERMException):
            return
        self.signal_name = self.signal_name or "SIGTERM"
        if trainer.state.fn != TrainerFn.FITTING:
            self.where = "while testing"
            return
        # the non-finite loss watch reads its window now: never save poisoned weights
        stop_if_nonfinite = getattr(pl_module, "stop_if_nonfinite", None)
        if stop_if_nonfinite is not None:
            stop_if_nonfinite()
        super().on_exception(trainer)
        self.saved = Path(self.ckpt_path)
        self.where = f"at epoch {trainer.current_epoch}, step {trainer.global_step}"


class RequeueStatus(pl.Callback):
    """Records ``requeued`` in ``status.json`` once Lightning's SLURM requeue handler has run
    (it saves ``hpc_ckpt_<n>.ckpt`` in the run dir and calls ``scontrol requeue``)."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lightning_handler = signal.getsignal(signal.SIGUSR1)  # build_trainer's SLURMEnvironment
        if not (SLURMEnvironment.detect() and callable(lightning_handler)):
            return

        def save_requeue_and_record(signum: int, frame: Any) -> None:
            lightning_handler(signum, frame)
            checkpoint = self.run.latest_checkpoint()  # the hpc_ckpt_<n>.ckpt it just saved
            if checkpoint is None or not trainer.is_global_zero:
                return
            job = os.environ.get("SLURM_JOB_ID")
            self.run.write_status(
                REQUEUED, checkpoint=str(checkpoint), signal="SIGUSR1", slurm_job_id=job
            )
            log.info(f"requeued: the job resumes from {checkpoint}")

        signal.signal(signal.SIGUSR1, save_requeue_and_record)


def resume_command(run_dir: Path) -> str:
    """The command that continues this run (or, in a sweep, every unfinished job)."""
    script = shlex.quote(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "train.py"
    if not is_multirun():
        return f"python {script} resume={shlex.quote(str(run_dir))}"
    from hydra.core.hydra_config import HydraConfig

    sweep_dir = HydraConfig.get().sweep.dir
    kept = [a for a in sys.argv[1:] if not a.startswith(("hydra.sweep.dir=", "resume="))]
    args = " ".join(shlex.quote(a) for a in kept if a not in ("-m", "--multirun"))
    return f"python {script} -m {args} resume=true hydra.sweep.dir={shlex.quote(str(sweep_dir))}"


@contextlib.contextmanager
def interruptible(cfg: Any, stop: StopOnSignal | None = None) -> Iterator[None]:
    """A signalled stop becomes ``status.json: interrupted`` (or stays ``requeued``), one line
    with the command that continues the run, and exit 130 (SIGINT) or 143 (SIGTERM).

    A plain ``KeyboardInterrupt`` (while data loads, or a second Ctrl-C) marks the run
    ``interrupted`` without a checkpoint. Only the first process of a DDP run writes the status.
    """
    writes = rank_zero_only.rank == 0
    run = run_dir(cfg)
    try:
        yield
    except KeyboardInterrupt:
        if writes:
            run.write_status("interrupted", signal="SIGINT", checkpoint=None)
        raise
    except SIGTERMException:
        name = (stop.signal_name if stop else None) or "SIGTERM"
        where = stop.where if stop else ""
        saved = (stop.saved if stop else None) or run.latest_checkpoint()
        checkpoint = str(saved) if saved else None
        exit_code = 128 + signal.Signals[name].value
        status = run.status()
        if status.get("status") == REQUEUED:
            # SLURM stops a job it requeues: the job comes back by itself and continues
            checkpoint = checkpoint or status.get("checkpoint")
            details = {k: status[k] for k in ("signal", "slurm_job_id") if k in status}
            if writes:
                run.write_status(REQUEUED, checkpoint=checkpoint, **details)
            print(f"requeued by SLURM {where}: continues from {checkpoint}", file=sys.stderr)
            raise SystemExit(exit_code) from None
        command = resume_command(run.path)
        if writes:
            run.write_status("interrupted", signal=name, checkpoint=checkpoint, resume=command)
        saved_text = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint yet"
        print(
            f"interrupted by {name} {where}: {saved_text}; continue with: {command}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(exit_code) from None
