"""Mixup / CutMix of training batches and EMA weight averaging, through the composed configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from imgcls.models.classifier import ImageClassifier, batch_mixing
from imgcls.train import train
from imgcls.utils.errors import UserError


def digits_batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    from imgcls.data.digits import DigitsDataModule

    datamodule = DigitsDataModule()
    datamodule.setup("fit")
    images, labels = datamodule.splits["train"]
    return datamodule.preprocess(images[:n]), labels[:n]


def training_step_inputs(model: ImageClassifier, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the net saw, the training loss) of one ``training_step``."""
    seen = []
    hook = model.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    loss = model.training_step(batch, 0)
    hook.remove()
    return seen[0], loss


def test_mixup_trains_on_mixed_images_against_mixed_soft_targets(make_cfg) -> None:
    torch.manual_seed(0)
    model = instantiate(
        make_cfg("train", ["data=digits", "model.mixup_alpha=0.4", "model.label_smoothing=0"]).model
    )
    model.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    x, y = digits_batch()
    mixed, loss = training_step_inputs(model, (x, y))
    # mixup: each image is lam * itself + (1 - lam) * its neighbour in the batch
    partner = x.roll(1, 0)
    lam = ((mixed - partner) * (x - partner)).sum() / ((x - partner) ** 2).sum()
    assert 0 < lam < 1
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * partner, atol=1e-5, rtol=0)
    # the loss is the cross-entropy against the equally mixed one-hot targets
    target = lam * F.one_hot(y, 10).float() + (1 - lam) * F.one_hot(y.roll(1, 0), 10).float()
    with torch.no_grad():
        logits = model(mixed)
    torch.testing.assert_close(loss.detach(), F.cross_entropy(logits, target))
    assert not torch.allclose(loss.detach(), F.cross_entropy(logits, y))
    # train/acc scores the predictions against each soft target's dominant class
    expected_acc = (logits.argmax(1) == target.argmax(1)).float().mean()
    torch.testing.assert_close(model.train_acc.compute(), expected_acc)


def test_cutmix_pastes_a_box_from_the_neighbour_and_weighs_labels_by_area(make_cfg) -> None:
    torch.manual_seed(0)
    model = instantiate(make_cfg("train", ["data=digits", "model.cutmix_alpha=1.0"]).model)
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    mixed, soft = model.batch_mix(x, y)
    partner = x.roll(1, 0)
    from_partner = (mixed == partner) & (mixed != x)
    assert torch.all((mixed == x) | (mixed == partner))  # pixels are pasted, not blended
    rows, cols = from_partner[0, 0].any(1).nonzero(), from_partner[0, 0].any(0).nonzero()
    box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert 0 < box_area < 28 * 28
    assert torch.equal(from_partner.sum((1, 2, 3)), box_area.expand(8))  # one box for the batch
    lam = 1 - box_area / (28 * 28)
    torch.testing.assert_close(soft[torch.arange(8), y], lam.float().expand(8))
    torch.testing.assert_close(soft[torch.arange(8), y.roll(1, 0)], (1 - lam).float().expand(8))


def test_mixing_is_off_by_default_and_rejects_negative_alphas(make_cfg) -> None:
    assert instantiate(make_cfg("train", ["data=digits"]).model).batch_mix is None
    both = instantiate(
        make_cfg("train", ["data=digits", "model.mixup_alpha=0.2", "model.cutmix_alpha=1.0"]).model
    )
    assert type(both.batch_mix).__name__ == "RandomChoice"
    with pytest.raises(UserError, match="model.mixup_alpha must be >= 0"):
        batch_mixing(10, mixup_alpha=-1.0, cutmix_alpha=0.0)


@pytest.fixture(scope="module")
def ema_mixup_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """One epoch on digits with EMA weights (default decay 0.999), class weights, mixup + cutmix."""
    from .conftest import compose_config

    run_dir = tmp_path_factory.mktemp("ema_run")
    overrides = [
        "data=digits",
        "callbacks=ema",
        "model.class_weights=auto",
        "model.mixup_alpha=0.2",
        "model.cutmix_alpha=1.0",
        "model.label_smoothing=0",  # the loss the test recomputes: plain (weighted) cross-entropy
        "trainer.max_epochs=1",
        "~callbacks.plots",
        "seed=5",
    ]
    return run_dir, train(compose_config("train", overrides, run_dir))


def evaluate(state_dict: dict, checkpoint: dict, split: str = "val") -> tuple[float, float]:
    """(accuracy, loss) of ``state_dict`` on ``split``, the loss as validation computes it: class
    weighted cross-entropy per batch of 16, averaged over the images."""
    model = ImageClassifier.from_checkpoint({**checkpoint, "state_dict": state_dict}).eval()
    datamodule = instantiate(checkpoint["imgcls"]["config"]["data"])
    datamodule.setup("fit")
    images, labels = datamodule.splits[split]
    counts = datamodule.class_counts().float()
    weight = counts.sum() / (len(counts) * counts)  # model.class_weights=auto
    with torch.no_grad():
        logits = model(datamodule.preprocess(images))
    losses = [
        F.cross_entropy(batch, y, weight=weight) * len(y)
        for batch, y in zip(logits.split(16), labels.split(16), strict=True)
    ]
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return accuracy, (sum(losses) / len(labels)).item()


def test_ema_weights_are_validated_saved_and_tested(ema_mixup_run) -> None:
    run_dir, metrics = ema_mixup_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    averaged, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    steps = checkpoint["global_step"]
    assert int(checkpoint["averaging_state"]["n_averaged"]) == steps  # updated after every step
    assert not torch.equal(averaged["net.head.weight"], current["net.head.weight"])
    # validation ran on the averaged weights, with the class-weighted loss
    avg_acc, avg_loss = evaluate(averaged, checkpoint)
    raw_acc, raw_loss = evaluate(current, checkpoint)
    assert metrics["val/acc"] == pytest.approx(avg_acc, abs=1e-6)
    assert metrics["val/loss"] == pytest.approx(avg_loss, abs=1e-5)
    assert raw_loss != pytest.approx(metrics["val/loss"], abs=1e-5)
    # EMA's warm-up: after one epoch (77 steps) at decay 0.999 the average is no worse than the
    # raw weights beyond noise (0.02 = 4 of the 216 validation images); without the warm-up it
    # is still ~93% the initial weights (chance, 0.1)
    assert avg_acc >= raw_acc - 0.02
    # the one epoch's checkpoint is the best one, which train.py tests: with the averaged weights
    assert metrics["test/acc"] == pytest.approx(evaluate(averaged, checkpoint, "test")[0], abs=1e-6)
    assert metrics["test/acc"] > 0.7  # it learns (chance is 0.1; 0.84 when written)
