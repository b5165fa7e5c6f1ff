"""``trainer.gpus=N`` as users type it, mapped onto Lightning 2's ``accelerator``/``devices``
(``imgcls.lifecycle.build_trainer`` pops ``gpus`` from the trainer config and calls this)."""

from __future__ import annotations

from omegaconf import DictConfig

from imgcls.utils.errors import UserError

GPUS_ARGUMENT = "trainer.gpus"


def gpus_to_devices(gpus: int) -> tuple[str, int]:
    """``gpus`` as Lightning's (accelerator, devices): 0 = the CPU, N = N GPUs, -1 = all GPUs."""
    return ("cpu", 1) if gpus == 0 else ("gpu", gpus)


def apply_gpus(
    trainer_cfg: DictConfig, gpus: int | None, explicit_keys: set[str] = frozenset()
) -> None:
    """Set ``accelerator``/``devices`` of a trainer config (in place) from ``gpus``.

    ``explicit_keys`` are the trainer keys the user set on the command line: an explicit
    ``devices`` that disagrees with ``gpus`` is rejected instead of silently overridden.
    """
    if gpus is None:
        _check_accelerator_available(trainer_cfg)
        return
    if not isinstance(gpus, int) or gpus < -1:
        raise UserError(
            f"{GPUS_ARGUMENT} must be an integer >= -1 (0 = CPU, -1 = all GPUs), got {gpus!r}"
        )
    accelerator, devices = gpus_to_devices(gpus)
    if "devices" in explicit_keys and trainer_cfg.get("devices") != devices:
        raise UserError(
            f"{GPUS_ARGUMENT}={gpus} conflicts with trainer.devices={trainer_cfg.get('devices')}; "
            "set only one of them"
        )
    import torch

    if accelerator == "gpu" and not torch.cuda.is_available():
        raise UserError(
            f"{GPUS_ARGUMENT}={gpus} asks for a GPU but none is available on this machine; "
            f"use {GPUS_ARGUMENT}=0 (or leave it out) to train on the CPU"
        )
    if gpus > torch.cuda.device_count():
        raise UserError(
            f"{GPUS_ARGUMENT}={gpus} but this machine has {torch.cuda.device_count()} GPU(s); "
            f"ask for fewer or use {GPUS_ARGUMENT}=-1 for all"
        )
    trainer_cfg.accelerator, trainer_cfg.devices = accelerator, devices


def _check_accelerator_available(trainer_cfg: DictConfig) -> None:
    import torch

    if str(trainer_cfg.get("accelerator")) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={trainer_cfg.accelerator} but no GPU is available on this "
            "machine; use trainer.accelerator=cpu (or auto)"
        )


MATMUL_PRECISIONS = ("highest", "high", "medium")


def apply_matmul_precision(precision: str | None = "auto") -> str:
    """``float32_matmul_precision``: ``torch.set_float32_matmul_precision``, before any model runs.

    ``auto`` (or ``None``) is ``high`` when a GPU is available (TF32 tensor cores for float32
    matrix products and convolutions; bf16/fp16 autocast is unaffected) and leaves the CPU's
    ``highest`` alone. Returns the precision now in effect.
    """
    import torch

    if precision in (None, "auto"):
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")
        return torch.get_float32_matmul_precision()
    if precision not in MATMUL_PRECISIONS:
        raise UserError(
            f"float32_matmul_precision must be auto, {', '.join(MATMUL_PRECISIONS)}; "
            f"got {precision!r}"
        )
    torch.set_float32_matmul_precision(precision)
    return precision
