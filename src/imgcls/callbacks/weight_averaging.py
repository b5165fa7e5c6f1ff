"""EMA weights that stay averaged wherever a checkpoint is evaluated."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.trainer.states import TrainerFn


class EMAWeights(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging``, except that testing a checkpoint tests its EMA weights.

    Lightning's callback reloads the raw weights (``current_model_state``) into the model whenever
    a checkpoint is restored after fit has built the averaged model, so ``trainer.test(ckpt_path=
    best)`` in train.py would test the raw weights while eval.py and predict.py read the averaged
    ``state_dict``. Only a resumed fit needs the raw weights and the average restored.
    """

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
