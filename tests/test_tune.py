"""tune=lr_find and tune=batch_size (Lightning's Tuner) on digits: reported, or applied."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from imgcls.train import run, train
from imgcls.tune import LR_FINDER_BETA, suggest_lr
from imgcls.utils.errors import UserError

SHORT = [
    "data=digits",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",  # not 4: OneCycleLR(pct_start=0.25) divides by zero at 4
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "callbacks=last_checkpoint",
    "logger=csv",
]
LR_FIND = ["tune=lr_find", "tune.num_training=30", "tune.min_lr=1e-5", "tune.max_lr=1"]


def test_lr_find_reports_the_suggestion_with_its_plot_and_trains_nothing(make_cfg, caplog) -> None:
    cfg = make_cfg("train", [*SHORT, *LR_FIND])
    configured_lr = cfg.model.optimizer.lr
    with caplog.at_level("INFO", logger="imgcls.tune"):
        result = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    found = json.loads((run_dir / "lr_find.json").read_text())
    assert result == {"tune/lr": pytest.approx(found["suggestion"])}
    assert found["suggestion"] == suggest_lr(found["lr"], found["loss"])
    assert 10 <= len(found["lr"]) == len(found["loss"]) <= 30  # one step per learning rate
    assert found["lr"] == sorted(found["lr"])
    assert (run_dir / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert not (run_dir / "checkpoints").exists()  # nothing trained
    assert f"model.optimizer.lr={found['suggestion']:g}" in caplog.text
    assert cfg.model.optimizer.lr == configured_lr  # the config is left as it was


def test_lr_find_applied_trains_exactly_like_a_run_given_that_lr(make_cfg) -> None:
    tuned_cfg = make_cfg("train", [*SHORT, *LR_FIND, "tune.apply=true"], subdir="tuned")
    tuned = train(tuned_cfg)
    tuned_dir = Path(tuned_cfg.paths.output_dir)
    lr = json.loads((tuned_dir / "lr_find.json").read_text())["suggestion"]
    saved = OmegaConf.load(tuned_dir / "config.yaml")
    assert saved.model.optimizer.lr == pytest.approx(lr)  # recorded as the run's lr
    plain_cfg = make_cfg("train", [*SHORT, f"model.optimizer.lr={lr!r}"], subdir="plain")
    plain = train(plain_cfg)
    assert tuned["test/acc"] == pytest.approx(plain["test/acc"])
    tuned_state, plain_state = (
        torch.load(Path(c.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)[
            "state_dict"
        ]
        for c in (tuned_cfg, plain_cfg)
    )
    assert all(torch.equal(tuned_state[k], plain_state[k]) for k in plain_state)


def test_batch_size_finder_doubles_and_applies_the_batch_size(make_cfg) -> None:
    overrides = [*SHORT, "tune=batch_size", "tune.max_trials=2", "tune.steps_per_trial=1"]
    report = make_cfg("train", overrides, subdir="report")
    assert train(report) == {"tune/batch_size": 32.0}  # 16 worked, 32 worked, trials used up
    found = json.loads((Path(report.paths.output_dir) / "batch_size.json").read_text())
    assert found["batch_size"] == 32 and found["init_val"] == 16
    applied = make_cfg("train", [*overrides, "tune.apply=true"], subdir="applied")
    metrics = train(applied)
    assert "test/acc" in metrics
    assert OmegaConf.load(Path(applied.paths.output_dir) / "config.yaml").data.batch_size == 32


def test_tuning_only_returns_no_sweep_objective_and_bad_options_are_one_line(make_cfg) -> None:
    assert run(make_cfg("train", [*SHORT, *LR_FIND])) is None
    with pytest.raises(UserError, match="cannot run with trainer.fast_dev_run"):
        train(make_cfg("train", ["data=digits", "tune=lr_find", "trainer.fast_dev_run=true"]))


def lightning_smoothed(raw: np.ndarray) -> list[float]:
    """Lightning's lr-finder curve of raw losses: its moving average and bias correction."""
    avg, out = 0.0, []
    for step, loss in enumerate(raw):
        avg = LR_FINDER_BETA * avg + (1 - LR_FINDER_BETA) * loss
        out.append(avg / (1 - LR_FINDER_BETA ** (step + 2)))
    return out


def test_suggested_lr_is_in_the_descent_not_in_the_noise_of_the_first_steps() -> None:
    lrs = np.logspace(-6, 1, 300)
    rng = np.random.default_rng(0)
    # flat and noisy up to 1e-2, falling fastest at 0.1, lowest at 0.5, then diverging
    raw = 2.3 - 1.2 / (1 + (0.1 / lrs) ** 2) + rng.normal(0, 0.05, len(lrs))
    raw = np.where(lrs > 0.5, raw + 20 * (lrs - 0.5), raw)
    losses = lightning_smoothed(raw)
    assert np.argmin(losses) == 0  # the first point reads lowest: not a minimum to pick
    assert 0.01 <= suggest_lr(lrs, losses) < 0.5  # falling, before the lowest loss
    assert suggest_lr(lrs, lightning_smoothed(2.3 + lrs)) is None  # never falls: no suggestion


@pytest.mark.slow
def test_lr_find_applied_on_digits_trains_as_well_as_the_default_lr(make_cfg) -> None:
    """Issue 20 item 9: the suggestion (9.5e-05) reached val/acc_best 0.028 vs 0.77 untuned."""
    one_epoch = ["data=digits", "trainer.max_epochs=1", "callbacks=none", "logger=csv"]
    default = train(make_cfg("train", one_epoch, subdir="default"))
    tuned_cfg = make_cfg("train", [*one_epoch, "tune=lr_find", "tune.apply=true"], subdir="tuned")
    tuned = train(tuned_cfg)
    assert tuned_cfg.model.optimizer.lr != 0.1  # the tuned lr was used
    # threshold: within 5 points of the default lr's accuracy after one epoch (about 0.8)
    assert tuned["val/acc_best"] >= default["val/acc_best"] - 0.05, (tuned, default)
