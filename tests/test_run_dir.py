"""The run-dir contract and the run plumbing around it (issue #12)."""

from __future__ import annotations

import logging
import os

import pytest
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from imgcls.run_dir import RunDir, log_start, resume_arguments
from imgcls.train import train
from imgcls.utils.errors import UserError
from imgcls.utils.runs import ensure_seed

from .conftest import run_cli

TINY = ["data=digits", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


def test_seed_null_is_drawn_once_for_every_ddp_process(make_cfg, monkeypatch) -> None:
    """Lightning starts DDP ranks 1.. by re-running the command with a copy of the environment."""
    monkeypatch.setattr(os, "environ", dict(os.environ))
    parent = make_cfg("train", ["data=digits", "seed=null"], subdir="rank0")
    seed = ensure_seed(parent)
    child_environment = {**os.environ, "LOCAL_RANK": "1"}  # what the launcher gives a child
    monkeypatch.setattr(os, "environ", child_environment)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    child = make_cfg("train", ["data=digits", "seed=null"], subdir="rank1")
    assert ensure_seed(child) == seed


def test_optimized_metric_typo_fails_before_training(make_cfg, monkeypatch) -> None:
    def no_fit(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        pytest.fail("training started before optimized_metric was checked")

    monkeypatch.setattr(pl.Trainer, "fit", no_fit)
    typo = make_cfg("train", [*TINY, "optimized_metric=val/acc_bset"], subdir="typo")
    with pytest.raises(UserError, match="optimized_metric=val/acc_bset is not a metric"):
        train(typo)
    untested = make_cfg("train", [*TINY, "optimized_metric=test/acc", "test=false"], subdir="t")
    with pytest.raises(UserError, match="optimized_metric=test/acc is not a metric"):
        train(untested)


def test_ckpt_path_inside_a_run_dir_starts_a_new_run(tmp_path) -> None:
    run = tmp_path / "logs" / "train" / "runs" / "old"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- model=convnet\n- trainer.max_epochs=4\n")
    (run / "checkpoints").mkdir()
    ckpt = run / "checkpoints" / "epoch_003.ckpt"
    ckpt.write_bytes(b"")
    args = [f"ckpt_path={ckpt}", "trainer.max_epochs=8"]
    assert resume_arguments(args) == args  # no hydra.run.dir=<old run>, nothing replayed


def test_search_over_a_key_the_model_lacks_is_refused_in_one_line(tmp_path) -> None:
    result = run_cli(
        "train.py",
        "hparams_search=mnist_optuna",
        "model=resnet18",
        "data=digits",
        "hydra.sweeper.n_trials=1",
        "trainer.fast_dev_run=true",
        "extras.print_config=false",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: hparams_search searches model.net.dropout, which model=resnet18 does not have; "
        "pick a model that has it or search your own hydra.sweeper.params"
    )
    assert not list((tmp_path / "logs").rglob("status.json"))  # refused before any trial


def fake_run(path, overrides: str, checkpoint: str | None = "last.ckpt"):  # noqa: ANN001, ANN201
    """A run dir as train.py leaves it: Hydra's overrides and, optionally, a checkpoint."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(overrides)
    if checkpoint:
        (path / "checkpoints").mkdir()
        (path / "checkpoints" / checkpoint).write_bytes(b"")
    return path


def test_resume_replays_the_run_in_its_own_dir_and_new_arguments_win(tmp_path) -> None:
    run = fake_run(tmp_path / "old", "- model=convnet\n- trainer.max_epochs=4\n- seed=3\n")
    args = resume_arguments([f"resume={run}", "trainer.max_epochs=8"])
    assert args == [
        "model=convnet",
        "seed=3",
        "trainer.max_epochs=8",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={run}",
    ]
    with pytest.raises(UserError, match="is not a run dir"):
        resume_arguments([f"resume={tmp_path / 'nothing'}"])


def test_a_checkpoint_of_another_run_is_logged_as_a_new_run(tmp_path, caplog) -> None:
    old = fake_run(tmp_path / "old", "[]\n", checkpoint="epoch_003.ckpt")
    with caplog.at_level(logging.INFO, logger="imgcls.run_dir"):
        log_start(old / "checkpoints" / "epoch_003.ckpt", RunDir(tmp_path / "new"))
        log_start(old / "checkpoints" / "epoch_003.ckpt", RunDir(old))
    branched, continued = caplog.messages
    assert f"a new run in {tmp_path / 'new'}" in branched and f"resume={old}" in branched
    assert continued.startswith(f"continuing {old}")
