"""``EvalReport``: the evaluation report of a test run (train.py's test, eval.py), DDP-correct.

Each rank keeps its test logits and labels (and its most confident mistakes); at the end of the
test they are gathered from every rank (one collective whatever a rank's shard length), so the
numbers equal a single-process evaluation. Logits of a ``trainer.validate`` run before the test
(eval.py) give the temperature (never the test split).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from imgcls.evaluation.metrics import fit_temperature, gather, tta_views
from imgcls.evaluation.report import write_report


class EvalReport(pl.Callback):
    def __init__(
        self,
        out_dir: str | Path,
        enabled: bool = True,
        tta: str = "none",
        gallery: bool = False,
        max_mistakes: int = 16,
    ) -> None:
        super().__init__()
        self.out_dir, self.enabled, self.tta = Path(out_dir), enabled, tta
        self.views = tta_views(tta)
        self.gallery, self.max_mistakes = gallery, max_mistakes
        self.temperature: float | None = None
        self.headline: dict[str, float] = {}
        self.rows: dict[str, list[torch.Tensor]] = {}

    def _active(self, trainer: pl.Trainer) -> bool:
        return self.enabled and not trainer.sanity_checking and not trainer.fast_dev_run

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows = {}

    on_test_epoch_start = on_validation_epoch_start

    def _keep(self, **rows: torch.Tensor) -> None:
        for name, value in rows.items():
            self.rows.setdefault(name, []).append(value.detach())

    def _rows(self, trainer: pl.Trainer, name: str, empty: torch.Tensor) -> torch.Tensor:
        local = torch.cat(self.rows[name]) if name in self.rows else empty
        return gather(trainer, local)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:  # noqa: E501
        if self._active(trainer) and trainer.state.fn == TrainerFn.VALIDATING:
            self._keep(logits=pl_module(batch[0]), targets=batch[1])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer) and trainer.state.fn == TrainerFn.VALIDATING:
            logits = self._rows(
                trainer, "logits", torch.zeros(0, self._classes(trainer), device=pl_module.device)
            )
            targets = self._rows(
                trainer, "targets", torch.zeros(0, dtype=torch.long, device=pl_module.device)
            )
            self.temperature = fit_temperature(logits, targets)

    @staticmethod
    def _classes(trainer: pl.Trainer) -> int:
        return int(trainer.datamodule.num_classes)

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:  # noqa: E501
        if not self._active(trainer):
            return
        images, targets = batch[0], batch[1]
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        logits = pl_module(images) if logits is None else logits
        rows = {"logits": logits.float(), "targets": targets}
        if len(self.views) > 1:
            probs = [
                logits.float().softmax(1),
                *(pl_module(v(images)).float().softmax(1) for v in self.views[1:]),
            ]
            rows["tta"] = torch.stack(probs).mean(0)
        if self.gallery:
            confidence, predicted = logits.float().softmax(1).max(1)
            wrong = (predicted != targets).nonzero().flatten()
            wrong = wrong[confidence[wrong].argsort(descending=True)[: self.max_mistakes]]
            rows |= {
                "images": images[wrong],
                "wrong_true": targets[wrong],
                "wrong_pred": predicted[wrong],
                "wrong_prob": confidence[wrong],
            }
        self._keep(**rows)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        device, n = pl_module.device, self._classes(trainer)
        long = torch.zeros(0, dtype=torch.long, device=device)
        logits = self._rows(trainer, "logits", torch.zeros(0, n, device=device))
        targets = self._rows(trainer, "targets", long)
        tta = (
            (self.tta, self._rows(trainer, "tta", torch.zeros(0, n, device=device)))
            if len(self.views) > 1
            else None
        )
        mistakes = None
        if self.gallery:
            shape = (
                trainer.datamodule.in_channels,
                trainer.datamodule.image_size,
                trainer.datamodule.image_size,
            )
            images = self._rows(trainer, "images", torch.zeros(0, *shape, device=device))
            true, pred = (
                self._rows(trainer, "wrong_true", long),
                self._rows(trainer, "wrong_pred", long),
            )
            prob = self._rows(trainer, "wrong_prob", torch.zeros(0, device=device))
            keep = prob.argsort(descending=True)[: self.max_mistakes]
            mistakes = (images[keep], true[keep], pred[keep], prob[keep])
        if trainer.is_global_zero:
            names = trainer.datamodule.class_names
            self.headline = write_report(
                self.out_dir, logits, targets, names, self.temperature, tta, mistakes, pl_module.net
            )
