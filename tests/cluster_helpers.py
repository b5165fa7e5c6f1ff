"""Test-only pieces a training subprocess imports (``python train.py`` puts the repo on sys.path)"""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class SignalAtStep(pl.Callback):
    """Send ``signum`` (a name such as ``USR1`` or ``KILL``) to this process after training step
    ``step`` on global rank ``rank``: a deterministic preemption, or a node dying mid-run."""

    def __init__(self, step: int, signum: str, rank: int = 0) -> None:
        self.step, self.signum, self.rank = step, getattr(signal, f"SIG{signum}"), rank

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), self.signum)
