"""What every imgcls checkpoint carries so that eval and predict can rebuild the run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl

from imgcls.utils.checkpoint import RUN_INFO_KEY


class RunInfo(pl.Callback):
    """Writes the resolved training config and the class names into every checkpoint, under
    ``RUN_INFO_KEY`` (Lightning itself saves the datamodule's state, say folder statistics).

    ``train.py`` adds it to every run; a script training an ``ImageClassifier`` another way adds
    ``RunInfo(OmegaConf.to_container(cfg, resolve=True))`` to its Trainer for checkpoints that
    ``eval.py``, ``predict.py`` and ``ImageClassifier.load_from_checkpoint`` can restore.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        datamodule = trainer.datamodule
        checkpoint[RUN_INFO_KEY] = {
            "config": self.config,
            "class_names": [str(c) for c in getattr(datamodule, "class_names", None) or []],
        }
