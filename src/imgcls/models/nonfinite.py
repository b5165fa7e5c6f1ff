"""``model.nonfinite_loss``: stop (naming the step and the last good checkpoint) or skip a batch.

``stop`` costs no host sync per step: the losses since the last check stay on the device (one copy
per step) and are read every ``log_every_n_steps`` batches and at the epoch's last batch, before
validation and its checkpoints, so no checkpoint holds the weights a non-finite loss produced.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from imgcls.utils.errors import UserError


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The module's trainer, or None when a step is called directly (tests, notebooks)."""
    try:
        return module.trainer
    except RuntimeError:  # "not attached to a Trainer"
        return None


class NonfiniteLossWatch:
    """Mixed into the LightningModule: ``record_loss``, ``is_check_step``, ``stop_if_nonfinite``
    for ``stop``; ``all_finite`` and ``skip`` for ``skip``."""

    recent_losses: torch.Tensor | None = None
    recent_steps: list[int]
    skipped_batches: int = 0

    def record_loss(self, loss: torch.Tensor) -> None:
        """Keep the step's loss on the device for the next check (no host sync)."""
        trainer = attached_trainer(self)
        window = max(1, trainer.log_every_n_steps) if trainer is not None else 1
        recent = self.recent_losses
        if recent is None or recent.shape != (window,) or recent.device != loss.device:
            self.recent_losses = torch.zeros(window, device=loss.device)
        if len(self.recent_steps) == window:  # not checked (an odd loop): check now
            self.stop_if_nonfinite()
        self.recent_losses[len(self.recent_steps)] = loss.detach()
        self.recent_steps.append(self.global_step)

    def is_check_step(self, batch_idx: int) -> bool:
        """Every ``log_every_n_steps`` batches and at the epoch's last batch."""
        trainer = attached_trainer(self)
        if trainer is None:
            return True
        return (batch_idx + 1) % max(1, trainer.log_every_n_steps) == 0 or (
            batch_idx + 1 == trainer.num_training_batches
        )

    def stop_if_nonfinite(self) -> None:
        """Raise, naming the first step with a non-finite loss and the last good checkpoint.

        One host sync (a collective under DDP, so every process stops together).
        """
        steps, self.recent_steps = self.recent_steps, []
        first_bad = None
        if steps:
            losses = self.recent_losses[: len(steps)].cpu()
            bad = (~torch.isfinite(losses)).nonzero()
            first_bad = int(bad[0]) if len(bad) else None
        trainer = attached_trainer(self)
        anywhere = first_bad is not None
        if trainer is not None and trainer.world_size > 1:
            anywhere = trainer.strategy.reduce_boolean_decision(anywhere, all=False)
        if not anywhere:
            return
        where = (
            f"loss is {float(losses[first_bad])} at epoch {self.current_epoch}, "
            f"step {steps[first_bad]}"
            if first_bad is not None
            else f"loss is not finite in another process in epoch {self.current_epoch}"
        )
        callbacks = trainer.checkpoint_callbacks if trainer is not None else []
        monitored = [c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint)]
        saved = {c.monitor: c.best_model_path for c in monitored}  # not OnExceptionCheckpoint
        last_good = saved.get(None) or next((p for p in saved.values() if p), "")
        raise UserError(
            f"training stopped: {where}; last good checkpoint: {last_good or 'none yet'}; lower "
            "model.optimizer.lr, set trainer.gradient_clip_val=1.0, or model.nonfinite_loss=skip"
        )

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite in every process: skipping must be collective under DDP
        (Lightning does not support one process returning ``None`` alone)."""
        finite = bool(torch.isfinite(loss))
        trainer = attached_trainer(self)
        if trainer is not None and trainer.world_size > 1:
            return trainer.strategy.reduce_boolean_decision(finite, all=True)
        return finite

    def skip(self) -> None:
        self.skipped_batches += 1
        self.log("train/skipped_batches", float(self.skipped_batches), on_step=True)
        return None
