"""The root entry points as a user runs them: run dirs, errors, eval and predict."""

from __future__ import annotations

import csv
import datetime
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.config import CONFIG_DIR

from .conftest import NO_GPU, run_cli

FAST = ["data=digits", "extras.print_config=false", "callbacks=none", "logger=csv"]


class NotPlainData:
    """An object that is not a tensor or plain data: ``weights_only`` loading refuses it."""


def run_dirs(root: Path, task: str = "train") -> list[Path]:
    return sorted((root / "logs" / task / "runs").iterdir())


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_no_gpu_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_cli("train.py", *FAST, "trainer.gpus=1", cwd=tmp_path, env=NO_GPU)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert last_line(result.stderr).startswith("error: trainer.gpus=1 asks for a GPU")
    conflict = run_cli("train.py", *FAST, "trainer.gpus=1", "trainer.devices=2", cwd=tmp_path)
    assert conflict.returncode == 2
    assert last_line(conflict.stderr) == (
        "error: trainer.gpus=1 conflicts with trainer.devices=2; set only one of them"
    )


@pytest.mark.parametrize("kind", ["run", "sweep"])
def test_runs_started_in_the_same_second_get_distinct_dirs(monkeypatch, kind: str) -> None:
    """Two runs (or sweeps) whose clocks read the same second still get two dirs."""
    import hydra.core.utils
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    class FrozenClock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ANN001, ANN206
            return cls(2024, 5, 1, 12, 0, 0)

    monkeypatch.setattr(hydra.core.utils, "datetime", FrozenClock)
    dirs = []
    for _ in range(2):  # each run composes its config afresh, as each process does
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", ["data=digits"], return_hydra_config=True)
        dirs.append(OmegaConf.select(cfg, f"hydra.{kind}.dir"))
    assert all(Path(d).name.startswith("2024-05-01_12-00-00_") for d in dirs), dirs
    assert dirs[0] != dirs[1]


@pytest.mark.slow
def test_train_eval_predict_from_the_command_line(tmp_path: Path) -> None:
    train = run_cli(
        "train.py", "data=digits", "trainer.max_epochs=1", "extras.print_config=false", cwd=tmp_path
    )
    assert train.returncode == 0, train.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["test/acc"] > 0.5
    ckpt = run / "checkpoints" / "last.ckpt"
    assert len(list((run / "checkpoints").glob("epoch_*.ckpt"))) == 1

    # the run dir itself: its best checkpoint, named in the log
    evaluated = run_cli("eval.py", f"ckpt_path={run}", "extras.print_config=false", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    (best,) = (run / "checkpoints").glob("epoch_*.ckpt")
    assert f"ckpt_path={run} is a directory: using its best checkpoint {best}" in evaluated.stdout
    (eval_run,) = run_dirs(tmp_path, "eval")
    eval_metrics = json.loads((eval_run / "metrics.json").read_text())
    assert 0.5 < eval_metrics["test/acc"] <= 1.0

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20 + i, 24), dtype=np.uint8)).save(
            images / f"{i}.png"
        )
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "pred.csv"
    predicted = run_cli(
        "predict.py", f"ckpt_path={ckpt}", f"input={images}", f"output={out}", cwd=tmp_path
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["file"]).name for r in rows] == ["0.png", "1.png", "2.png"]
    assert all(r["predicted_class"] in [str(d) for d in range(10)] for r in rows)
    assert all(0.1 <= float(r["confidence"]) <= 1.0 for r in rows)


def test_eval_rejects_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "model.ckpt"
    bogus.write_bytes(b"\x00" * 100)
    result = run_cli("eval.py", f"ckpt_path={bogus}", cwd=tmp_path)
    assert result.returncode == 2
    assert "is not a readable checkpoint" in last_line(result.stderr)
    missing = run_cli("eval.py", f"ckpt_path={tmp_path / 'nope.ckpt'}", cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in last_line(missing.stderr)


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("eval.py", [], "error: ckpt_path is required: add ckpt_path="),
        ("predict.py", ["input=x.png"], "error: ckpt_path is required: add ckpt_path="),
        ("predict.py", ["ckpt_path=x.ckpt"], "error: input is required: add input="),
        ("train.py", ["data.batch_size=abc"], "error: data.batch_size=abc is not an integer"),
        ("train.py", ["model.optimizer.lr=fast"], "error: model.optimizer.lr=fast is not a number"),
        ("train.py", ["trainer.max_epoch=3"], "did you mean trainer.max_epochs?"),
        ("eval.py", ["ckpt_path=x", "trainer.devics=1"], "did you mean trainer.devices?"),
    ],
    ids=["eval_no_ckpt", "predict_no_ckpt", "predict_no_input", "batch_abc", "lr_str", "typo",
         "eval_typo"],
)  # fmt: skip
def test_config_mistakes_are_one_line_and_exit_2(tmp_path: Path, script, args, expected) -> None:
    result = run_cli(script, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert expected in line
    assert not (tmp_path / "logs").exists()  # refused before any run dir was made


def test_a_key_typo_names_the_key_and_how_to_add_a_new_one(tmp_path: Path) -> None:
    result = run_cli("train.py", "trainer.max_epoch=3", cwd=tmp_path)
    assert result.stderr.strip() == (
        "error: unknown config key trainer.max_epoch; did you mean trainer.max_epochs? "
        "(to add a new key: +trainer.max_epoch=3)"
    )


def test_a_checkpoint_holding_code_is_refused_without_torch_advice(tmp_path: Path) -> None:
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": NotPlainData()}, evil)
    result = run_cli("eval.py", f"ckpt_path={evil}", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        f"error: ckpt_path={evil} is not a readable checkpoint: it holds Python objects"
    )
    assert "weights_only" not in line and "trust" not in line


def test_a_run_dir_as_ckpt_path_means_its_best_or_last_checkpoint(tmp_path: Path, caplog) -> None:
    from imgcls.utils.checkpoint import find_checkpoint
    from imgcls.utils.errors import UserError

    caplog.set_level("INFO")
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    with pytest.raises(UserError, match="is a directory without checkpoints"):
        find_checkpoint(tmp_path / "run")
    (folder / "last.ckpt").write_bytes(b"")
    assert find_checkpoint(tmp_path / "run") == folder / "last.ckpt"  # no best: the last
    assert "using its last checkpoint" in caplog.text
    (folder / "epoch_003.ckpt").write_bytes(b"")
    assert find_checkpoint(tmp_path / "run") == folder / "epoch_003.ckpt"
    assert find_checkpoint(folder, prefer="last") == folder / "last.ckpt"


def test_a_run_prints_a_short_config_and_no_noise(tmp_path: Path) -> None:
    """Groups and overrides instead of the whole tree, whole paths when piped, no tips, no FLOPs
    column, no colour codes in the output or in the run's log file."""
    result = run_cli(
        "train.py",
        "data=digits",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "logger=csv",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run = run_dirs(tmp_path)[0]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("config: ") and " data=digits " in lines[0]
    assert lines[1] == (
        "overrides: data=digits trainer.max_epochs=1 trainer.limit_train_batches=3 "
        "trainer.limit_val_batches=1 trainer.limit_test_batches=1 logger=csv"
    )
    assert lines[2].startswith(f"full config: {run}/config.yaml ")  # not cut at 80 columns
    assert "batch_size:" not in result.stdout  # the tree stays in config.yaml
    log_file = (run / "train.log").read_text()
    for text in (result.stdout, result.stderr, log_file):
        assert "\x1b[" not in text and "Tip:" not in text
    assert "Total params" in result.stdout and "FLOPs" not in result.stdout
