"""EMA of the weights, through Lightning's ``WeightAveraging``, with a warm-up."""

import functools
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn


@torch.no_grad()
def ema_update(
    average: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor, decay: float
) -> torch.Tensor:
    """One EMA step whose decay grows with the updates: ``min(decay, (1 + n) / (10 + n))``."""
    step_decay = ((1 + num_averaged) / (10 + num_averaged)).clamp(max=decay)
    return average + (current - average) * (1 - step_decay)


class EMAWeights(WeightAveraging):
    """EMA whose decay warms up (Lightning's ``EMAWeightAveraging`` has a fixed one)."""

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
    ) -> None:
        super().__init__(avg_fn=functools.partial(ema_update, decay=float(decay)))
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step or 0

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return (
            step_idx is not None
            and step_idx >= self.update_starting_at_step
            and step_idx % self.update_every_n_steps == 0
        )

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
