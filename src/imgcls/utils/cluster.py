"""Clusters: SLURM jobs sized from the trainer, processes started by SLURM/torchrun, requeueing.

- ``hydra/launcher=slurm`` reads its ``nodes``, ``tasks_per_node`` and ``gpus_per_node`` from
  ``trainer.num_nodes``, ``trainer.devices`` and ``trainer.accelerator`` through the resolvers here.
- Processes that SLURM (``srun``) or ``torchrun`` start one per device each run ``train.py`` on
  their own; outside the submitit launcher they must be told one shared run dir.
- Under SLURM, Lightning's auto-requeue (``SLURMEnvironment(auto_requeue=True,
  requeue_signal=SIGUSR1)``, Lightning's default there) saves ``hpc_ckpt_<n>.ckpt`` in the run dir
  and calls ``scontrol requeue``; :class:`RequeueStatus` records that in ``status.json``.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist
from hydra.experimental.callback import Callback as HydraCallback
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, ListConfig, OmegaConf

from imgcls.utils.errors import UserError
from imgcls.utils.runs import user_facing, write_status

log = logging.getLogger(__name__)


def _accelerator_and_devices(trainer: DictConfig) -> tuple[str, Any]:
    """The trainer's accelerator and devices, ``trainer.gpus`` mapped as imgcls maps it."""
    gpus = trainer.get("gpus")
    if gpus is not None:
        return ("cpu", 1) if gpus == 0 else ("gpu", gpus)
    return str(trainer.get("accelerator")), trainer.get("devices")


def slurm_tasks_per_node(trainer: DictConfig) -> int:
    """``${slurm_tasks_per_node:${trainer}}``: one SLURM task (one process) per device."""
    _, devices = _accelerator_and_devices(trainer)
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices)
    if str(devices).isdigit() and int(devices) >= 1:
        return int(devices)
    raise UserError(
        f"hydra/launcher=slurm sizes the job from the devices per node, got trainer.devices="
        f"{devices}; set trainer.devices=N (GPUs or processes per node)"
    )


def slurm_gpus_per_node(trainer: DictConfig) -> int | None:
    """``${slurm_gpus_per_node:${trainer}}``: one GPU per task, none when training on the CPU."""
    accelerator, _ = _accelerator_and_devices(trainer)
    return None if accelerator == "cpu" else slurm_tasks_per_node(trainer)


RESOLVERS = {
    "slurm_tasks_per_node": slurm_tasks_per_node,
    "slurm_gpus_per_node": slurm_gpus_per_node,
}


class LauncherCheck(HydraCallback):
    """Hydra callback: a launcher config that cannot be resolved (a SLURM job it cannot size)
    fails with one line before anything is submitted."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            OmegaConf.to_container(config.hydra.launcher, resolve=True)
        except Exception as raised:
            err = user_facing(raised)
            if not isinstance(err, UserError):
                raise
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None


def external_world_size() -> int:
    """How many processes SLURM (``srun``) or ``torchrun`` started for this run (1: only this)."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return int(os.environ.get("WORLD_SIZE", "1"))
    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_NTASKS", "1"))
    return 1


def check_shared_run_dir(args: Sequence[str]) -> None:
    """Processes started one per device by SLURM or torchrun must agree on one run dir.

    Each process composes its own config, and a run dir named after the time and a random id
    would differ between them, so a single run (not ``-m``) needs ``hydra.run.dir`` given to every
    process. Jobs of ``-m hydra/launcher=slurm`` share the dir their launcher chose.
    """
    world = external_world_size()
    if world <= 1 or "-m" in args or "--multirun" in args:
        return
    if any(a.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for a in args):
        return
    raise UserError(
        f"this is one of {world} processes started by SLURM/torchrun, and each would write its "
        "own run dir: pass the same hydra.run.dir=<shared dir> to every process "
        "(or submit with python train.py -m hydra/launcher=slurm)"
    )


#: what gloo and NCCL report when another process of the run is gone or stopped answering
_LOST_PROCESS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "Timed out waiting",
    "collective operation timeout",
    "communicator was aborted",
)


def lost_process_error(err: BaseException) -> UserError | None:
    """In a distributed run, the error a process gets when another one died or hung, as one line.

    A killed process closes its connections, so the others fail at their next collective; a node
    that vanished or hangs is noticed after the strategy's ``timeout`` (``trainer=ddp``: 30 min).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    text = str(err)
    from_backend = isinstance(err, dist.DistError) or "gloo" in text or "NCCL" in text
    if not (from_backend and any(s in text for s in _LOST_PROCESS)):
        return None
    detail = re.sub(r"^\[[^\]]*\]\s*", "", text.strip()).split(". ")[0]  # gloo's source prefix
    return UserError(
        f"another process of this {dist.get_world_size()}-process run is gone (its node died, "
        f"was killed or lost the network), so rank {dist.get_rank()} stops too ({detail}); "
        "the run dir keeps its last checkpoint: resume the run (docs/workflow.md, Clusters)"
    )


class RequeueStatus(pl.Callback):
    """Records ``requeued`` in ``status.json`` when Lightning's SLURM auto-requeue has fired.

    Lightning's handler for the requeue signal saves ``hpc_ckpt_<n>.ckpt`` in the run dir and
    calls ``scontrol requeue``; this wraps it (once Lightning installed it, at the start of
    training) and then writes the status, naming the checkpoint the requeued job resumes from.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        environment = trainer._accelerator_connector.cluster_environment
        if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue):
            return
        requeue_signal = environment.requeue_signal
        lightning_handler = signal.getsignal(requeue_signal)
        if not callable(lightning_handler):
            return

        def save_requeue_and_record(signum: int, frame: Any) -> None:
            lightning_handler(signum, frame)
            checkpoint = trainer._checkpoint_connector._hpc_resume_path
            if checkpoint is None:
                return
            write_status(
                self.run_dir,
                "requeued",
                checkpoint=str(checkpoint),
                signal=signal.Signals(signum).name,
                slurm_job_id=os.environ.get("SLURM_JOB_ID"),
            )
            log.info(f"requeued: the job resumes from {checkpoint}")

        signal.signal(requeue_signal, save_requeue_and_record)
