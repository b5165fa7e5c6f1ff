"""A callback that crashes its own training process on purpose, for the resume tests."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class KillAtEpoch(pl.Callback):
    """SIGKILLs its process when ``epoch`` starts in a fresh run (not in a resumed one).

    Use: ``+callbacks.crash._target_=tests.crash.KillAtEpoch +callbacks.crash.epoch=2``. The kill
    comes after epoch ``epoch - 1`` was checkpointed, whatever the machine's speed.
    """

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch and trainer.ckpt_path is None:
            os.kill(os.getpid(), signal.SIGKILL)
