"""Plots people look at: training curves, confusion matrix, per-class accuracy, image grids.

``ClassificationPlots`` writes each figure as a PNG into ``save_dir`` (the run's ``plots/``) and
logs it to every TensorBoard logger (``IMAGES`` tab, tags ``plots/<name>``). Each plot can be
switched off (``callbacks.plots.confusion_matrix=false``), or all of them (``~callbacks.plots``).
Matplotlib draws off-screen on the Agg canvas, without pyplot's global state.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn

log = logging.getLogger(__name__)

CURVE_METRICS = ("train/loss", "val/loss", "train/acc", "val/acc")


# ---------------------------------------------------------------------------------- figures
def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def for_display(images: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` model inputs (normalised) -> ``[N, H, W, C]`` in [0, 1], min-max per image.

    One channel stays one channel (shown in grey); more than three keep the first three.
    """
    images = images.detach().float().cpu()[:, :3]
    flat = images.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    scaled = (images - low) / (high - low).clamp_min(1e-8)
    return scaled.permute(0, 2, 3, 1)


def short(name: str, width: int = 14) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def image_grid_figure(images: torch.Tensor, titles: Sequence[str], title: str = "") -> Any:
    """A grid of images (model inputs, rescaled per image), each with its own title."""
    shown = for_display(images)
    n = len(shown)
    cols = min(8, max(1, math.ceil(math.sqrt(n))))
    rows = max(1, math.ceil(n / cols))
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    figure = new_figure(1.7 * cols, (1.5 + 0.25 * lines) * rows + (0.4 if title else 0))
    axes = figure.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        image = shown[i]
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(image.numpy())
        ax.set_title(titles[i], fontsize=8)
    if title:
        figure.suptitle(title)
    return figure


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


def confusion_matrix_figure(matrix: torch.Tensor, class_names: Sequence[str]) -> Any:
    """Rows: true class, columns: predicted; colour = fraction of the true class, text = count."""
    counts = matrix.cpu().long()
    n = len(counts)
    rates = counts.float() / counts.sum(dim=1, keepdim=True).clamp_min(1)
    side = min(20.0, max(5.0, 0.45 * n + 2))
    figure = new_figure(side + 1.2, side)
    ax = figure.subplots()
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 40:
        labels = [short(c, 12) for c in class_names]
        vertical = n > 10 and max(map(len, labels)) > 3
        ax.set_xticks(range(n), labels, rotation=90 if vertical else 0, fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                colour = "white" if rates[i, j] > 0.5 else "black"
                ax.text(
                    j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7, color=colour
                )
    accuracy = counts.diag().sum().item() / max(1, counts.sum().item())
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (test, accuracy {accuracy:.4f})")
    return figure


def per_class_accuracy(matrix: torch.Tensor) -> torch.Tensor:
    """Recall of each class (NaN for a class without test images)."""
    counts = matrix.cpu().double()
    support = counts.sum(dim=1)
    return torch.where(support > 0, counts.diag() / support.clamp_min(1), torch.nan)


def per_class_accuracy_figure(matrix: torch.Tensor, class_names: Sequence[str]) -> Any:
    accuracy = per_class_accuracy(matrix)
    overall = matrix.diag().sum().item() / max(1, matrix.sum().item())
    n = len(accuracy)
    labels = [short(c, 16) for c in class_names]
    values = accuracy.nan_to_num(0.0).numpy()
    if n <= 15:
        figure = new_figure(max(5.0, 0.6 * n + 2), 4)
        ax = figure.subplots()
        ax.bar(range(n), values, color="tab:blue")
        long_labels = n > 8 and max(map(len, labels)) > 3
        ax.set_xticks(range(n), labels, rotation=45 if long_labels else 0, fontsize=8)
        ax.axhline(overall, color="tab:red", linestyle="--", label=f"overall {overall:.4f}")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
    else:
        figure = new_figure(7, min(40.0, 0.25 * n + 1.5))
        ax = figure.subplots()
        ax.barh(range(n), values, color="tab:blue")
        ax.set_yticks(range(n), labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(overall, color="tab:red", linestyle="--", label=f"overall {overall:.4f}")
        ax.set_xlim(0, 1.05)
        ax.set_xlabel("accuracy")
    ax.legend(loc="lower right")
    ax.set_title("per-class accuracy (test)")
    return figure


# ---------------------------------------------------------------------------------- callback
class ClassificationPlots(pl.Callback):
    """Write training curves at the end of fit and test-set plots at the end of test.

    - ``training_curves``: train vs val loss and accuracy per epoch (``training_curves.png``)
    - ``confusion_matrix``: counts and rates on the test set (``confusion_matrix.png`` + ``.csv``)
    - ``per_class_accuracy``: accuracy of every class on the test set (``per_class_accuracy.png``)
    - ``misclassified``: the ``max_misclassified`` most confidently wrong test images with true
      and predicted labels (``misclassified.png``)
    - ``input_samples``: ``num_samples`` images of the first training batch exactly as the model
      gets them (augmented), with labels (``input_samples.png``), written when training starts

    Test predictions are gathered in ``on_test_batch_end``: from the test step's outputs when
    they carry ``logits``, else by one extra forward pass of the batch. Only a running confusion
    matrix and at most ``max_misclassified`` images are kept. Nothing is written during
    ``fast_dev_run``.
    """

    def __init__(
        self,
        save_dir: str | Path | None = None,
        training_curves: bool = True,
        confusion_matrix: bool = True,
        per_class_accuracy: bool = True,
        misclassified: bool = True,
        input_samples: bool = True,
        max_misclassified: int = 25,
        num_samples: int = 32,
        log_to_tensorboard: bool = True,
    ) -> None:
        super().__init__()
        self.save_dir = Path(save_dir) if save_dir else None
        self.enabled = {
            "training_curves": training_curves,
            "confusion_matrix": confusion_matrix,
            "per_class_accuracy": per_class_accuracy,
            "misclassified": misclassified,
            "input_samples": input_samples,
        }
        self.max_misclassified = int(max_misclassified)
        self.num_samples = int(num_samples)
        self.log_to_tensorboard = log_to_tensorboard
        #: epoch -> {metric: value}, kept in checkpoints so resumed runs plot every epoch
        self.history: dict[int, dict[str, float]] = {}
        #: the paths written so far
        self.written: dict[str, Path] = {}
        self._samples_done = False
        #: (trainer, epoch) whose train metrics are logged but not yet read
        self._pending_train_epoch: tuple[pl.Trainer, int] | None = None
        self._reset_test_state()

    # -------------------------------------------------------------- helpers
    def _reset_test_state(self) -> None:
        self.matrix: torch.Tensor | None = None
        self._wrong_images: torch.Tensor | None = None
        self._wrong_conf = torch.empty(0)
        self._wrong_true = torch.empty(0, dtype=torch.long)
        self._wrong_pred = torch.empty(0, dtype=torch.long)

    @staticmethod
    def _active(trainer: pl.Trainer) -> bool:
        return not trainer.fast_dev_run and not trainer.sanity_checking

    def _dir(self, trainer: pl.Trainer) -> Path:
        return self.save_dir or Path(trainer.default_root_dir) / "plots"

    @staticmethod
    def class_names(trainer: pl.Trainer, n: int) -> list[str]:
        """The datamodule's class names, else "0" .. "n-1"."""
        names = getattr(trainer.datamodule, "class_names", None) if trainer.datamodule else None
        names = [str(c) for c in names] if names else []
        return names if len(names) >= n else [*names, *map(str, range(len(names), n))]

    def _write(self, trainer: pl.Trainer, name: str, figure: Any) -> Path:
        """Save as ``<save_dir>/<name>.png`` and log to every TensorBoard logger."""
        path = self._dir(trainer) / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
        if self.log_to_tensorboard:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(
                        f"plots/{name}", figure, global_step=trainer.global_step, close=False
                    )
        self.written[name] = path
        return path

    # -------------------------------------------------------------- training
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._samples_done or not self.enabled["input_samples"] or not self._active(trainer):
            return
        self._samples_done = True
        if not trainer.is_global_zero:
            return
        images, labels = batch[0][: self.num_samples], batch[1][: self.num_samples]
        names = self.class_names(trainer, int(labels.max()) + 1 if len(labels) else 0)
        titles = [short(names[y]) for y in labels.tolist()]
        figure = image_grid_figure(
            images, titles, "training inputs as the model gets them (rescaled per image)"
        )
        self._write(trainer, "input_samples", figure)

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
        if not (self.enabled["training_curves"] and self._active(trainer)):
            return
        if trainer.is_global_zero and self.history:
            self._write(trainer, "training_curves", training_curves_figure(self.history))
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

    # -------------------------------------------------------------- test
    def _needs_predictions(self) -> bool:
        return any(
            self.enabled[k] for k in ("confusion_matrix", "per_class_accuracy", "misclassified")
        )

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_test_state()

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not (self._needs_predictions() and self._active(trainer)):
            return
        images, labels = batch[0], batch[1]
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if logits is None:
            with torch.no_grad():
                logits = pl_module(images)
        confidence, preds = logits.detach().float().softmax(dim=1).max(dim=1)
        n = logits.shape[1]
        if self.matrix is None:
            self.matrix = torch.zeros(n, n, dtype=torch.long, device=labels.device)
        self.matrix += torch.bincount(labels * n + preds, minlength=n * n).view(n, n)
        if self.enabled["misclassified"] and self.max_misclassified > 0:
            self._keep_most_confident_mistakes(images, labels, preds, confidence)

    def _keep_most_confident_mistakes(
        self, images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, conf: torch.Tensor
    ) -> None:
        wrong = (preds != labels).nonzero().flatten()
        if len(wrong) == 0:
            return
        wrong = wrong[conf[wrong].argsort(descending=True)[: self.max_misclassified]]
        new_images = images[wrong].detach().cpu()
        if self._wrong_images is None:
            self._wrong_images = new_images
        else:
            self._wrong_images = torch.cat([self._wrong_images, new_images])
        self._wrong_conf = torch.cat([self._wrong_conf, conf[wrong].float().cpu()])
        self._wrong_true = torch.cat([self._wrong_true, labels[wrong].cpu()])
        self._wrong_pred = torch.cat([self._wrong_pred, preds[wrong].cpu()])
        keep = self._wrong_conf.argsort(descending=True)[: self.max_misclassified]
        self._wrong_images = self._wrong_images[keep]
        self._wrong_conf, self._wrong_true = self._wrong_conf[keep], self._wrong_true[keep]
        self._wrong_pred = self._wrong_pred[keep]

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.matrix is None or not self._active(trainer):
            return
        matrix = trainer.strategy.reduce(self.matrix, reduce_op="sum")  # all ranks' test shards
        if not trainer.is_global_zero:
            return
        matrix = matrix.cpu().long()
        names = self.class_names(trainer, len(matrix))
        if self.enabled["confusion_matrix"]:
            self._write(trainer, "confusion_matrix", confusion_matrix_figure(matrix, names))
            with (self._dir(trainer) / "confusion_matrix.csv").open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["true \\ predicted", *names])
                writer.writerows(
                    [name, *row] for name, row in zip(names, matrix.tolist(), strict=True)
                )
        if self.enabled["per_class_accuracy"]:
            self._write(trainer, "per_class_accuracy", per_class_accuracy_figure(matrix, names))
        if self.enabled["misclassified"] and self._wrong_images is not None:
            titles = [
                f"true: {short(names[t])}\npred: {short(names[p])} ({c:.2f})"
                for t, p, c in zip(
                    self._wrong_true.tolist(),
                    self._wrong_pred.tolist(),
                    self._wrong_conf.tolist(),
                    strict=True,
                )
            ]
            figure = image_grid_figure(
                self._wrong_images, titles, "most confidently misclassified test images"
            )
            self._write(trainer, "misclassified", figure)
