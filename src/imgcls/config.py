"""The Hydra configs' dir, imgcls's resolvers (registered on ``import imgcls``), ``compose``."""

import netrc
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from imgcls.utils.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = Path(os.environ.get("IMGCLS_CONFIG_DIR", REPO_ROOT / "configs"))

_datamodules: dict[str, Any] = {}


def datamodule_attribute(name: str, *, _root_: DictConfig) -> Any:
    """``${datamodule:num_classes}``: a shape fact of the configured datamodule (built once)."""
    from hydra.utils import instantiate

    key = OmegaConf.to_yaml(_root_.data, resolve=True)
    if key not in _datamodules:
        _datamodules[key] = instantiate(_root_.data)
    return getattr(_datamodules[key], name)


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


def resumed_dir(resume: Any, new_dir: str) -> str:
    """``hydra.run.dir``: the run dir ``resume=<run dir>`` continues, else a new one."""
    if isinstance(resume, str) and resume.lower() not in ("true", "false", "null", "none", ""):
        return str(Path(resume).expanduser().resolve())
    return new_dir


def wandb_offline() -> bool:
    """``${wandb_offline:}``: offline unless ``WANDB_MODE`` or an API key (env, ~/.netrc) is set."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return False
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is None
    except (FileNotFoundError, netrc.NetrcParseError):
        return True


RESOLVERS: dict[str, Callable[..., Any]] = {
    "run_id": lambda: secrets.token_hex(3),  # run dirs of the same second never collide
    "resumed_dir": resumed_dir,
    # resume=<run dir>: Hydra keeps that run's .hydra/ (its overrides) instead of writing ours
    "hydra_subdir": lambda resume: ".hydra" if resumed_dir(resume, "") == "" else None,
    "datamodule": datamodule_attribute,
    "wandb_offline": wandb_offline,
    "slurm_tasks_per_node": slurm_tasks_per_node,
    "slurm_gpus_per_node": slurm_gpus_per_node,
}


def setup_config_environment() -> None:
    """Register the resolvers and default ``IMGCLS_ROOT`` to this clone (idempotent)."""
    os.environ.setdefault("IMGCLS_ROOT", str(REPO_ROOT))
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=name == "run_id")


def compose(
    overrides: Sequence[str] = (), config_name: str = "train", output_dir: str | Path | None = None
) -> DictConfig:
    """The config ``python <config_name>.py <overrides>`` runs (nothing is created)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir or cfg.hydra.run.dir)
        del cfg["hydra"]
    return cfg


setup_config_environment()
