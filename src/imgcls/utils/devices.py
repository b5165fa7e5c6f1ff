"""``trainer.gpus=N`` mapped onto ``accelerator``/``devices``; ``float32_matmul_precision``."""

import torch
from omegaconf import DictConfig

from imgcls.utils.errors import UserError


def apply_gpus(trainer_cfg: DictConfig, gpus: int | None, devices_given: bool = False) -> None:
    """Set ``accelerator``/``devices`` in place: ``gpus`` 0 = the CPU, N = N GPUs, -1 = all."""
    if gpus is None:
        if str(trainer_cfg.get("accelerator")) in ("gpu", "cuda") and not torch.cuda.is_available():
            raise UserError(
                f"trainer.accelerator={trainer_cfg.accelerator} but no GPU is available on this "
                "machine; use trainer.accelerator=cpu (or auto)"
            )
        return
    if not isinstance(gpus, int) or gpus < -1:
        raise UserError(
            f"trainer.gpus must be an integer >= -1 (0 = CPU, -1 = all GPUs), got {gpus!r}"
        )
    accelerator, devices = ("cpu", 1) if gpus == 0 else ("gpu", gpus)
    if devices_given and trainer_cfg.get("devices") != devices:
        raise UserError(
            f"trainer.gpus={gpus} conflicts with trainer.devices={trainer_cfg.get('devices')}; "
            "set only one of them"
        )
    if gpus and not torch.cuda.is_available():
        raise UserError(
            f"trainer.gpus={gpus} asks for a GPU but none is available on this machine; "
            "use trainer.gpus=0 (or leave it out) to train on the CPU"
        )
    if gpus > torch.cuda.device_count():
        raise UserError(
            f"trainer.gpus={gpus} but this machine has {torch.cuda.device_count()} GPU(s); "
            "ask for fewer or use trainer.gpus=-1 for all"
        )
    trainer_cfg.accelerator, trainer_cfg.devices = accelerator, devices


def apply_matmul_precision(precision: str | None = "auto") -> None:
    """Before any model runs; ``auto`` (or None): ``high`` on a GPU (TF32), else the default."""
    if precision not in (None, "auto", "highest", "high", "medium"):
        raise UserError(
            f"float32_matmul_precision must be auto, highest, high, medium; got {precision!r}"
        )
    if precision not in (None, "auto"):
        torch.set_float32_matmul_precision(precision)
    elif torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
