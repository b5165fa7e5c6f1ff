"""Training curves: train vs val loss and accuracy per epoch (``<run dir>/plots``, TensorBoard).

The test split's plots (confusion matrix, per-class numbers, mistakes) are in the evaluation
report (``callbacks/eval_report.py``); the grid of training inputs is ``AugmentationGrid``.
``~callbacks.plots`` switches the curves off.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn

from imgcls.evaluation.report import new_figure

CURVE_METRICS = ("train/loss", "val/loss", "train/acc", "val/acc")


def training_curves_figure(history: Mapping[int, Mapping[str, float]]) -> Any:
    """Loss and accuracy per epoch, train vs val (epochs counted from 1)."""
    from matplotlib.ticker import MaxNLocator

    figure = new_figure(10, 4)
    axes = figure.subplots(1, 2)
    epochs = sorted(history)
    for ax, kind in zip(axes, ("loss", "acc"), strict=True):
        for split, style in (("train", "o-"), ("val", "s-")):
            name = f"{split}/{kind}"
            points = [(e + 1, history[e][name]) for e in epochs if name in history[e]]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, label=split, markersize=4)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy" if kind == "acc" else "loss")
        ax.set_title("accuracy" if kind == "acc" else "loss")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return figure


# ---------------------------------------------------------------------------------- callback
class ClassificationPlots(pl.Callback):
    """Write ``training_curves.png`` and ``training_curves.csv`` (the plotted points) at the end
    of fit. The per-epoch history is kept in checkpoints, so resumed runs plot every epoch.
    Nothing is written during ``fast_dev_run``."""

    def __init__(self, save_dir: str | Path | None = None, log_to_tensorboard: bool = True) -> None:
        super().__init__()
        self.save_dir = Path(save_dir) if save_dir else None
        self.log_to_tensorboard = log_to_tensorboard
        #: epoch -> {metric: value}
        self.history: dict[int, dict[str, float]] = {}
        #: (trainer, epoch) whose train metrics are logged but not yet read
        self._pending_train_epoch: tuple[pl.Trainer, int] | None = None

    @staticmethod
    def _active(trainer: pl.Trainer) -> bool:
        return not trainer.fast_dev_run and not trainer.sanity_checking

    def _dir(self, trainer: pl.Trainer) -> Path:
        return self.save_dir or Path(trainer.default_root_dir) / "plots"

    def _record(self, trainer: pl.Trainer, names: Sequence[str], epoch: int | None = None) -> None:
        metrics = trainer.callback_metrics
        epoch = self.history.setdefault(trainer.current_epoch if epoch is None else epoch, {})
        for name in names:
            if name in metrics:
                epoch[name] = float(metrics[name])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer) and trainer.state.fn == TrainerFn.FITTING:
            self._record(trainer, ("val/loss", "val/acc"))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs this hook before the module's own on_train_epoch_end, where the epoch's
        # train metrics are logged: read them at the next hook that follows it (the checkpoint
        # save of this epoch, the next epoch's start or the end of training)
        if self._active(trainer):
            self._pending_train_epoch = (trainer, trainer.current_epoch)

    def _record_pending_train_metrics(self) -> None:
        if self._pending_train_epoch is not None:
            trainer, epoch = self._pending_train_epoch
            self._pending_train_epoch = None
            self._record(trainer, ("train/loss", "train/acc"), epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_pending_train_metrics()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_pending_train_metrics()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        if trainer.is_global_zero and self.history:
            figure = training_curves_figure(self.history)
            path = self._dir(trainer) / "training_curves.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path)
            for logger in trainer.loggers if self.log_to_tensorboard else []:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(
                        "plots/training_curves", figure, trainer.global_step, close=False
                    )
            self._write_curves_csv(trainer)

    def _write_curves_csv(self, trainer: pl.Trainer) -> None:
        """The plotted points as ``training_curves.csv``: epoch (from 1) and each metric."""
        with (self._dir(trainer) / "training_curves.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", *CURVE_METRICS])
            for epoch in sorted(self.history):
                values = self.history[epoch]
                writer.writerow([epoch + 1, *(values.get(name, "") for name in CURVE_METRICS)])

    def state_dict(self) -> dict[str, Any]:
        self._record_pending_train_metrics()  # a checkpoint saved at epoch end holds that epoch
        return {"history": {int(k): dict(v) for k, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(k): dict(v) for k, v in state_dict.get("history", {}).items()}
