"""Fine-tuning schedule: train the head alone, then the whole net with a lower backbone lr.

``callbacks=finetuning``: the backbone (everything but ``net``'s head, see
:mod:`imgcls.models.freezing`) is frozen for the first ``unfreeze_at_epoch`` epochs; then it joins
the optimizer as a second parameter group whose learning rates are the head's times
``backbone_lr_factor`` (every ``*lr`` key of the group: ``lr``, ``initial_lr``, ``max_lr`` ...),
and the schedulers of the optimizer drive it like the head's group.

Lightning's ``BackboneFinetuning`` expects ``pl_module.backbone``; :class:`ImageClassifier` keeps
its plain network at ``.net``, hence this subclass of ``BaseFinetuning`` (which also restores the
added parameter group when a run resumes from a checkpoint).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch.optim import Optimizer

from imgcls.models.freezing import backbone_modules, freeze_backbone, set_trainable
from imgcls.utils.errors import UserError

#: public per-parameter-group lists a torch scheduler keeps (ReduceLROnPlateau: min_lrs); its
#: last lrs are read again from the groups at its next step
SCHEDULER_GROUP_LISTS = ("base_lrs", "lr_lambdas", "min_lrs")


class HeadFirstFinetuning(BaseFinetuning):
    """Freeze ``pl_module.net``'s backbone; unfreeze it at ``unfreeze_at_epoch``, lr x factor."""

    def __init__(self, unfreeze_at_epoch: int = 2, backbone_lr_factor: float = 0.1) -> None:
        super().__init__()
        if unfreeze_at_epoch < 0:
            raise UserError(
                f"callbacks.finetuning.unfreeze_at_epoch must be >= 0, got {unfreeze_at_epoch}"
            )
        if not backbone_lr_factor > 0:
            raise UserError(
                f"callbacks.finetuning.backbone_lr_factor must be > 0, got {backbone_lr_factor}"
            )
        self.unfreeze_at_epoch = int(unfreeze_at_epoch)
        self.backbone_lr_factor = float(backbone_lr_factor)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        if pl_module.hparams.get("freeze") == "backbone":
            raise UserError(
                "model.freeze=backbone keeps the backbone frozen for the whole run, but "
                "callbacks.finetuning would unfreeze it; drop one (~callbacks.finetuning)"
            )
        freeze_backbone(pl_module.net)

    def finetune_function(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        if epoch < self.unfreeze_at_epoch:
            return
        modules = backbone_modules(pl_module.net)
        if all(p.requires_grad for m in modules for p in m.parameters(recurse=False)):
            return  # unfrozen already
        set_trainable(modules, True)
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for m in modules for p in m.parameters(recurse=False)]
        new = [p for p in params if id(p) not in in_optimizer]
        if not new:  # resumed after the unfreezing: the group was restored with the optimizer
            return
        group = {
            key: value * self.backbone_lr_factor if key.endswith("lr") else value
            for key, value in optimizer.param_groups[0].items()
            if key != "params"
        }
        optimizer.add_param_group({**group, "params": new})
        extend_schedulers(pl_module.trainer, optimizer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)  # a resumed run gets its parameter groups back
        for optimizer in trainer.optimizers:
            extend_schedulers(trainer, optimizer)


def extend_schedulers(trainer: pl.Trainer, optimizer: Optimizer) -> None:
    """Give ``optimizer``'s schedulers an entry for each added parameter group (like the first)."""
    groups = optimizer.param_groups
    for config in trainer.lr_scheduler_configs:
        scheduler: Any = config.scheduler
        if scheduler.optimizer is not optimizer:
            continue
        for attribute in SCHEDULER_GROUP_LISTS:
            values = getattr(scheduler, attribute, None)
            if not isinstance(values, list) or not values:
                continue
            for index in range(len(values), len(groups)):
                if attribute == "base_lrs":
                    values.append(groups[index].get("initial_lr", groups[index]["lr"]))
                else:
                    values.append(values[0])
