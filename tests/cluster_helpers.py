"""Test-only pieces a training subprocess imports (``python train.py`` puts the repo on sys.path)"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch


class SignalAtStep(pl.Callback):
    """Send ``signum`` (a name such as ``USR1`` or ``KILL``) to this process after training step
    ``step`` on global rank ``rank``: a deterministic preemption, or a node dying mid-run."""

    def __init__(self, step: int, signum: str, rank: int = 0) -> None:
        self.step, self.signum, self.rank = step, getattr(signal, f"SIG{signum}"), rank

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), self.signum)


class RankProbe(pl.Callback):
    """Test helper: each DDP process writes its random draws, its train split and how many test
    batches it ran to ``<out>/rank<N>.json``."""

    def __init__(self, out: str) -> None:
        self.out, self.record = Path(out), {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        labels = trainer.datamodule.splits["train"][1]
        self.record = {"rand": torch.rand(4).tolist(), "train_labels": labels.tolist()}

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record["test_batches"] = trainer.num_test_batches[0]
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record))
