"""Train the head alone, then the whole net with a lower backbone lr (every ``*lr`` key)."""

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch.optim import Optimizer

from imgcls.models.nets.pretrained import backbone_modules, freeze_backbone
from imgcls.utils.errors import UserError

#: per-parameter-group lists a torch scheduler keeps (ReduceLROnPlateau: min_lrs)
SCHEDULER_GROUP_LISTS = ("base_lrs", "lr_lambdas", "min_lrs")


class HeadFirstFinetuning(BaseFinetuning):
    """Freeze the backbone for ``unfreeze_at_epoch`` epochs, then add it as a second group."""

    def __init__(self, unfreeze_at_epoch: int = 2, backbone_lr_factor: float = 0.1) -> None:
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.backbone_lr_factor = backbone_lr_factor

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
        self.make_trainable(modules)  # a resumed run restored the group, frozen by the setup
        in_optimizer = {p for group in optimizer.param_groups for p in group["params"]}
        new = [p for m in modules for p in m.parameters(recurse=False) if p not in in_optimizer]
        if new:
            group = {
                key: value * self.backbone_lr_factor if key.endswith("lr") else value
                for key, value in optimizer.param_groups[0].items()
                if key != "params"
            }
            optimizer.add_param_group({**group, "params": new})

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the schedulers' lists get an entry per added group (after a resume: ``lr_lambdas``)
        super().on_train_epoch_start(trainer, pl_module)
        for config in trainer.lr_scheduler_configs:
            groups = config.scheduler.optimizer.param_groups
            for name in SCHEDULER_GROUP_LISTS:
                values = getattr(config.scheduler, name, [])
                for group in groups[len(values) :] if values else []:
                    lr = group.get("initial_lr", group["lr"])
                    values.append(lr if name == "base_lrs" else values[0])
