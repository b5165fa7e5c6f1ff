"""Faults, bad input, distributed runs and untrusted files (the reliability issue)."""

from __future__ import annotations

import json
import os
import pickle
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from imgcls.config import REPO_ROOT
from imgcls.models.classifier import ImageClassifier
from imgcls.train import build_trainer, run, train
from imgcls.utils.checkpoint import AtomicCheckpointIO, read_checkpoint
from imgcls.utils.errors import UserError

from .conftest import run_cli

TINY = ["data=digits", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2"]


def one_line_error(capsys, cfg) -> str:
    """Run the train task as the CLI does; return its single stderr line (exit code 2)."""
    with pytest.raises(SystemExit) as exit_info:
        run(cfg)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.optimizer.lr=0"], "model.optimizer.lr must be > 0"),
        (["data.batch_size=0"], "data.batch_size must be >= 1"),
        (["data.num_folds=3", "data.fold=3"], "data.fold=3 is out of range for data.num_folds=3"),
        (["data.image_size=12"], "tinynet needs images of at least 18px"),
        (["data.classes=[4]"], "at least two distinct classes"),
        (["optimized_metric=val/nope"], "optimized_metric=val/nope is not a metric this run logs"),
    ],
)
def test_invalid_values_fail_with_one_clear_line(make_cfg, capsys, overrides, expected) -> None:
    cfg = make_cfg("train", [*TINY, "trainer.max_epochs=1", *overrides])
    assert expected in one_line_error(capsys, cfg)


def test_unusable_ckpt_paths_are_rejected_before_training(make_cfg, capsys, tmp_path) -> None:
    truncated = tmp_path / "trunc.ckpt"
    good = make_cfg("train", [*TINY, "trainer.max_epochs=1", "test=false"], subdir="good")
    train(good)
    last = Path(good.paths.output_dir) / "checkpoints" / "last.ckpt"
    truncated.write_bytes(last.read_bytes()[:2000])
    not_lightning = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, not_lightning)
    for path, expected in [
        (tmp_path / "missing.ckpt", "does not exist"),
        (truncated, "is not a readable checkpoint"),
        (not_lightning, "not a Lightning checkpoint"),
    ]:
        cfg = make_cfg("train", [*TINY, f"ckpt_path={path}"], subdir=path.stem)
        assert expected in one_line_error(capsys, cfg)


def test_ckpt_path_is_read_in_full_once(make_cfg, tmp_path, monkeypatch) -> None:
    tiny = [*TINY, "model/scheduler=step"]  # a schedule that allows more epochs on resume
    first = make_cfg("train", [*tiny, "trainer.max_epochs=1", "test=false"], subdir="first")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    loads = []
    real_load = torch.load

    def recording_load(f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if Path(str(getattr(f, "path", f))) == last:  # a path, or Lightning's fsspec file
            loads.append(bool(kwargs.get("mmap")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    resumed = make_cfg(
        "train", [*tiny, "trainer.max_epochs=2", "test=false", f"ckpt_path={last}"], subdir="2"
    )
    train(resumed)
    assert loads == [True, False]  # the up-front check maps it; only the resume reads it


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_code_is_refused_and_code_never_runs(tmp_path: Path) -> None:
    exploit = _Exploit()
    exploit.marker = tmp_path / "pwned"
    bad = tmp_path / "evil.ckpt"
    with bad.open("wb") as f:
        pickle.dump({"state_dict": {}, "payload": exploit}, f)
    with pytest.raises(UserError, match="is not a readable checkpoint"):
        read_checkpoint(bad)
    torch.save({"state_dict": {}, "payload": exploit}, tmp_path / "evil2.ckpt")
    with pytest.raises(UserError, match="is not a readable checkpoint"):
        read_checkpoint(tmp_path / "evil2.ckpt")
    assert not exploit.marker.exists()


def test_interrupted_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # a kill arriving mid-write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert read_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_nonfinite_loss_stops_with_step_and_checkpoint_or_skips(make_cfg, capsys) -> None:
    explode = ["model/optimizer=sgd", "model.optimizer.lr=1e30", "trainer.max_epochs=1"]
    message = one_line_error(capsys, make_cfg("train", [*TINY, *explode], subdir="stop"))
    assert "training stopped: loss is" in message and "at epoch 0, step" in message
    assert "last good checkpoint" in message
    skip = make_cfg("train", [*TINY, *explode, "model.nonfinite_loss=skip"], subdir="skip")
    metrics = train(skip)
    assert metrics["train/skipped_batches"] >= 1


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    unknown = run_cli("train.py", "model=nope", cwd=tmp_path)
    assert unknown.returncode == 1  # Hydra's own message names the group's options
    assert "Could not find 'model/nope'" in unknown.stderr
    for option in (REPO_ROOT / "configs" / "model").glob("*.yaml"):
        assert f"\t{option.stem}\n" in unknown.stderr
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    unwritable = run_cli("train.py", "data=digits", f"paths.log_dir={blocker}/logs", cwd=tmp_path)
    assert unwritable.returncode == 2
    assert unwritable.stderr.strip().startswith(f"error: cannot write the run dir {blocker}/logs")


@pytest.mark.slow
def test_killed_run_resumes_in_its_own_dir(tmp_path: Path) -> None:
    crash = ["+callbacks.crash._target_=tests.crash.KillAtEpoch", "+callbacks.crash.epoch=2"]
    args = ["data=digits", "trainer.max_epochs=4", "extras.print_config=false", "seed=5", *crash]
    args.insert(0, "callbacks=lean")  # checkpoints kept; no progress bar, plots or report
    killed = run_cli("train.py", *args, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    runs = tmp_path / "logs" / "train" / "runs"
    (run_dir,) = runs.iterdir()
    killed_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert killed_at == 1  # epochs 0 and 1 done, killed as epoch 2 started
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"

    resumed = run_cli("train.py", f"resume={run_dir}", "extras.print_config=false", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert list(runs.iterdir()) == [run_dir]  # continued in the same run dir
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "completed" and status["metrics"]["test/acc"] > 0.8
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3
    log = (run_dir / "train.log").read_text()
    assert "Restoring states from the checkpoint" in log or "Restored all states" in log

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    epochs = (
        [e.value for e in events.Scalars("epoch")] if "epoch" in events.Tags()["scalars"] else []
    )
    val_steps = [e.step for e in events.Scalars("val/acc")]
    assert len(val_steps) == 4 and len(set(val_steps)) == 4, (val_steps, epochs)


# a 2-process run (one run dir, the global batch, rank seeds, one train split, uneven test
# shards, metrics equal to one process's): test_combinations (in-memory data, trainer=ddp_cpu) and
# test_cluster's two-node run (the standard DataLoader path)


def test_eval_refuses_data_of_another_shape(make_cfg, capsys, tmp_path: Path) -> None:
    from imgcls.eval import run as eval_run

    from .test_folder import write_flat_folder

    trained = make_cfg("train", [*TINY, "trainer.max_epochs=1", "test=false"], subdir="trained")
    train(trained)
    ckpt = Path(trained.paths.output_dir) / "checkpoints" / "last.ckpt"
    folder = write_flat_folder(tmp_path / "three_classes", n=4)
    cfg = make_cfg(
        "eval",
        [
            f"ckpt_path={ckpt}",
            "data=folder",
            f"data.root={folder}",
            "data.grayscale=true",
            "data.image_size=28",
        ],
        subdir="eval",
    )
    with pytest.raises(SystemExit) as exit_info:
        eval_run(cfg)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "trained with num_classes=10" in line and "evaluation data has num_classes=3" in line


# two joblib sweeps started together: test_sweeps.py (with the grid sweep its tests share)


# ------------------------------------------------------------------ val/acc_best across resumes
class SpoilWeights(pl.Callback):
    """Zeroes every weight when an epoch starts: that epoch's accuracy falls to chance."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with torch.no_grad():
            for parameter in pl_module.parameters():
                parameter.zero_()


def test_val_acc_best_survives_a_resume(make_cfg) -> None:
    common = [
        "data=digits",
        "model/optimizer=adam",
        "~model/scheduler",  # a one-cycle schedule would end with the first run's epochs
        "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=4",
        "test=false",
        "logger=csv",
    ]
    first = make_cfg("train", [*common, "trainer.max_epochs=1"], subdir="first")
    best = train(first)["val/acc_best"]
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["state_dict"]["val_acc_best.max_value"] == pytest.approx(best)

    resumed = make_cfg(  # continued in its own run dir, as resume=<run dir> does
        "train", [*common, "trainer.max_epochs=2", f"ckpt_path={last}"], subdir="first"
    )
    with open_dict(resumed):  # the resumed epoch is worse than the first
        resumed.callbacks.spoil = {"_target_": f"{__name__}.SpoilWeights"}
    metrics = train(resumed)
    assert metrics["val/acc"] < best
    assert metrics["val/acc_best"] == pytest.approx(best)  # not the best since the resume


def test_checkpoint_without_val_acc_best_still_loads(make_cfg, tmp_path) -> None:
    cfg = make_cfg("train", [*TINY, "trainer.max_epochs=1", "test=false"])
    train(cfg)
    checkpoint = read_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    del checkpoint["state_dict"]["val_acc_best.max_value"]  # as written before it was saved
    model = ImageClassifier.from_checkpoint(checkpoint)
    assert model.val_acc_best.compute() == float("-inf")


def test_sanity_check_never_updates_val_acc_best(make_cfg, monkeypatch) -> None:
    cfg = make_cfg("train", [*TINY, "trainer.max_epochs=1", "++trainer.num_sanity_val_steps=2"])
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    updates = []
    update = model.val_acc_best.update
    monkeypatch.setattr(
        model.val_acc_best,
        "update",
        lambda value: updates.append(model.trainer.sanity_checking) or update(value),
    )
    trainer = build_trainer(cfg, logger=False, enable_checkpointing=False, callbacks=[])
    trainer.fit(model, datamodule=datamodule)
    assert updates == [False]  # the epoch's validation only


# ------------------------------------------------------------------ non-finite losses
class PoisonAtBatch(pl.Callback):
    """Makes the weights NaN before training batch ``index``: its loss is the first NaN."""

    def __init__(self, index: int) -> None:
        self.index = index

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx == self.index:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.fill_(float("nan"))


def test_nonfinite_loss_is_reported_at_its_first_step_without_a_per_step_check(
    make_cfg,
) -> None:
    """The flag stays on the device until the check (here the epoch's last batch, index 3); the
    message still names the step where the loss first was not finite."""
    cfg = make_cfg("train", [*TINY, "trainer.max_epochs=1", "trainer.log_every_n_steps=10"])
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    trainer = build_trainer(cfg, logger=False, callbacks=[PoisonAtBatch(1)])
    with pytest.raises(UserError, match=r"loss is nan at epoch 0, step 1; last good checkpoint"):
        trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 3  # found by the check in the last batch (3), not in batch 1


def _fake_ddp_trainer(other_process_finite: bool) -> SimpleNamespace:
    """A trainer of 2 processes whose collective says whether the other one's loss is finite."""

    def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:  # noqa: A002
        return (
            (decision and other_process_finite) if all else (decision or not other_process_finite)
        )

    return SimpleNamespace(
        world_size=2,
        strategy=SimpleNamespace(reduce_boolean_decision=reduce_boolean_decision),
        log_every_n_steps=1,
        num_training_batches=10,
        checkpoint_callbacks=[],
        current_epoch=0,
        global_step=7,
        sanity_checking=False,
    )


def _tiny_classifier(**kwargs) -> ImageClassifier:  # noqa: ANN003
    from functools import partial

    from imgcls.models.nets.mlp import MLP

    return ImageClassifier(
        net=partial(MLP, hidden_sizes=[8]),
        optimizer=partial(torch.optim.Adam, lr=0.01),
        num_classes=10,
        in_channels=1,
        image_size=8,
        **kwargs,
    )


def test_skipping_a_nonfinite_batch_is_collective_under_ddp(monkeypatch) -> None:
    model = _tiny_classifier(nonfinite_loss="skip")
    model.trainer = _fake_ddp_trainer(other_process_finite=False)
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)
    batch = (torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert model.training_step(batch, 0) is None  # finite here, skipped everywhere
    assert model.skipped_batches == 1
    model.trainer = _fake_ddp_trainer(other_process_finite=True)
    assert model.training_step(batch, 0) is not None


def test_stopping_on_a_nonfinite_loss_is_collective_under_ddp() -> None:
    model = _tiny_classifier()
    model.trainer = _fake_ddp_trainer(other_process_finite=False)
    batch = (torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(UserError, match="loss is not finite in another process in epoch 0"):
        model.training_step(batch, 0)


def test_class_weights_are_a_buffer_that_follows_the_module() -> None:
    model = _tiny_classifier(class_weights=[1.0] * 9 + [2.0])
    model.setup("fit")
    assert "loss_weights" not in model.state_dict()  # resolved again by setup, not saved
    model.to("meta")  # stands in for a GPU: every buffer moves, plain attributes stay behind
    assert model.loss_weights.device.type == "meta"
