"""Training curves: train vs val loss and accuracy per epoch (``<run dir>/plots``, TensorBoard).
The test split's plots are in the evaluation report; ``~callbacks.plots`` switches these off."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn

from imgcls.evaluation.report import new_figure

CURVES = ("train/loss", "val/loss", "train/acc", "val/acc")


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
        label = "accuracy" if kind == "acc" else "loss"
        ax.set(xlabel="epoch", ylabel=label, title=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return figure


class ClassificationPlots(pl.Callback):
    """Write ``training_curves.png`` and ``.csv`` (the plotted points) at the end of fit (not
    during ``fast_dev_run``). The history is kept in checkpoints: resumed runs plot every epoch."""

    def __init__(self, save_dir: str | Path | None = None, log_to_tensorboard: bool = True) -> None:
        super().__init__()
        self.save_dir = Path(save_dir) if save_dir else None
        self.log_to_tensorboard = log_to_tensorboard
        self.history: dict[int, dict[str, float]] = {}  # epoch -> {metric: value}
        self._pending: tuple[pl.Trainer, int] | None = None  # train metrics not yet read

    def _record(self, trainer: pl.Trainer, names: Sequence[str], epoch: int) -> None:
        values = self.history.setdefault(epoch, {})
        values |= {
            n: float(trainer.callback_metrics[n]) for n in names if n in trainer.callback_metrics
        }

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if active(trainer) and trainer.state.fn == TrainerFn.FITTING:
            self._record(trainer, ("val/loss", "val/acc"), trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs this hook before the module's own on_train_epoch_end, where the epoch's
        # train metrics are logged: read them at the next hook that follows it (the checkpoint
        # save of this epoch, the next epoch's start or the end of training)
        if active(trainer):
            self._pending = (trainer, trainer.current_epoch)

    def _read_pending(self, *_: Any) -> None:
        if self._pending is not None:
            (trainer, epoch), self._pending = self._pending, None
            self._record(trainer, ("train/loss", "train/acc"), epoch)

    on_train_epoch_start = on_train_end = _read_pending

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (active(trainer) and trainer.is_global_zero and self.history):
            return
        out = self.save_dir or Path(trainer.default_root_dir) / "plots"
        out.mkdir(parents=True, exist_ok=True)
        figure = training_curves_figure(self.history)
        figure.savefig(out / "training_curves.png")
        for logger in trainer.loggers if self.log_to_tensorboard else []:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(
                    "plots/training_curves", figure, trainer.global_step, close=False
                )
        with (out / "training_curves.csv").open("w", newline="") as f:
            rows = [
                [e + 1, *(self.history[e].get(n, "") for n in CURVES)] for e in sorted(self.history)
            ]
            csv.writer(f).writerows([["epoch", *CURVES], *rows])

    def state_dict(self) -> dict[str, Any]:
        self._read_pending()  # a checkpoint saved at epoch end holds that epoch
        return {"history": {int(k): dict(v) for k, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(k): dict(v) for k, v in state_dict.get("history", {}).items()}


def active(trainer: pl.Trainer) -> bool:
    return not trainer.fast_dev_run and not trainer.sanity_checking
