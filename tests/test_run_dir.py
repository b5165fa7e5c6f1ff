"""The run-dir contract and the run plumbing around it (issue #12)."""

from __future__ import annotations

import logging
import os

import pytest
import pytorch_lightning as pl
from omegaconf import OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from imgcls.lifecycle import RunDir, resumed_config
from imgcls.train import ensure_seed, log_start, train
from imgcls.utils.checks import read_json
from imgcls.utils.errors import UserError

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


def test_search_over_a_key_the_model_lacks_is_refused_before_any_trial(tmp_path) -> None:
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
    assert result.returncode == 1, result.stderr[-2000:]  # Hydra's own error, in few lines
    assert "Could not override 'model.net.dropout'" in result.stderr
    assert "Key 'dropout' is not in struct" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "logs").rglob("status.json"))  # refused before any trial


def fake_run(path, config: str, checkpoint: str | None = "last.ckpt"):  # noqa: ANN001, ANN201
    """A run dir as train.py leaves it: its resolved config and, optionally, a checkpoint."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(config)
    if checkpoint:
        (path / "checkpoints").mkdir()
        (path / "checkpoints" / checkpoint).write_bytes(b"")
    return path


def test_resume_continues_the_saved_config_in_its_own_dir_and_new_values_win(tmp_path) -> None:
    saved = "seed: 3\nresume: false\nckpt_path: null\ntrainer: {max_epochs: 4}\nmodel: {lr: 0.1}\n"
    run = fake_run(tmp_path / "old", saved)
    given = OmegaConf.create({"trainer": {"max_epochs": 8}, "resume": str(run)})
    cfg = resumed_config(run, given, [f"resume={run}", "trainer.max_epochs=8"])
    assert cfg.trainer.max_epochs == 8 and cfg.seed == 3 and cfg.model.lr == 0.1
    assert cfg.ckpt_path == str(run / "checkpoints" / "last.ckpt") and cfg.resume is False
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="is not a run dir"):
        resumed_config(tmp_path / "nothing", given, [])
    with pytest.raises(UserError, match="does not exist"):
        resumed_config(tmp_path / "gone", given, [])


def test_a_checkpoint_of_another_run_is_logged_as_a_new_run(tmp_path, caplog) -> None:
    old = fake_run(tmp_path / "old", "[]\n", checkpoint="epoch_003.ckpt")
    with caplog.at_level(logging.INFO, logger="imgcls.train"):
        log_start(old / "checkpoints" / "epoch_003.ckpt", RunDir(tmp_path / "new"))
        log_start(old / "checkpoints" / "epoch_003.ckpt", RunDir(old))
    branched, continued = caplog.messages
    assert f"a new run in {tmp_path / 'new'}" in branched and f"resume={old}" in branched
    assert continued.startswith(f"continuing {old}")


def test_a_requeue_checkpoint_is_the_run_dirs_newest_state(tmp_path) -> None:
    """ckpt_path=<run dir> and resume= agree on the newest state, and starting from a requeue's
    hpc_ckpt in the run's own dir continues that run."""
    from imgcls.utils.checkpoint import find_checkpoint

    run = fake_run(tmp_path / "run", "- data=digits\n")
    hpc = run / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"")
    os.utime(run / "checkpoints" / "last.ckpt", ns=(1_000_000_000, 1_000_000_000))
    assert find_checkpoint(run, prefer="last") == hpc
    assert log_start(hpc, RunDir(run)) is True
    assert log_start(hpc, RunDir(tmp_path / "elsewhere")) is False


def test_status_is_replaced_whole(tmp_path, monkeypatch) -> None:
    """A reader (another process, the report) sees the old status or the new one, never half."""
    run = RunDir(tmp_path)
    run.write_status("running")
    seen_while_writing = []
    real_replace = type(tmp_path).replace

    def replace(self, target):  # noqa: ANN001, ANN202
        seen_while_writing.append(RunDir(tmp_path).status()["status"])
        return real_replace(self, target)

    monkeypatch.setattr(type(tmp_path), "replace", replace)
    run.write_status("completed", metrics={"test/acc": 0.5})
    assert seen_while_writing == ["running"]
    assert run.status()["status"] == "completed"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_a_new_run_from_a_checkpoint_reports_its_own_best(make_cfg, tmp_path) -> None:
    """ckpt_path= starts a new run: the other run's val/acc_best is not carried over."""
    import torch

    common = [*TINY, "model/scheduler=step", "test=false"]
    first = make_cfg("train", [*common, "trainer.max_epochs=1"], subdir="first")
    train(first)
    saved = torch.load(first.paths.output_dir + "/checkpoints/last.ckpt", weights_only=True)
    for key in saved["state_dict"]:
        if key.startswith("val_acc_best.") and saved["state_dict"][key].is_floating_point():
            saved["state_dict"][key].fill_(1.0)  # a best no epoch of the new run can match
    planted = tmp_path / "planted.ckpt"
    torch.save(saved, planted)
    second = make_cfg("train", [*common, "trainer.max_epochs=2", f"ckpt_path={planted}"])
    metrics = train(second)
    assert metrics["val/acc_best"] == metrics["val/acc"] < 1.0


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    """One tiny finished run (2 epochs on digits), shared by the reuse tests below."""
    from .conftest import compose_config

    path = tmp_path_factory.mktemp("two_epochs")
    cfg = compose_config("train", [*TINY, "trainer.max_epochs=2", "callbacks=lean"], path)
    train(cfg)
    return path


def test_init_from_loads_the_weights_only_and_trains_its_own_epochs(make_cfg, two_epoch_run):
    import torch
    from hydra.utils import instantiate

    from imgcls.utils.checkpoint import init_weights

    last = two_epoch_run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)["state_dict"]
    model = instantiate(make_cfg("train", TINY, subdir="m").model)
    init_weights(model, last)
    for name, value in model.net.state_dict().items():
        assert torch.equal(value, saved[f"net.{name}"]), name
    reused = [*TINY, "callbacks=lean", "test=false", f"init_from={two_epoch_run}"]
    train(make_cfg("train", [*reused, "trainer.max_epochs=1"], subdir="new"))
    new = torch.load(
        make_cfg("train", [], subdir="new").paths.output_dir + "/checkpoints/last.ckpt"
    )
    assert (new["epoch"], new["global_step"]) == (0, 2)  # its own first epoch, not the third
    assert not torch.equal(new["state_dict"]["net.head.weight"], saved["net.head.weight"])


def test_init_from_refuses_another_head_unless_asked_to_reset_it(make_cfg, two_epoch_run):
    from hydra.utils import instantiate

    from imgcls.utils.checkpoint import init_weights

    three = instantiate(make_cfg("train", [*TINY, "model.num_classes=3"]).model)
    with pytest.raises(UserError, match=r"shape \(10, .*\) there and \(3, .*init_from_reset_head"):
        init_weights(three, two_epoch_run)
    head = three.net.state_dict()["head.weight"].clone()
    init_weights(three, two_epoch_run, reset_head=True)
    assert (three.net.state_dict()["head.weight"] == head).all()  # left as initialised


def test_ckpt_path_with_nothing_left_to_train_is_refused(make_cfg, two_epoch_run) -> None:
    last = two_epoch_run / "checkpoints" / "last.ckpt"
    cfg = make_cfg("train", [*TINY, "trainer.max_epochs=2", f"ckpt_path={last}"])
    with pytest.raises(UserError, match="already trained 2 epochs and trainer.max_epochs=2: no"):
        train(cfg)


def test_a_run_stopped_while_testing_resumes_tests_and_completes(make_cfg, two_epoch_run, tmp_path):
    """Ctrl-C after the last epoch (final validation or test), then resume=: nothing is left
    to train, so the run validates its weights again, tests, and completes (issue 20, item 11)."""
    import shutil

    from imgcls.train import run

    copy = tmp_path / "stopped"
    shutil.copytree(two_epoch_run, copy)
    RunDir(copy).write_status("interrupted", signal="SIGINT")
    cfg = make_cfg("train", [*TINY, "trainer.max_epochs=2", "callbacks=lean", "resume=true"])
    cfg.paths.output_dir = str(copy)
    best = run(cfg)
    status = RunDir(copy).status()
    assert status["status"] == "completed"
    assert best == status["metrics"]["val/acc_best"] and "test/acc" in status["metrics"]
    reached = read_json(two_epoch_run / "metrics.json")["val/acc_best"]
    assert best == reached  # the best it had reached


def test_rerun_repeats_a_deterministic_run_with_identical_metrics(make_cfg, monkeypatch) -> None:
    """rerun=<run dir>: exactly that run's config, in a new dir; deterministic on the CPU, the
    same numbers (issue 22, item 4)."""
    from pathlib import Path

    from imgcls.train import run

    first = make_cfg("train", [*TINY, "trainer.max_epochs=1", "trainer.deterministic=true"], "a")
    metrics = train(first)
    again = make_cfg("train", [f"rerun={first.paths.output_dir}"], subdir="b")
    run(again)
    new = RunDir(again.paths.output_dir)
    assert new.status()["metrics"] == metrics
    assert new.config()["trainer"]["deterministic"] is True
    assert Path(new.config()["paths"]["output_dir"]) == Path(again.paths.output_dir)
    assert (new.path / "checkpoints" / "last.ckpt").is_file()
    # key=value after rerun= apply, with the values interpolating them (was: silently ignored)
    given = [
        "trainer.max_epochs=2",
        "seed=3",
        "model.optimizer.lr=0.05",
        "extras.eval_report=false",
    ]
    monkeypatch.setattr(
        "imgcls.train.run_overrides", lambda: [f"rerun={first.paths.output_dir}", *given]
    )
    changed = make_cfg("train", [f"rerun={first.paths.output_dir}", *given], subdir="c")
    run(changed)
    config = RunDir(changed.paths.output_dir).config()
    assert config["trainer"]["max_epochs"] == 2 and config["seed"] == config["data"]["seed"] == 3
    assert config["model"]["optimizer"]["lr"] == 0.05
    assert config["model"]["scheduler"]["max_lr"] == 0.05  # ${..optimizer.lr}
    assert config["callbacks"]["eval_report"]["enabled"] is False  # ${oc.select:extras...}
    assert config["trainer"]["deterministic"] is True  # the rest: the first run's
    assert len(RunDir(changed.paths.output_dir).status()["metrics"]) > 0
