"""``EvalReport``: the evaluation report of a test run; a validate run before it fits T."""

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torchmetrics.utilities.distributed import gather_all_tensors  # shards of any length

from imgcls.evaluation import report


class EvalReport(pl.Callback):
    """Write the report of every test run into ``out_dir``; ``enabled=false``: nothing."""

    def __init__(
        self,
        out_dir: str | Path,
        enabled: bool = True,
        tta: str = "none",
        gallery: bool = False,
        max_mistakes: int = 16,
    ) -> None:
        super().__init__()
        self.out_dir, self.enabled, self.gallery = Path(out_dir), enabled, gallery
        self.tta, self.views, self.max_mistakes = tta, report.tta_views(tta), max_mistakes
        self.temperature: float | None = None
        self.headline: dict[str, float] = {}
        self.rows: dict[str, list[torch.Tensor]] = {}

    def _active(self, trainer: pl.Trainer, state: TrainerFn = TrainerFn.TESTING) -> bool:
        running = not trainer.sanity_checking and not trainer.fast_dev_run
        return self.enabled and running and trainer.state.fn == state

    def _keep(self, **rows: torch.Tensor) -> None:
        for name, value in rows.items():
            self.rows.setdefault(name, []).append(value.detach())

    def _gathered(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        rows, self.rows = {name: torch.cat(values) for name, values in self.rows.items()}, {}
        if trainer.world_size == 1:
            return rows
        return {name: torch.cat(gather_all_tensors(values)) for name, values in rows.items()}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *_: Any) -> None:
        if self._active(trainer, TrainerFn.VALIDATING):
            self._keep(logits=pl_module(batch[0]).float(), targets=batch[1])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer, TrainerFn.VALIDATING):
            self.temperature = report.fit_temperature(*self._gathered(trainer).values())

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, *_: Any) -> None:
        if not self._active(trainer):
            return
        images, targets, logits = batch[0], batch[1], outputs["logits"].float()
        self._keep(logits=logits, targets=targets)
        if len(self.views) > 1:
            probs = [pl_module(view(images)).float().softmax(1) for view in self.views[1:]]
            self._keep(tta=torch.stack([logits.softmax(1), *probs]).mean(0))
        if self.gallery:  # each batch's most confident mistakes
            wrong = report.most_confident_mistakes(logits, targets, self.max_mistakes)
            self._keep(images=images[wrong], wrong_true=targets[wrong], wrong_logits=logits[wrong])

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        rows = self._gathered(trainer)
        if trainer.is_global_zero:
            names, net = trainer.datamodule.class_names, pl_module.net
            args = (self.temperature, self.tta, net, self.max_mistakes)
            self.headline = report.write_report(self.out_dir, rows, names, *args)
