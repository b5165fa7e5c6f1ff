"""EMA of the weights, through Lightning's ``WeightAveraging``, with a warm-up."""

from __future__ import annotations

import functools
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn

from imgcls.utils.errors import UserError


@torch.no_grad()
def ema_update(
    average: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor, decay: float
) -> torch.Tensor:
    """One EMA step whose decay grows with the updates: ``min(decay, (1 + n) / (10 + n))``."""
    step_decay = ((1 + num_averaged) / (10 + num_averaged)).clamp(max=decay)
    return average + (current - average) * (1 - step_decay)


class EMAWeights(WeightAveraging):
    """Exponential moving average of the weights, updated every ``update_every_n_steps`` steps.

    Custom because Lightning's ``EMAWeightAveraging`` has a fixed decay: with 0.999 a run of a few
    hundred steps validates and tests mostly its initial weights (issue 20 item 10,
    tests/test_regularisation.py). Here the n-th update uses ``min(decay, (1 + n) / (10 + n))``
    (TensorFlow's ``ExponentialMovingAverage(num_updates=)`` rule), so the average follows a short
    run and settles on ``decay`` after ~10 / (1 - decay) updates.

    Testing a checkpoint tests its averaged weights: Lightning's callback reloads the raw weights
    (``current_model_state``) whenever a checkpoint is restored, so ``trainer.test(ckpt_path=best)``
    would test those while eval.py and predict.py read the averaged ``state_dict``; only a resumed
    fit restores the raw weights and the average here.
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        device: str | None = None,
        use_buffers: bool = True,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise UserError(f"callbacks.ema.decay must be in [0, 1], got {decay}")
        if update_every_n_steps < 1:
            raise UserError(
                f"callbacks.ema.update_every_n_steps must be >= 1, got {update_every_n_steps}"
            )
        avg_fn = functools.partial(ema_update, decay=float(decay))
        super().__init__(device=device, use_buffers=use_buffers, avg_fn=avg_fn)
        self.update_every_n_steps = int(update_every_n_steps)
        self.update_starting_at_step = int(update_starting_at_step or 0)

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
