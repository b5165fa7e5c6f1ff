"""LR schedules, early stopping and trainer keys: each config trains and the LR really moves."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch.optim.lr_scheduler import LambdaLR

from imgcls.models.schedulers import WarmupCosineFactor, warmup_cosine
from imgcls.train import build_trainer
from imgcls.utils.errors import UserError

TINY = [
    "data=digits",
    "trainer.limit_val_batches=1",
    "trainer.max_epochs=1",
    "+trainer.enable_checkpointing=false",
]


class LRRecorder(pl.Callback):
    """The learning rate each optimizer step uses."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def fit(make_cfg, overrides: list[str]) -> tuple[pl.Trainer, LRRecorder]:
    cfg = make_cfg("train", [*TINY, *overrides])
    recorder = LRRecorder()
    trainer = build_trainer(cfg, callbacks=[recorder], logger=False)
    trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
    return trainer, recorder


def test_onecycle_fills_total_steps_and_cycles_per_step(make_cfg) -> None:
    trainer, rec = fit(
        make_cfg,
        [
            "model/scheduler=onecycle",
            "model.scheduler.max_lr=0.02",
            "trainer.limit_train_batches=8",
        ],
    )
    config = trainer.lr_scheduler_configs[0]
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert config.interval == "step"
    assert config.scheduler.total_steps == 8  # filled by the classifier from the trainer
    assert rec.lrs[0] == pytest.approx(0.02 / 25)  # starts at max_lr / div_factor
    peak = max(range(8), key=lambda i: rec.lrs[i])
    assert rec.lrs[peak] == pytest.approx(0.02, rel=0.05)
    assert 0 < peak < 7
    assert rec.lrs[-1] < rec.lrs[0]  # annealed below the start


def test_onecycle_trains_when_warmup_would_end_on_step_zero(make_cfg) -> None:
    """tinynet's schedule (pct_start 0.25) over exactly 4 steps: torch's OneCycleLR divides by 0."""
    trainer, rec = fit(make_cfg, ["model=tinynet", "trainer.limit_train_batches=4"])
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 5
    assert len(rec.lrs) == 4 and rec.lrs[-1] < max(rec.lrs)


def test_cosine_warmup_ramps_up_then_decays(make_cfg) -> None:
    trainer, rec = fit(
        make_cfg,
        [
            "model/scheduler=cosine_warmup",
            "model.scheduler.warmup_steps=2",
            "model.optimizer.lr=0.01",
            "trainer.limit_train_batches=8",
        ],
    )
    assert trainer.lr_scheduler_configs[0].interval == "step"
    factor = WarmupCosineFactor(total_steps=8, warmup_steps=2, min_lr_ratio=0.0)
    assert rec.lrs == pytest.approx([0.01 * factor(i) for i in range(8)])
    assert rec.lrs[0] == pytest.approx(0.005) and rec.lrs[1] == pytest.approx(0.01)
    assert all(rec.lrs[i] > rec.lrs[i + 1] for i in range(1, 7))  # decays after the peak
    assert rec.lrs[-1] == pytest.approx(0.0, abs=1e-12)  # min_lr_ratio=0 at the last step


def test_multistep_drops_at_the_milestone_epoch(make_cfg) -> None:
    trainer, rec = fit(
        make_cfg,
        [
            "model/scheduler=multistep",
            "model.scheduler.milestones=[1]",
            "model.optimizer.lr=0.01",
            "trainer.limit_train_batches=2",
            "trainer.max_epochs=2",
        ],
    )
    assert trainer.lr_scheduler_configs[0].interval == "epoch"
    assert rec.lrs == pytest.approx([0.01, 0.01, 0.001, 0.001])


def test_plateau_monitors_val_loss_and_halves_the_lr(make_cfg) -> None:
    # threshold=1: no epoch counts as an improvement, so patience=0 reduces after every epoch
    trainer, rec = fit(
        make_cfg,
        [
            "model/scheduler=plateau",
            "model.scheduler.patience=0",
            "model.scheduler.threshold=1.0",
            "model.optimizer.lr=0.01",
            "trainer.limit_train_batches=2",
            "trainer.max_epochs=2",
        ],
    )
    config = trainer.lr_scheduler_configs[0]
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert config.monitor == "val/loss"
    assert rec.lrs == pytest.approx([0.01, 0.01, 0.005, 0.005])


def test_warmup_cosine_factory_contract() -> None:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps=100, warmup_fraction=0.1, min_lr_ratio=0.1)
    assert isinstance(scheduler, LambdaLR)
    factor = scheduler.lr_lambdas[0]
    assert factor.warmup_steps == 10
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)  # peak
    assert factor(10) < 1.0
    halfway = 9 + (99 - 9) / 2
    assert factor(halfway) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(99) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)
    assert scheduler.state_dict()["lr_lambdas"][0]["warmup_steps"] == 10  # resumable
    assert warmup_cosine(optimizer, total_steps=10, warmup_fraction=0.0).lr_lambdas[0](0) == 1.0
    with pytest.raises(UserError, match="shorter than the run"):
        warmup_cosine(optimizer, total_steps=5, warmup_steps=5)
    with pytest.raises(UserError, match="warmup_fraction"):
        warmup_cosine(optimizer, total_steps=5, warmup_fraction=1.5)


def test_early_stopping_clipping_and_accumulation(make_cfg) -> None:
    """callbacks=early_stopping stops a run; clipping and accumulation are plain trainer keys."""
    cfg = make_cfg(
        "train",
        [
            *TINY,
            "callbacks=early_stopping",
            "callbacks.early_stopping.patience=0",
            "callbacks.early_stopping.min_delta=1.0",  # no epoch improves val/acc by 1.0
            "~callbacks.model_checkpoint",
            "~callbacks.last_checkpoint",
            "~callbacks.lr_monitor",
            "trainer.limit_train_batches=4",
            "trainer.max_epochs=5",
            "trainer.gradient_clip_val=0.5",
            "trainer.accumulate_grad_batches=2",
        ],
    )
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = build_trainer(cfg, callbacks=callbacks, logger=False)
    assert trainer.gradient_clip_val == 0.5 and trainer.accumulate_grad_batches == 2
    trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
    assert trainer.current_epoch == 2  # stopped after 2 of 5 epochs (patience 0 after the first)
    assert trainer.global_step == 4  # 4 batches an epoch, 2 per optimizer step, 2 epochs
