"""resume=<run dir> where it meets the other features (found by review; each failed before)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from imgcls.lifecycle import resumed_config
from imgcls.train import train
from imgcls.utils.checks import bad_value
from imgcls.utils.errors import UserError
from imgcls.utils.runs import relocated

TINY = ["data=digits", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
TINY += ["trainer.limit_val_batches=1", "test=false", "callbacks=lean", "logger=csv"]


def saved_run(path: Path, scheduler: str | None) -> Path:
    config = {
        "paths": {"output_dir": "/elsewhere/run"},
        "callbacks": {"ckpt": {"dirpath": "/elsewhere/run/checkpoints"}},
        "trainer": {"max_epochs": 2},
        "model": {"scheduler": {"_target_": scheduler, "_partial_": True} if scheduler else None},
        "ckpt_path": None,
        "resume": False,
    }
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def test_a_moved_run_dir_resumes_in_its_new_place(tmp_path) -> None:
    run = saved_run(tmp_path / "moved", "torch.optim.lr_scheduler.StepLR")
    cfg = resumed_config(run, OmegaConf.create(), [])
    assert cfg.paths.output_dir == str(run)
    assert cfg.callbacks.ckpt.dirpath == str(run / "checkpoints")
    moved = relocated({"paths": {"output_dir": "/a"}, "x": ["/a/b", "/ab"]}, "/n")
    assert moved["x"] == ["/n/b", "/ab"]  # a sibling sharing the prefix stays where it is


def test_resume_refuses_more_epochs_for_a_step_sized_schedule_and_new_groups(tmp_path) -> None:
    given = OmegaConf.create({"trainer": {"max_epochs": 3}})
    onecycle = saved_run(tmp_path / "onecycle", "torch.optim.lr_scheduler.OneCycleLR")
    with pytest.raises(UserError, match="resume= cannot change trainer.max_epochs"):
        resumed_config(onecycle, given, ["trainer.max_epochs=3"])
    step = saved_run(tmp_path / "step", "torch.optim.lr_scheduler.StepLR")
    assert resumed_config(step, given, ["trainer.max_epochs=3"]).trainer.max_epochs == 3
    with pytest.raises(UserError, match="model/optimizer= cannot change"):
        resumed_config(step, given, ["model/optimizer=adam"])
    with pytest.raises(UserError, match="model= cannot change"):  # a group, not a value
        resumed_config(step, given, ["model=mlp"])


def test_resume_of_a_dir_that_is_not_a_run_is_refused_before_anything_is_written(tmp_path):
    message = bad_value(OmegaConf.create({"resume": str(tmp_path)}), required=False)
    assert message == f"resume={tmp_path}: is not a run dir (no config.yaml in it); " + (
        "pass a dir below logs/train/runs/"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_run_started_with_init_from_resumes_from_its_own_checkpoint(make_cfg) -> None:
    first = make_cfg("train", TINY, subdir="first")
    train(first)
    second = make_cfg("train", [*TINY, f"init_from={first.paths.output_dir}"], subdir="second")
    train(second)
    run = Path(second.paths.output_dir)
    resumed = resumed_config(run, OmegaConf.create(), [])
    assert resumed.init_from is not None and resumed.ckpt_path  # both: the run's own state wins
    metrics = train(resumed)  # before the fix: "init_from= and ckpt_path= both set"
    assert json.loads((run / "metrics.json").read_text())["val/acc"] == metrics["val/acc"]


def test_provenance_is_written_and_logged_with_the_hyperparameters(make_cfg) -> None:
    cfg = make_cfg("train", TINY, subdir="logged")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    info = json.loads((run / "provenance.json").read_text())
    (hparams_file,) = run.glob("csv/**/hparams.yaml")
    logged = yaml.safe_load(hparams_file.read_text())
    assert logged["provenance/commit"] == str(info["git"]["commit"])
    assert logged["provenance/data_train"] == info["data"]["train"]["sha256"][:12]


def test_resume_refuses_a_completed_run_instead_of_rewriting_its_results(tmp_path) -> None:
    run = saved_run(tmp_path / "done", None)
    (run / "status.json").write_text(json.dumps({"status": "completed"}))
    with pytest.raises(UserError, match="that run completed, nothing is left to continue"):
        resumed_config(run, OmegaConf.create(), [])
    message = bad_value(OmegaConf.create({"resume": str(run)}), required=False)
    assert message.startswith(f"resume={run}: that run completed")  # before anything is written
