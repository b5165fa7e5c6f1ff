"""``hydra/launcher=slurm`` sizes and one shared run dir for SLURM/torchrun (no torch here)."""

import os
from collections.abc import Sequence

from omegaconf import DictConfig, ListConfig

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


def unshared_run_dir(args: Sequence[str]) -> str | None:
    """Processes SLURM or torchrun start each compose a run dir: they need one ``hydra.run.dir``."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    else:  # as Lightning's SLURMEnvironment.detect(): an interactive allocation is no launch
        interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
        world = 1 if interactive else int(os.environ.get("SLURM_NTASKS", "1"))
    shared = any(arg.lstrip("+").startswith("hydra.run.dir=") for arg in args)
    if world <= 1 or shared or "-m" in args or "--multirun" in args:
        return None
    return (
        f"this is one of {world} processes started by SLURM/torchrun, and each would write its "
        "own run dir: pass the same hydra.run.dir=<shared dir> to every process "
        "(or submit with python train.py -m hydra/launcher=slurm)"
    )
