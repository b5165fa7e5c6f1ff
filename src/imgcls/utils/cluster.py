"""Clusters, before any training (docs/workflow.md; nothing heavy imported: the CLI and the config
resolvers use it before torch loads; requeueing: ``imgcls.lifecycle``).

- ``hydra/launcher=slurm`` is sized from ``trainer.num_nodes``, ``trainer.devices`` and
  ``trainer.accelerator`` (or ``trainer.gpus``) through the resolvers here;
- processes that SLURM (``srun``) or ``torchrun`` start one per device each run ``train.py`` and
  must be told one shared run dir outside the submitit launcher.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, ListConfig, OmegaConf

from imgcls.utils.errors import UserError


def slurm_tasks_per_node(trainer: DictConfig, gpus: int | None = None) -> int:
    """``${slurm_tasks_per_node:${trainer},...}``: one SLURM task (one process) per device."""
    gpus = gpus if gpus is not None else trainer.get("gpus")
    devices = trainer.get("devices") if gpus is None else (gpus or 1)  # 0 GPUs: one CPU process
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
    gpus = gpus if gpus is not None else trainer.get("gpus")
    on_cpu = gpus == 0 if gpus is not None else str(trainer.get("accelerator")) == "cpu"
    return None if on_cpu else slurm_tasks_per_node(trainer, gpus)


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
            err: BaseException | None = raised  # the UserError behind OmegaConf's wrappers
            while err is not None and not isinstance(err, UserError):
                err = err.__cause__ or err.__context__
            if err is None:
                raise
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None


def external_world_size() -> int:
    """How many processes SLURM (``srun``) or ``torchrun`` started for this run (1: only this)."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return int(os.environ.get("WORLD_SIZE", "1"))
    # as Lightning's SLURMEnvironment.detect(): an interactive allocation is not a SLURM launch
    interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
    return int(os.environ.get("SLURM_NTASKS", "1")) if not interactive else 1


def check_shared_run_dir(args: Sequence[str]) -> None:
    """Each process SLURM or torchrun starts composes its own config, and a run dir named after
    the time and a random id would differ between them: a single run (not ``-m``, whose jobs
    share their launcher's dir) needs ``hydra.run.dir`` given to every process."""
    world = external_world_size()
    if world <= 1 or "-m" in args or "--multirun" in args:
        return
    if any(arg.lstrip("+").startswith("hydra.run.dir=") for arg in args):
        return
    raise UserError(
        f"this is one of {world} processes started by SLURM/torchrun, and each would write its "
        "own run dir: pass the same hydra.run.dir=<shared dir> to every process "
        "(or submit with python train.py -m hydra/launcher=slurm)"
    )
