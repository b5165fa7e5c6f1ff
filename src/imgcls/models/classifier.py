"""ImageClassifier: the one LightningModule, wrapping any plain ``nn.Module`` network."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from imgcls.models.freezing import check_freeze, freeze_backbone
from imgcls.models.mixing import batch_mixing
from imgcls.models.schedulers import check_schedule_covers_run
from imgcls.utils.checkpoint import read_checkpoint, stored_config
from imgcls.utils.errors import UserError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]

#: ``model.compile`` values -> ``torch.compile`` mode (``None``: not compiled)
COMPILE_MODES: dict[Any, str | None] = {
    False: None,
    True: "default",
    "default": "default",
    "reduce-overhead": "reduce-overhead",  # CUDA graphs
    "max-autotune": "max-autotune",  # autotuned kernels + CUDA graphs
    "max-autotune-no-cudagraphs": "max-autotune-no-cudagraphs",
}
#: compile modes that replay CUDA graphs on a GPU: they want one batch shape throughout
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


class ImageClassifier(pl.LightningModule):
    """Classifies images with ``net``; optimizer and scheduler arrive as Hydra partials.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``, ``test/loss``
    and ``test/acc``. The network may return logits or log-probabilities (cross-entropy treats
    both the same, since log-softmax is idempotent).
    """

    #: what the module logs (``optimized_metric`` is checked against these before training)
    logged_metrics = (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/acc_best",
        "test/loss",
        "test/acc",
    )

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int,
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
        lr = optimizer.keywords.get("lr") if isinstance(optimizer, functools.partial) else None
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
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net
        if freeze == "backbone":  # the optimizer then gets the head's parameters only
            freeze_backbone(self.net)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        # the compiled net stays outside the module tree, so checkpoints keep plain `net.` names
        mode = COMPILE_MODES[compile]
        compiled = torch.compile(self.net, mode=mode) if mode is not None else None
        object.__setattr__(self, "compiled_net", compiled)
        self.skipped_batches = 0
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
        #: cross-entropy class weights (``class_weights``), resolved in ``setup``; a buffer, so it
        #: follows the module to its device (not saved: ``setup`` resolves it again)
        self.register_buffer("loss_weights", None, persistent=False)
        # ``nonfinite_loss=stop`` without a host sync per step: the losses since the last check
        # stay on the device (one copy per step) and are read every log_every_n_steps
        self.recent_losses: torch.Tensor | None = None
        self.recent_steps: list[int] = []  # their global steps

    def setup(self, stage: str) -> None:
        """Resolve ``class_weights``: ``auto`` weighs classes by inverse training frequency."""
        weights = self.hparams.class_weights
        if weights is None or self.loss_weights is not None:
            return
        if weights == "auto":
            datamodule = self.trainer.datamodule if self.trainer is not None else None
            if datamodule is None or not hasattr(datamodule, "class_counts"):
                raise UserError(
                    "model.class_weights=auto needs an imgcls datamodule to count classes"
                )
            counts = datamodule.class_counts().float()
            weights = counts.sum() / (len(counts) * counts.clamp(min=1))
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if weights.numel() != self.hparams.num_classes:
            raise UserError(
                f"model.class_weights has {weights.numel()} entries for "
                f"{self.hparams.num_classes} classes"
            )
        self.loss_weights = weights.to(self.device)

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
            if not self._all_finite(loss):  # a host sync per step (and a collective under DDP)
                return self._skip()
        else:
            self._record_loss(loss)
            if self._is_check_step(batch_idx):
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

    # ------------------------------------------------------------------ non-finite losses
    def _record_loss(self, loss: torch.Tensor) -> None:
        """Keep the step's loss on the device for the next check (no host sync)."""
        trainer = self._trainer  # None when a step is called directly: check every step
        window = max(1, trainer.log_every_n_steps) if trainer is not None else 1
        recent = self.recent_losses
        if recent is None or recent.shape != (window,) or recent.device != loss.device:
            self.recent_losses = torch.zeros(window, device=loss.device)
        if len(self.recent_steps) == window:  # not checked (an odd loop): check now
            self.stop_if_nonfinite()
        self.recent_losses[len(self.recent_steps)] = loss.detach()
        self.recent_steps.append(self.global_step)

    def _is_check_step(self, batch_idx: int) -> bool:
        """Every ``log_every_n_steps`` batches and at the epoch's last batch: before validation
        and its checkpoints, so no checkpoint holds the weights a non-finite loss produced."""
        trainer = self._trainer
        if trainer is None:
            return True
        return (batch_idx + 1) % max(1, trainer.log_every_n_steps) == 0 or (
            batch_idx + 1 == trainer.num_training_batches
        )

    def stop_if_nonfinite(self) -> None:
        """Raise, naming the first step with a non-finite loss and the last good checkpoint.

        One host sync (a collective under DDP, so every process stops together).
        """
        steps, self.recent_steps = self.recent_steps, []
        first_bad = None
        if steps:
            losses = self.recent_losses[: len(steps)].cpu()
            bad = (~torch.isfinite(losses)).nonzero()
            first_bad = int(bad[0]) if len(bad) else None
        if self._world_size() > 1:
            anywhere = self.trainer.strategy.reduce_boolean_decision(
                first_bad is not None, all=False
            )
        else:
            anywhere = first_bad is not None
        if not anywhere:
            return
        where = (
            f"loss is {float(losses[first_bad])} at epoch {self.current_epoch}, "
            f"step {steps[first_bad]}"
            if first_bad is not None
            else f"loss is not finite in another process in epoch {self.current_epoch}"
        )
        callbacks = self.trainer.checkpoint_callbacks if self._trainer is not None else []
        monitored = [c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint)]
        saved = {c.monitor: c.best_model_path for c in monitored}
        last_good = saved.get(None) or next((p for p in saved.values() if p), "")
        raise UserError(
            f"training stopped: {where}; last good checkpoint: {last_good or 'none yet'}; lower "
            "model.optimizer.lr, set trainer.gradient_clip_val=1.0, or model.nonfinite_loss=skip"
        )

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite in every process: skipping must be collective under DDP
        (Lightning does not support one process returning ``None`` alone)."""
        finite = bool(torch.isfinite(loss))
        if self._world_size() > 1:
            return self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        return finite

    def _world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def _skip(self) -> None:
        self.skipped_batches += 1
        self.log("train/skipped_batches", float(self.skipped_batches), on_step=True)
        return None

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
        kwargs = {}
        if takes_argument(self.scheduler_factory, "total_steps") and not has_argument(
            self.scheduler_factory, "total_steps", "epochs"
        ):  # OneCycleLR and warmup schedules: the whole run, in optimizer steps
            kwargs["total_steps"] = schedule_length(
                self.scheduler_factory, int(self.trainer.estimated_stepping_batches)
            )
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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoints from before val/acc_best was saved: start it afresh
        for name, value in self.val_acc_best.state_dict(prefix="val_acc_best.").items():
            checkpoint.get("state_dict", {}).setdefault(name, value)

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
        parts = build_model_parts(stored_config(checkpoint))
        model = cls(**{**checkpoint.get("hyper_parameters", {}), **parts, **kwargs})
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
        return model


def takes_argument(factory: Callable[..., Any], name: str) -> bool:
    """Whether the callable behind a (partial) factory accepts the keyword ``name``."""
    func = factory.func if isinstance(factory, functools.partial) else factory
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def schedule_length(factory: Callable[..., Any], steps: int) -> int:
    """``total_steps`` for a schedule over the run: ``steps``, one more where OneCycleLR's warm-up
    would end on step 0 (``pct_start * total_steps == 1``), which divides by zero in torch."""
    bound = factory.keywords if isinstance(factory, functools.partial) else {}
    pct_start = bound.get("pct_start")
    return steps + 1 if pct_start is not None and pct_start * steps == 1 else steps


def has_argument(factory: Callable[..., Any], *names: str) -> bool:
    """Whether a partial factory already binds any of ``names`` to a non-None value."""
    bound = factory.keywords if isinstance(factory, functools.partial) else {}
    return any(bound.get(name) is not None for name in names)


def fused_kwargs(
    factory: OptimizerFactory, fused: bool | None, device: torch.device
) -> dict[str, bool]:
    """``fused=True`` for the optimizer: ``None`` (auto) on CUDA when the optimizer takes it.

    A fused optimizer updates every parameter in one kernel instead of a few per tensor. An
    explicit ``fused`` in the optimizer config wins; ``true`` with an optimizer without it is an
    error.
    """
    if fused is False or has_argument(factory, "fused", "foreach"):
        return {}
    if not takes_argument(factory, "fused"):
        if fused:
            name = getattr(getattr(factory, "func", factory), "__name__", str(factory))
            raise UserError(f"model.fused_optimizer=true but {name} has no fused implementation")
        return {}
    return {"fused": True} if fused or device.type == "cuda" else {}


def build_model_parts(config: Mapping[str, Any]) -> dict[str, Any]:
    """The net, optimizer and scheduler of a stored (fully resolved) training config."""
    from hydra.utils import instantiate

    model_cfg = config.get("model")
    if not isinstance(model_cfg, Mapping) or "net" not in model_cfg:
        raise UserError(
            "the checkpoint's stored config has no model.net; it was not made by imgcls"
        )
    parts = {
        key: instantiate(model_cfg[key])
        for key in ("optimizer", "scheduler")
        if model_cfg.get(key) is not None
    }
    # the checkpoint holds the trained weights: pretrained ones are not read (nor needed) again
    pretrained = isinstance(model_cfg["net"], Mapping) and model_cfg["net"].get("weights")
    parts["net"] = instantiate(model_cfg["net"], **({"load_weights": False} if pretrained else {}))
    return parts
