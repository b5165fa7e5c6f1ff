"""ImageClassifier: the one LightningModule, wrapping any plain ``nn.Module`` network."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from imgcls.models.nets.pretrained import check_normalisation, freeze_backbone
from imgcls.models.nonfinite import NonfiniteLossWatch, attached_trainer
from imgcls.utils.checkpoint import read_checkpoint, stored_config
from imgcls.utils.errors import UserError

#: ``model.compile`` values -> ``torch.compile`` mode (``None``: not compiled)
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_MODES: dict[Any, str | None] = {False: None, True: "default", **{m: m for m in MODES}}
#: compile modes that replay CUDA graphs on a GPU: they want one batch shape throughout
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def takes(factory: Callable[..., Any], name: str) -> bool:
    """Whether the callable behind a (partial) factory accepts the keyword ``name``."""
    return name in inspect.signature(getattr(factory, "func", factory)).parameters


def fused_kwargs(factory: Callable[..., Any], fused: bool | None, device: torch.device) -> dict:
    """``fused=True`` for the optimizer: ``True`` always, ``None`` on CUDA (when it has one)."""
    bound = getattr(factory, "keywords", {})
    if fused is False or bound.get("fused") is not None or bound.get("foreach") is not None:
        return {}
    name, has_fused = getattr(factory, "func", factory).__name__, takes(factory, "fused")
    if fused and not has_fused:
        raise UserError(f"model.fused_optimizer=true but {name} has no fused implementation")
    return {"fused": True} if has_fused and (fused or device.type == "cuda") else {}


def batch_mixing(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> nn.Module | None:
    """torchvision's MixUp, CutMix or a random one of both per batch (soft targets), or None."""
    for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if alpha < 0:
            raise UserError(f"model.{name} must be >= 0 (0 = off), got {alpha}")
    mixers = [v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []
    mixers += [v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else []
    return v2.RandomChoice(mixers) if mixers else None


class ImageClassifier(NonfiniteLossWatch, pl.LightningModule):
    """Classifies images with ``.net = net(num_classes=, in_channels=, image_size=)`` (partials)."""

    #: what the module logs (``optimized_metric`` is checked against these before training)
    logged_metrics = tuple(
        f"{split}/{name}" for split in ("train", "val", "test") for name in ("loss", "acc")
    ) + ("val/acc_best",)

    def __init__(
        self,
        net: Callable[..., nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: int,
        in_channels: int,
        image_size: int,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "auto",  # "step" for schedules over total_steps, else "epoch"
        scheduler_monitor: str = "val/loss",
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool | str = False,
        nonfinite_loss: str = "stop",
        class_weights: str | list[float] | None = None,
        freeze: str | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        fused_optimizer: bool | None = None,
    ) -> None:
        super().__init__()
        lr = getattr(optimizer, "keywords", {}).get("lr")
        if lr is not None and not lr > 0:
            raise UserError(f"model.optimizer.lr must be > 0, got {lr}")
        if nonfinite_loss not in ("stop", "skip"):
            raise UserError(f"model.nonfinite_loss must be stop or skip, got {nonfinite_loss!r}")
        if freeze not in (None, "backbone"):
            raise UserError(f"model.freeze={freeze!r} is not supported; use backbone or null")
        if compile not in COMPILE_MODES:
            raise UserError(
                f"model.compile must be false, true or one of {', '.join(MODES)}; got {compile!r}"
            )
        if isinstance(class_weights, str) and class_weights != "auto":
            raise UserError(f"model.class_weights must be auto, a list or null: {class_weights}")
        if class_weights is not None and not isinstance(class_weights, str):
            class_weights = [float(w) for w in class_weights]  # plain data in checkpoints
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
        if freeze == "backbone":  # the optimizer then gets the head's parameters only
            freeze_backbone(self.net)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        # the compiled net stays outside the module tree, so checkpoints keep plain `net.` names
        mode = COMPILE_MODES[compile]
        compiled = torch.compile(self.net, mode=mode) if mode is not None else None
        object.__setattr__(self, "compiled_net", compiled)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.batch_mix = batch_mixing(num_classes, mixup_alpha, cutmix_alpha)
        # training metrics without host syncs (no validation, no NaN checks): see NonfiniteLossWatch
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.train_loss = MeanMetric(nan_strategy="disable")
        for stage in ("val", "test"):
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes, average="micro"))
            setattr(self, f"{stage}_loss", MeanMetric())
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints: a resumed run keeps its best
        # class weights: a buffer of its final shape (EMA's early copy matches), filled in setup
        weights = None if class_weights is None else torch.ones(num_classes)
        self.register_buffer("loss_weights", weights, persistent=False)
        self.recent_losses: list[tuple[int, torch.Tensor]] = []  # model.nonfinite_loss=stop

    def setup(self, stage: str) -> None:
        """Warn when pretrained weights meet other normalisation; fill the class weights."""
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        normalize = getattr(getattr(datamodule, "pipeline", None), "normalize", None)
        if stage == "fit" and normalize is not None:
            stats = (normalize.mean.flatten().tolist(), normalize.std.flatten().tolist())
            check_normalisation(self.net, *stats)
        weights = self.hparams.class_weights
        if weights == "auto":  # inverse training frequency
            if not hasattr(datamodule, "class_counts"):
                raise UserError("model.class_weights=auto needs an imgcls datamodule")
            counts = datamodule.class_counts().float()
            weights = counts.sum() / (len(counts) * counts.clamp(min=1))
        if weights is not None and len(weights) != len(self.loss_weights):
            raise UserError(
                f"model.class_weights: {len(weights)} weights for {len(self.loss_weights)} classes"
            )
        if weights is not None:
            self.loss_weights.copy_(torch.as_tensor(weights, dtype=torch.float32))

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether ``model.compile`` replays CUDA graphs (training batches keep one shape)."""
        return COMPILE_MODES[self.hparams.compile] in CUDA_GRAPH_MODES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.compiled_net is None:
            return self.net(x)
        if self.uses_cuda_graphs:  # each call is a new step: earlier graph outputs are consumed
            torch.compiler.cudagraph_mark_step_begin()
        return self.compiled_net(x)

    def _step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, logits, class labels); soft targets ``[N, C]`` (mixup) give their top class."""
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(
            logits, y, weight=self.loss_weights, label_smoothing=self.hparams.label_smoothing
        )
        return loss, logits, y if y.ndim == 1 else y.argmax(dim=1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if self.batch_mix is not None:
            batch = self.batch_mix(*batch)
        loss, logits, y = self._step(batch)
        if self.skip_nonfinite(loss, batch_idx):
            return None
        # no host sync per step; a loss per sample weighs batches by size (weight= checks NaNs)
        self.train_loss.update(loss.detach().expand(len(y)))
        self.train_acc.update(logits.argmax(dim=1), y)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step("val", batch)

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step("test", batch)

    def _eval_step(self, stage: str, batch: Any) -> dict[str, torch.Tensor]:
        loss, logits, y = self._step(batch)
        getattr(self, f"{stage}_loss").update(loss, weight=len(y))
        getattr(self, f"{stage}_acc").update(logits.argmax(dim=1), y)
        return {"logits": logits.detach()}  # for callbacks (confusion matrix, misclassified)

    def _log_epoch(self, stage: str) -> torch.Tensor:
        loss, acc = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        accuracy = acc.compute()
        self.log(f"{stage}/loss", loss.compute(), prog_bar=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=True)
        loss.reset()
        acc.reset()
        return accuracy

    def on_train_start(self) -> None:
        # a resumed run: the restored schedule must still cover every step of this run
        steps = self.trainer.estimated_stepping_batches  # inf: trainer.max_epochs=-1
        for config in self.trainer.lr_scheduler_configs:
            total = getattr(config.scheduler, "total_steps", None)
            if isinstance(total, int) and steps > total:
                raise UserError(
                    f"the checkpoint's {type(config.scheduler).__name__} was sized for {total} "
                    f"optimizer steps but this run takes {steps:.0f}; resume with the "
                    "trainer.max_epochs it was started with, or train a new run"
                )

    def on_train_epoch_end(self) -> None:
        self.stop_if_nonfinite()
        if self.train_acc.update_count:  # not when every batch of the epoch was skipped
            self._log_epoch("train")

    def on_validation_start(self) -> None:
        if not self.trainer.sanity_checking:  # validation inside fit: checkpoints follow
            self.stop_if_nonfinite()

    def on_validation_epoch_end(self) -> None:
        accuracy = self._log_epoch("val")
        if not self.trainer.sanity_checking:  # a sanity check is not an epoch
            self.val_acc_best.update(accuracy)
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> Any:
        # frozen parameters (model.freeze, callbacks=finetuning) stay out until unfrozen
        params = [p for p in self.parameters() if p.requires_grad]
        fused = fused_kwargs(self.optimizer_factory, self.hparams.fused_optimizer, self.device)
        optimizer = self.optimizer_factory(params=params, **fused)
        factory = self.scheduler_factory
        if factory is None:
            return optimizer
        bound, kwargs = getattr(factory, "keywords", {}), {}
        over_steps = takes(factory, "total_steps")  # OneCycleLR, warmup_cosine: the whole run
        if over_steps and bound.get("total_steps") is None and bound.get("epochs") is None:
            steps = self.trainer.estimated_stepping_batches
            if math.isinf(steps):
                raise UserError(
                    "trainer.max_epochs=-1: the model.scheduler spans the whole run and needs its "
                    "length; give trainer.max_epochs=N, trainer.max_steps=N or model.scheduler=null"
                )
            steps = int(steps)
            # one step more where OneCycleLR's warm-up would end on step 0 (torch divides by 0)
            kwargs["total_steps"] = steps + ((bound.get("pct_start") or 0) * steps == 1)
        interval = self.hparams.scheduler_interval
        if interval == "auto":
            interval = "step" if over_steps else "epoch"
        scheduler = {"scheduler": factory(optimizer=optimizer, **kwargs), "interval": interval}
        scheduler["monitor"] = self.hparams.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, map_location: Any = None, **kwargs: Any
    ) -> ImageClassifier:
        """Load an imgcls checkpoint (read once, ``weights_only``); the net from its config."""
        checkpoint = read_checkpoint(checkpoint_path, map_location or "cpu")
        return cls.from_checkpoint(checkpoint, **kwargs)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], **kwargs: Any) -> ImageClassifier:
        """Rebuild from an already loaded imgcls checkpoint; ``kwargs`` override hyperparameters."""
        model_cfg = stored_config(checkpoint).get("model")
        if not isinstance(model_cfg, Mapping) or "net" not in model_cfg:
            raise UserError("the checkpoint's stored config has no model.net: not made by imgcls")
        parts = {key: instantiate(model_cfg.get(key)) for key in ("optimizer", "scheduler")}
        # the checkpoint holds the trained weights: pretrained ones are not read (nor needed) again
        skip = {"load_weights": False} if model_cfg["net"].get("weights") else {}
        parts["net"] = instantiate(model_cfg["net"], **skip)
        model = cls(**{**checkpoint.get("hyper_parameters", {}), **parts, **kwargs})
        model.load_state_dict(checkpoint["state_dict"])
        return model
