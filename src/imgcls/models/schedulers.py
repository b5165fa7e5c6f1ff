"""Learning-rate schedules that torch does not ship, as factories for ``model.scheduler``."""

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from imgcls.utils.errors import UserError


class WarmupCosineFactor:
    """The LR factor of a step (an object: the scheduler's state dict stores its numbers)."""

    def __init__(self, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> None:
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        peak = max(self.warmup_steps - 1, 0)
        progress = min(1.0, (step - peak) / max(1, self.total_steps - 1 - peak))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int | None = None,
    warmup_fraction: float | None = 0.05,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` x lr, per step over ``total_steps``."""
    fraction = warmup_fraction or 0.0
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise UserError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    warmup = round(fraction * total_steps) if warmup_steps is None else int(warmup_steps)
    if not 0 <= warmup < total_steps:
        raise UserError(
            f"the warmup ({warmup} steps) must be >= 0 and shorter than the run ({total_steps} "
            "optimizer steps); lower warmup_steps/warmup_fraction or train longer"
        )
    factor = WarmupCosineFactor(total_steps, warmup, min_lr_ratio)
    return LambdaLR(optimizer, lr_lambda=factor)
