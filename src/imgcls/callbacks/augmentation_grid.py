"""Log a grid of augmented training samples when training starts (to see what the model sees)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torchvision.utils import make_grid, save_image

log = logging.getLogger(__name__)


class AugmentationGrid(pl.Callback):
    """The first ``num_images`` training images through the datamodule's own train pipeline
    (normalisation undone), logged to TensorBoard (``tag``) and with ``save_path`` saved as a PNG.
    A forked RNG: the grid does not change the run's randomness."""

    def __init__(
        self,
        num_images: int = 32,
        nrow: int = 8,
        tag: str = "train/augmented_samples",
        save_path: str | None = None,
    ) -> None:
        super().__init__()
        self.num_images, self.nrow, self.tag, self.save_path = num_images, nrow, tag, save_path
        self.grid: torch.Tensor | None = None  # the last grid logged, [3, H, W] in [0, 1]

    def make_grid(self, datamodule: pl.LightningDataModule) -> torch.Tensor | None:
        pipeline = getattr(datamodule, "pipeline", None)
        splits = getattr(datamodule, "splits", None)
        if pipeline is None or not splits or "train" not in splits:
            return None
        images = splits["train"][0][: self.num_images]
        device = pipeline.normalize.mean.device
        devices = [device] if device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            augmented = pipeline(images.to(device), train=True)
            shown = pipeline.normalize.inverse(augmented).clamp(0, 1).cpu()
        return make_grid(shown, nrow=self.nrow, padding=2, pad_value=1.0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        grid = self.make_grid(trainer.datamodule) if trainer.datamodule is not None else None
        if grid is None:
            log.info("augmentation grid skipped: the datamodule has no in-memory training split")
            return
        self.grid = grid
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(self.tag, grid, global_step=trainer.global_step)
        if self.save_path:
            path = Path(self.save_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(grid, path)
