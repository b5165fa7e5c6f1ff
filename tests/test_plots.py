"""Plot callbacks: every PNG is written, is a real image, reaches TensorBoard, and can be off."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcls.callbacks.plots import ClassificationPlots
from imgcls.evaluation.report import for_display
from imgcls.train import train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("plots/training_curves", "report/confusion_matrix")
REPORT = ("confusion_matrix_normalized", "reliability")
TINY = [
    "data=digits",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=3",
    "data.batch_size=16",
]


def assert_png(path: Path, min_bytes: int = 5_000) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width >= 300 and image.height >= 200
        assert len(set(image.convert("L").getdata())) > 10  # a drawing, not a blank canvas
        return image.size


@pytest.fixture(scope="module")
def plotted_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """Two short epochs with the default callbacks (plots included) and TensorBoard."""
    from .conftest import compose_config

    run_dir = tmp_path_factory.mktemp("plotted_run")
    cfg = compose_config(
        "train", [*TINY, "trainer.max_epochs=2", "extras.eval_report=true"], run_dir
    )
    return run_dir, train(cfg)


def test_every_plot_is_a_png_in_the_run_dir(plotted_run) -> None:
    run_dir, _ = plotted_run
    for name in PLOTS:
        assert_png(run_dir / f"{name}.png")
    for name in REPORT:
        assert_png(run_dir / "report" / f"{name}.png")
    assert not (run_dir / "report" / "mistakes.png").exists()  # no gallery at train time
    with Image.open(run_dir / "plots" / "augmented_samples.png") as grid:  # 4 rows of 8 28px images
        assert grid.size == (8 * 30 + 2, 4 * 30 + 2) and len(set(grid.convert("L").getdata())) > 10


def test_plots_are_logged_to_tensorboard(plotted_run) -> None:
    run_dir, _ = plotted_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"plots/training_curves", "train/augmented_samples"} <= set(events.Tags()["images"])
    image = events.Images("plots/training_curves")[-1]
    assert image.width > 300 and image.encoded_image_string[:8] == PNG_SIGNATURE


def test_confusion_matrix_counts_every_test_image(plotted_run) -> None:
    run_dir, metrics = plotted_run
    rows = list(csv.reader((run_dir / "report" / "confusion_matrix.csv").open()))
    assert rows[0][1:] == [str(d) for d in range(10)]  # the datamodule's class names
    counts = torch.tensor([[int(v) for v in row[1:]] for row in rows[1:]])
    assert counts.sum() == 3 * 16  # limit_test_batches=3 of 16 images
    assert counts.diag().sum() / counts.sum() == pytest.approx(metrics["test/acc"])


def test_plots_and_report_can_be_switched_off(make_cfg) -> None:
    cfg = make_cfg(
        "train",
        [
            *TINY,
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "~callbacks.augmentation_grid",
            "extras.eval_report=false",
        ],
    )
    train(cfg)
    written = sorted(p.name for p in (Path(cfg.paths.output_dir) / "plots").iterdir())
    assert written == ["training_curves.csv", "training_curves.png"]
    assert not (Path(cfg.paths.output_dir) / "report").exists()


def test_display_rescaling() -> None:
    normalised = torch.randn(5, 3, 8, 8) * 3 - 1
    shown = for_display(normalised)
    assert shown.shape == (5, 8, 8, 3)
    assert shown.flatten(1).min(dim=1).values.tolist() == pytest.approx([0.0] * 5)
    assert shown.flatten(1).max(dim=1).values.tolist() == pytest.approx([1.0] * 5)


def test_history_survives_a_checkpoint_round_trip() -> None:
    plots = ClassificationPlots()
    plots.history = {0: {"train/loss": 2.0, "val/acc": 0.3}, 1: {"train/loss": 1.5}}
    restored = ClassificationPlots()
    restored.load_state_dict(plots.state_dict())
    assert restored.history == plots.history


def scalars_by_epoch(run_dir: Path, tag: str) -> dict[int, float]:
    """TensorBoard's values of ``tag`` keyed by the epoch logged at the same step."""
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    epoch_at = {e.step: int(e.value) for e in events.Scalars("epoch")}
    return {epoch_at[e.step]: e.value for e in events.Scalars(tag)}


def plotted_points(history, split: str, kind: str) -> dict[int, float]:
    """The (epoch, value) points the training-curves figure draws for ``split``."""
    from imgcls.callbacks.plots import training_curves_figure

    figure = training_curves_figure(history)
    ax = figure.axes[0 if kind == "loss" else 1]
    (line,) = [line for line in ax.get_lines() if line.get_label() == split]
    return dict(zip(map(int, line.get_xdata()), line.get_ydata().tolist(), strict=True))


@pytest.mark.parametrize("resumed", [False, True], ids=["one_run", "resumed_after_epoch_2"])
def test_training_curves_plot_every_epoch_at_its_own_epoch(make_cfg, resumed: bool) -> None:
    """Epoch n's train/loss (as in TensorBoard) is drawn at epoch n+1 (1-based); none dropped."""
    # a per-epoch schedule: OneCycle's length is fixed by max_epochs, which the resume raises
    common = [*TINY, "trainer.limit_test_batches=1", "model/scheduler=step"]
    cfg = make_cfg("train", [*common, "trainer.max_epochs=3"])
    run_dir = Path(cfg.paths.output_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resumed:  # killed after epoch 2, continued in the same run dir
        train(make_cfg("train", [*common, "trainer.max_epochs=2", "test=false"]))
        cfg.ckpt_path = str(last)
    train(cfg)
    state = torch.load(last, weights_only=True)
    (history,) = [s["history"] for k, s in state["callbacks"].items() if "ClassificationPlots" in k]
    for split, kind in (("train", "loss"), ("train", "acc"), ("val", "acc")):
        logged = scalars_by_epoch(run_dir, f"{split}/{kind}")
        assert sorted(logged) == [0, 1, 2]
        expected = {epoch + 1: value for epoch, value in logged.items()}
        assert plotted_points(history, split, kind) == pytest.approx(expected)
    rows = list(csv.DictReader((run_dir / "plots" / "training_curves.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    logged = scalars_by_epoch(run_dir, "train/loss")
    assert [float(r["train/loss"]) for r in rows] == pytest.approx([logged[e] for e in range(3)])
