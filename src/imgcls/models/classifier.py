"""ImageClassifier: the one LightningModule, wrapping any plain ``nn.Module`` network."""

from __future__ import annotations

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

from imgcls.models.freezing import check_freeze, freeze_backbone
from imgcls.models.mixing import batch_mixing
from imgcls.models.nets.weights import check_normalisation
from imgcls.models.nonfinite import NonfiniteLossWatch, attached_trainer
from imgcls.models.optim import (
    OptimizerFactory,
    SchedulerFactory,
    bound,
    check_schedule_covers_run,
    fused_kwargs,
    schedule_kwargs,
    takes_argument,
)
from imgcls.utils.checkpoint import read_checkpoint, stored_config
from imgcls.utils.errors import UserError

#: ``model.compile`` values -> ``torch.compile`` mode (``None``: not compiled); reduce-overhead
#: replays CUDA graphs, max-autotune autotunes kernels and replays CUDA graphs
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_MODES: dict[Any, str | None] = {False: None, True: "default", **{m: m for m in MODES}}
#: compile modes that replay CUDA graphs on a GPU: they want one batch shape throughout
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


class ImageClassifier(NonfiniteLossWatch, pl.LightningModule):
    """Classifies images with the network ``net(num_classes=, in_channels=, image_size=)`` builds
    (a Hydra partial, as are optimizer and scheduler); the network itself is ``.net``.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``, ``test/loss``
    and ``test/acc``. The network may return logits or log-probabilities (cross-entropy treats
    both the same, since log-softmax is idempotent).
    """

    #: what the module logs (``optimized_metric`` is checked against these before training)
    logged_metrics = tuple(
        f"{split}/{name}" for split in ("train", "val", "test") for name in ("loss", "acc")
    ) + ("val/acc_best",)

    def __init__(
        self,
        net: Callable[..., nn.Module],
        optimizer: OptimizerFactory,
        num_classes: int,
        in_channels: int,
        image_size: int,
        scheduler: SchedulerFactory | None = None,
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
        lr = bound(optimizer).get("lr")
        if lr is not None and not lr > 0:
            raise UserError(f"model.optimizer.lr must be > 0, got {lr}")
        if isinstance(class_weights, str) and class_weights != "auto":
            raise UserError(
                f"model.class_weights must be auto, a list or null, got {class_weights!r}"
            )
        if nonfinite_loss not in ("stop", "skip"):
            raise UserError(
                f"model.nonfinite_loss must be 'stop' or 'skip', got {nonfinite_loss!r}"
            )
        check_freeze(freeze)
        if compile not in COMPILE_MODES:
            raise UserError(
                f"model.compile must be false, true or one of "
                f"{', '.join(m for m in COMPILE_MODES if isinstance(m, str))}; got {compile!r}"
            )
        if class_weights is not None and not isinstance(class_weights, str):
            class_weights = [float(w) for w in class_weights]  # plain data in checkpoints
        if isinstance(net, nn.Module):
            raise UserError("model.net must build the network (`_partial_: true`), not be one")
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
        self.optimizer_factory = optimizer
        #: mixup/cutmix of each training batch (soft targets), or None
        self.batch_mix = batch_mixing(num_classes, mixup_alpha, cutmix_alpha)
        self.scheduler_factory = scheduler
        # training metrics are updated every step without a host sync: no argument validation,
        # no NaN checks (each is a device-to-host copy); non-finite losses are watched below
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints: a resumed run keeps its best
        #: cross-entropy class weights (``class_weights``): a buffer of its final shape from the
        #: start (a copy taken before ``setup``, e.g. EMA's, matches), filled in place in ``setup``
        weights = None if class_weights is None else torch.ones(num_classes)
        self.register_buffer("loss_weights", weights, persistent=False)
        self.recent_steps: list[int] = []  # model.nonfinite_loss=stop (imgcls.models.nonfinite)

    def setup(self, stage: str) -> None:
        """Warn when pretrained weights meet other normalisation; fill ``class_weights``
        (``auto``: inverse training frequency)."""
        trainer = attached_trainer(self)
        datamodule = trainer.datamodule if trainer is not None else None
        normalize = getattr(getattr(datamodule, "pipeline", None), "normalize", None)
        if stage == "fit" and normalize is not None:
            stats = (normalize.mean.flatten().tolist(), normalize.std.flatten().tolist())
            check_normalisation(self.net, *stats)
        weights = self.hparams.class_weights
        if weights is None:
            return
        if weights == "auto":
            if datamodule is None or not hasattr(datamodule, "class_counts"):
                raise UserError(
                    "model.class_weights=auto needs an imgcls datamodule to count classes"
                )
            counts = datamodule.class_counts().float()
            weights = counts.sum() / (len(counts) * counts.clamp(min=1))
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if weights.shape != self.loss_weights.shape:
            raise UserError(
                f"model.class_weights has {weights.numel()} entries for "
                f"{self.hparams.num_classes} classes"
            )
        self.loss_weights.copy_(weights)

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether ``model.compile`` replays CUDA graphs (on a GPU): batches should keep one shape.

        The in-memory training loader then drops the last partial batch (``data.drop_last``).
        """
        return COMPILE_MODES[self.hparams.compile] in CUDA_GRAPH_MODES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.compiled_net is None:
            return self.net(x)
        if self.uses_cuda_graphs:  # each call is a new step: earlier graph outputs are consumed
            torch.compiler.cudagraph_mark_step_begin()
        return self.compiled_net(x)

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor], return_logits: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """(loss, predictions or logits, class labels) of a batch; soft targets ``[N, C]`` (mixup)
        give the loss as probabilities and their most likely class as the label."""
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(
            logits, y, weight=self.loss_weights, label_smoothing=self.hparams.label_smoothing
        )
        labels = y if y.ndim == 1 else y.argmax(dim=1)
        return loss, logits if return_logits else logits.argmax(dim=1), labels

    def on_train_start(self) -> None:
        # a resumed run: the restored schedule must still cover every step of this run
        check_schedule_covers_run(
            self.trainer.lr_scheduler_configs, int(self.trainer.estimated_stepping_batches)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if self.batch_mix is not None:
            batch = self.batch_mix(*batch)
        loss, preds, y = self._step(batch)
        if self.hparams.nonfinite_loss == "skip":
            if not self.all_finite(loss):  # a host sync per step (and a collective under DDP)
                return self.skip()
        else:
            self.record_loss(loss)
            if self.is_check_step(batch_idx):
                self.stop_if_nonfinite()
        # update only (no per-batch value), no host sync, and log once per epoch: calling the
        # metrics and self.log-ging Metric objects every step costs ~1-3 ms/step, more than a
        # small net's step. (MeanMetric ignores weight= when its NaN checks are off: one copy of
        # the loss per sample weighs batches by size.)
        self.train_loss.update(loss.detach().expand(len(y)))
        self.train_acc.update(preds, y)
        return loss

    def on_train_epoch_end(self) -> None:
        self.stop_if_nonfinite()
        if self.train_acc.update_count:  # not when every batch of the epoch was skipped
            self.log("train/loss", self.train_loss.compute(), prog_bar=True)
            self.log("train/acc", self.train_acc.compute(), prog_bar=True)
        self.train_loss.reset()
        self.train_acc.reset()

    def on_validation_start(self) -> None:
        if not self.trainer.sanity_checking:  # validation inside fit: checkpoints follow
            self.stop_if_nonfinite()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, preds, y = self._step(batch)
        self.val_loss.update(loss, weight=len(y))
        self.val_acc.update(preds, y)

    def on_validation_epoch_end(self) -> None:
        val_acc = self.val_acc.compute()
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        self.log("val/acc", val_acc, prog_bar=True)
        self.val_loss.reset()
        self.val_acc.reset()
        if self.trainer.sanity_checking:
            return  # a sanity-check pass must not count as the best epoch
        self.val_acc_best.update(val_acc)
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, logits, y = self._step(batch, return_logits=True)
        preds = logits.argmax(dim=1)
        self.test_loss(loss, weight=len(y))
        self.test_acc(preds, y)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)
        return {"logits": logits.detach()}  # for callbacks (confusion matrix, misclassified)

    def configure_optimizers(self) -> Any:
        # frozen parameters (model.freeze, callbacks=finetuning) stay out until unfrozen
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(
            params=params,
            **fused_kwargs(self.optimizer_factory, self.hparams.fused_optimizer, self.device),
        )
        if self.scheduler_factory is None:
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        kwargs = schedule_kwargs(self.scheduler_factory, steps)  # OneCycleLR: the whole run
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        interval = self.hparams.scheduler_interval
        if interval == "auto":
            interval = "step" if takes_argument(self.scheduler_factory, "total_steps") else "epoch"
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": interval,
                "monitor": self.hparams.scheduler_monitor,
            },
        }

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, map_location: Any = None, **kwargs: Any
    ) -> ImageClassifier:
        """Load an imgcls checkpoint (read once, ``weights_only``); the net from its config."""
        if "net" in kwargs:
            return super().load_from_checkpoint(
                checkpoint_path, map_location=map_location, **kwargs
            )
        return cls.from_checkpoint(
            read_checkpoint(checkpoint_path, map_location or "cpu"), **kwargs
        )

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
