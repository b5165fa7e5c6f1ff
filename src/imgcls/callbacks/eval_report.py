"""``EvalReport``: the evaluation report of a test run (train.py's test, eval.py), DDP-correct:
each rank's logits, labels and mistakes are gathered at the end of the test. Logits of a
``trainer.validate`` run before the test (eval.py) give the temperature (docs/evaluation.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from imgcls.evaluation.metrics import fit_temperature, gather, tta_views
from imgcls.evaluation.report import write_report


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
        self.tta, self.views, self.max_mistakes = tta, tta_views(tta), max_mistakes
        self.temperature: float | None = None
        self.headline: dict[str, float] = {}
        self.rows: dict[str, list[torch.Tensor]] = {}

    def _active(self, trainer: pl.Trainer) -> bool:
        return self.enabled and not trainer.sanity_checking and not trainer.fast_dev_run

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        data, empty = trainer.datamodule, torch.zeros(0, device=pl_module.device)
        n, shape = data.num_classes, (data.in_channels, data.image_size, data.image_size)
        labels = empty.long()
        self.rows = {"logits": [empty.new_zeros(0, n)], "targets": [labels]}
        self.rows |= {"tta": [empty.new_zeros(0, n)], "images": [empty.new_zeros(0, *shape)]}
        self.rows |= {"wrong_true": [labels], "wrong_pred": [labels], "wrong_prob": [empty]}

    on_test_epoch_start = on_validation_epoch_start

    def _keep(self, **rows: torch.Tensor) -> None:
        for name, value in rows.items():
            self.rows[name].append(value.detach())

    def _gathered(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        return {name: gather(trainer, torch.cat(rows)) for name, rows in self.rows.items()}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *_: Any) -> None:
        if self._active(trainer) and trainer.state.fn == TrainerFn.VALIDATING:
            self._keep(logits=pl_module(batch[0]).float(), targets=batch[1])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer) and trainer.state.fn == TrainerFn.VALIDATING:
            rows = self._gathered(trainer)
            self.temperature = fit_temperature(rows["logits"], rows["targets"])

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, *_: Any) -> None:
        if not self._active(trainer):
            return
        images, targets = batch[0], batch[1]
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        logits = (pl_module(images) if logits is None else logits).float()
        self._keep(logits=logits, targets=targets)
        if len(self.views) > 1:
            probs = [pl_module(view(images)).float().softmax(1) for view in self.views[1:]]
            self._keep(tta=torch.stack([logits.softmax(1), *probs]).mean(0))
        if self.gallery:
            confidence, predicted = logits.softmax(1).max(1)
            wrong = (predicted != targets).nonzero().flatten()
            wrong = wrong[confidence[wrong].argsort(descending=True)[: self.max_mistakes]]
            self._keep(images=images[wrong], wrong_true=targets[wrong])
            self._keep(wrong_pred=predicted[wrong], wrong_prob=confidence[wrong])

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        rows = self._gathered(trainer)
        keep = rows["wrong_prob"].argsort(descending=True)[: self.max_mistakes]
        mistakes = [rows[k][keep] for k in ("images", "wrong_true", "wrong_pred", "wrong_prob")]
        if trainer.is_global_zero:
            self.headline = write_report(
                self.out_dir,
                rows["logits"],
                rows["targets"],
                trainer.datamodule.class_names,
                self.temperature,
                (self.tta, rows["tta"]) if len(self.views) > 1 else None,
                tuple(mistakes) if self.gallery else None,
                pl_module.net,
            )
