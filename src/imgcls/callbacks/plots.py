"""Training curves and the augmented-image grid (``<run dir>/plots``, TensorBoard)."""

import csv
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn
from torchvision.utils import make_grid, save_image

from imgcls.evaluation.report import new_figure

CURVES = ("train/loss", "val/loss", "train/acc", "val/acc")


def training_curves_figure(history: dict[int, dict[str, float]]) -> Any:
    """Loss and accuracy per epoch, train vs val (epochs counted from 1)."""
    figure = new_figure(10, 4)
    for ax, kind in zip(figure.subplots(1, 2), ("loss", "acc"), strict=True):
        for split, style in (("train", "o-"), ("val", "s-")):
            name = f"{split}/{kind}"
            points = sorted(
                (e + 1, values[name]) for e, values in history.items() if name in values
            )
            if points:
                ax.plot(*zip(*points, strict=True), style, label=split, markersize=4)
                ax.legend()
        label = "accuracy" if kind == "acc" else "loss"
        ax.set(xlabel="epoch", ylabel=label, title=label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    return figure


def tensorboards(trainer: pl.Trainer) -> list[Any]:
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


class ClassificationPlots(pl.Callback):
    """``training_curves.png`` and ``.csv`` at the end of fit; checkpoints keep the history."""

    def __init__(self, save_dir: str | None = None) -> None:
        self.save_dir = save_dir
        self.history: dict[int, dict[str, float]] = {}  # epoch -> {metric: value}
        self.pending: tuple[pl.Trainer, int] | None = None  # an epoch whose train/ is unread

    def record(self, trainer: pl.Trainer, split: str, epoch: int) -> None:
        metrics, names = trainer.callback_metrics, (f"{split}/loss", f"{split}/acc")
        values = {n: float(metrics[n]) for n in names if n in metrics}
        self.history.setdefault(epoch, {}).update(values)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.record(trainer, "val", trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # callbacks run before the module's on_train_epoch_end, which logs the epoch's train
        # metrics: read them at the next hook (this epoch's checkpoint, the next epoch, the end)
        self.pending = (trainer, trainer.current_epoch)

    def read_pending(self, *_: Any) -> None:
        if self.pending is not None:
            self.record(self.pending[0], "train", self.pending[1])
            self.pending = None

    on_train_epoch_start = on_train_end = read_pending

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or not trainer.is_global_zero or not self.history:
            return
        out = Path(self.save_dir or Path(trainer.default_root_dir) / "plots")
        out.mkdir(parents=True, exist_ok=True)
        figure = training_curves_figure(self.history)
        figure.savefig(out / "training_curves.png")
        for writer in tensorboards(trainer):
            writer.add_figure("plots/training_curves", figure, trainer.global_step, close=False)
        with (out / "training_curves.csv").open("w", newline="") as f:
            epochs = sorted(self.history)
            rows = [[e + 1, *(self.history[e].get(n, "") for n in CURVES)] for e in epochs]
            csv.writer(f).writerows([["epoch", *CURVES], *rows])

    def state_dict(self) -> dict[str, Any]:
        self.read_pending()  # a checkpoint saved at an epoch's end holds that epoch
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(k): v for k, v in state_dict["history"].items()}


class AugmentationGrid(pl.Callback):
    """The first training images through the train pipeline, at the start (the RNG forked)."""

    def __init__(self, num_images: int = 32, nrow: int = 8, save_path: str | None = None) -> None:
        self.num_images, self.nrow, self.save_path = num_images, nrow, save_path
        self.grid: torch.Tensor | None = None  # the last grid, [3, H, W] in [0, 1]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pipeline = getattr(trainer.datamodule, "pipeline", None)
        splits = getattr(trainer.datamodule, "splits", None) or {}  # none: not in memory
        if not trainer.is_global_zero or pipeline is None or "train" not in splits:
            return
        device = pipeline.normalize.mean.device
        with torch.no_grad(), torch.random.fork_rng([device] if device.type == "cuda" else []):
            augmented = pipeline(splits["train"][0][: self.num_images].to(device), train=True)
            shown = pipeline.normalize.inverse(augmented).clamp(0, 1).cpu()
        self.grid = make_grid(shown, nrow=self.nrow, pad_value=1.0)
        for writer in tensorboards(trainer):
            writer.add_image("train/augmented_samples", self.grid, trainer.global_step)
        if self.save_path:
            Path(self.save_path).parent.mkdir(parents=True, exist_ok=True)
            save_image(self.grid, self.save_path)
