"""Clusters, before any training: SLURM jobs sized from the trainer, processes SLURM/torchrun start.

- ``hydra/launcher=slurm`` reads its ``nodes``, ``tasks_per_node`` and ``gpus_per_node`` from
  ``trainer.num_nodes``, ``trainer.devices`` and ``trainer.accelerator`` through the resolvers here.
- Processes that SLURM (``srun``) or ``torchrun`` start one per device each run ``train.py`` on
  their own; outside the submitit launcher they must be told one shared run dir.

Nothing heavy is imported here (the CLI and the config resolvers use it before torch loads);
what happens during training (requeueing) is in ``imgcls.lifecycle``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, ListConfig, OmegaConf

from imgcls.run_dir import override_value
from imgcls.utils.errors import UserError


def _accelerator_and_devices(trainer: DictConfig, gpus: int | None) -> tuple[str, Any]:
    """The trainer's accelerator and devices, with ``trainer.gpus`` (N GPUs, 0 = CPU) applied."""
    gpus = gpus if gpus is not None else trainer.get("gpus")
    if gpus is not None:
        return ("cpu", 1) if gpus == 0 else ("gpu", gpus)
    return str(trainer.get("accelerator")), trainer.get("devices")


def slurm_tasks_per_node(trainer: DictConfig, gpus: int | None = None) -> int:
    """``${slurm_tasks_per_node:${trainer},...}``: one SLURM task (one process) per device."""
    _, devices = _accelerator_and_devices(trainer, gpus)
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices)
    if str(devices).isdigit() and int(devices) >= 1:
        return int(devices)
    raise UserError(
        f"hydra/launcher=slurm sizes the job from the devices per node, got trainer.devices="
        f"{devices}; set trainer.devices=N (GPUs or processes per node)"
    )


def slurm_gpus_per_node(trainer: DictConfig, gpus: int | None = None) -> int | None:
    """``${slurm_gpus_per_node:${trainer},...}``: one GPU per task, none on the CPU."""
    accelerator, _ = _accelerator_and_devices(trainer, gpus)
    return None if accelerator == "cpu" else slurm_tasks_per_node(trainer, gpus)


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
            from imgcls.utils.runs import user_facing  # the UserError behind OmegaConf's wrapper

            err = user_facing(raised)
            if not isinstance(err, UserError):
                raise
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None


def external_world_size() -> int:
    """How many processes SLURM (``srun``) or ``torchrun`` started for this run (1: only this)."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return int(os.environ.get("WORLD_SIZE", "1"))
    # as Lightning's SLURMEnvironment.detect(): an interactive allocation (job name bash or
    # interactive) is not a SLURM launch
    if "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in (
        "bash",
        "interactive",
    ):
        return int(os.environ["SLURM_NTASKS"])
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
    if override_value(args, "hydra.run.dir") is not None:
        return
    raise UserError(
        f"this is one of {world} processes started by SLURM/torchrun, and each would write its "
        "own run dir: pass the same hydra.run.dir=<shared dir> to every process "
        "(or submit with python train.py -m hydra/launcher=slurm)"
    )
