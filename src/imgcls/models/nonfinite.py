"""``model.nonfinite_loss``: stop or skip; ``stop`` checks every ``log_every_n_steps`` batches."""

import pytorch_lightning as pl
import torch

from imgcls.utils.errors import UserError


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The module's Trainer; None for a step called directly (tests, notebooks)."""
    try:
        return module.trainer
    except RuntimeError:  # Lightning: "... is not attached to a `Trainer`"
        return None


class NonfiniteLossWatch:
    """Mixed into the LightningModule, which keeps ``recent_losses``: (step, loss) pairs."""

    recent_losses: list[tuple[int, torch.Tensor]]
    skipped_batches: int = 0

    def skip_nonfinite(self, loss: torch.Tensor, batch_idx: int) -> bool:
        """Whether to skip the batch (``skip``); with ``stop``, keep the loss for the next check."""
        trainer = attached_trainer(self)
        if self.hparams.nonfinite_loss == "skip":
            # a host sync per step; collective under DDP (all processes skip or none does)
            finite = bool(torch.isfinite(loss))
            if trainer is not None:
                finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
            if not finite:
                self.skipped_batches += 1
                self.log("train/skipped_batches", float(self.skipped_batches), on_step=True)
            return not finite
        self.recent_losses.append((self.global_step, loss.detach()))
        if trainer is None or (
            len(self.recent_losses) >= trainer.log_every_n_steps
            or batch_idx + 1 == trainer.num_training_batches
        ):
            self.stop_if_nonfinite()
        return False

    def stop_if_nonfinite(self) -> None:
        """Raise at a non-finite loss (one host sync; collective under DDP)."""
        recent, self.recent_losses = self.recent_losses, []
        finite = torch.stack([loss for _, loss in recent]).isfinite().tolist() if recent else []
        trainer = attached_trainer(self)
        anywhere = False in finite
        if trainer is not None:
            anywhere = trainer.strategy.reduce_boolean_decision(anywhere, all=False)
        if not anywhere:
            return
        where = f"loss is not finite in another process in epoch {self.current_epoch}"
        if False in finite:
            step, loss = recent[finite.index(False)]
            where = f"loss is {float(loss)} at epoch {self.current_epoch}, step {step}"
        callbacks = trainer.checkpoint_callbacks if trainer is not None else []
        monitored = [c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint)]
        saved = {c.monitor: c.best_model_path for c in monitored}  # not OnExceptionCheckpoint
        last_good = saved.get(None) or next((p for p in saved.values() if p), "")
        raise UserError(
            f"training stopped: {where}; last good checkpoint: {last_good or 'none yet'}; lower "
            "model.optimizer.lr, set trainer.gradient_clip_val=1.0, or model.nonfinite_loss=skip"
        )
