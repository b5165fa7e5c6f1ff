"""Learning-rate schedules that torch does not ship, as factories for ``model.scheduler``.

The classifier fills ``total_steps`` (the run's optimizer steps) for any scheduler factory that
takes it and steps such schedules every optimizer step (``interval: step``).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from imgcls.utils.errors import UserError


class WarmupCosineFactor:
    """The LR multiplier of linear warmup then cosine decay, as a function of the step.

    Steps ``0 .. warmup_steps - 1`` ramp linearly from ``1 / warmup_steps`` up to 1 (no step is
    wasted at lr 0); from the peak, half a cosine decays to ``min_lr_ratio``, reached at the last
    step (``total_steps - 1``) and kept after it.
    A callable object (not a closure), so the scheduler's state dict stores it as plain numbers.
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> None:
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        peak = max(self.warmup_steps - 1, 0)
        progress = min(1.0, (step - peak) / max(1, self.total_steps - 1 - peak))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


def warmup_steps_of(
    total_steps: int, warmup_steps: int | None, warmup_fraction: float | None
) -> int:
    """Warmup length in steps: ``warmup_steps`` if given, else ``warmup_fraction`` of the run."""
    if warmup_steps is not None:
        if warmup_steps < 0:
            raise UserError(f"warmup_steps must be >= 0, got {warmup_steps}")
        steps = int(warmup_steps)
    else:
        fraction = 0.0 if warmup_fraction is None else float(warmup_fraction)
        if not 0.0 <= fraction < 1.0:
            raise UserError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        steps = round(fraction * total_steps)
    if steps >= total_steps:
        raise UserError(
            f"the warmup ({steps} steps) must be shorter than the run ({total_steps} optimizer "
            "steps); lower warmup_steps/warmup_fraction or train longer"
        )
    return steps


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int | None = None,
    warmup_fraction: float | None = 0.05,
    min_lr_ratio: float = 0.0,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` x the optimizer's lr, per step.

    ``total_steps`` is filled by the classifier (``trainer.estimated_stepping_batches``);
    ``warmup_steps`` wins over ``warmup_fraction`` when both are set.
    """
    if total_steps < 1:
        raise UserError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise UserError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    warmup = warmup_steps_of(total_steps, warmup_steps, warmup_fraction)
    factor = WarmupCosineFactor(total_steps, warmup, min_lr_ratio)
    return LambdaLR(optimizer, lr_lambda=factor, last_epoch=last_epoch)
