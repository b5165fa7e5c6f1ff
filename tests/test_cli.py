"""The root entry points as a user runs them: run dirs, errors, eval and predict."""

from __future__ import annotations

import csv
import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.config import CONFIG_DIR, REPO_ROOT

from .conftest import NO_GPU, cli_env, run_cli

FAST = ["data=digits", "extras.print_config=false", "callbacks=none", "logger=csv"]


class NotPlainData:
    """An object that is not a tensor or plain data: ``weights_only`` loading refuses it."""


def run_dirs(root: Path, task: str = "train") -> list[Path]:
    return sorted((root / "logs" / task / "runs").iterdir())


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


#: ``trainer.gpus`` is a key of the trainer config once the run life cycle maps it (h2's change)
TRAINER_GPUS = "gpus:" in (CONFIG_DIR / "trainer" / "default.yaml").read_text()


@pytest.mark.skipif(not TRAINER_GPUS, reason="trainer.gpus is not a trainer config key yet")
def test_no_gpu_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    composed = run_cli("train.py", "model=alexnet", "trainer.gpus=1", "--cfg", "job", cwd=tmp_path)
    assert composed.returncode == 0, composed.stderr[-2000:]  # the mission's command, as typed
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


#: the one training run from the command line both tests below read (the default callbacks)
TRAIN_ARGS = ["data=digits", "trainer.max_epochs=1", "logger=csv"]


@pytest.fixture(scope="module")
def cli_train(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``python train.py data=digits trainer.max_epochs=1 logger=csv`` in a fresh root."""
    root = tmp_path_factory.mktemp("cli")
    train = run_cli("train.py", *TRAIN_ARGS, cwd=root)
    assert train.returncode == 0, train.stderr[-2000:]
    return root, train


@pytest.mark.slow
def test_train_eval_predict_from_the_command_line(cli_train, tmp_path: Path) -> None:
    root, _ = cli_train
    (run,) = run_dirs(root)
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["test/acc"] > 0.5
    ckpt = run / "checkpoints" / "last.ckpt"
    assert len(list((run / "checkpoints").glob("epoch_*.ckpt"))) == 1

    # the run dir itself: its best checkpoint, named in the log
    evaluated = run_cli(
        "eval.py",
        f"ckpt_path={run}",
        "extras.print_config=false",
        "extras.eval_report=false",
        cwd=root,
    )  # the report from eval.py: test_eval_report
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    (best,) = (run / "checkpoints").glob("epoch_*.ckpt")
    assert f"ckpt_path={run} is a directory: using its best checkpoint {best}" in evaluated.stdout
    (eval_run,) = run_dirs(root, "eval")
    eval_metrics = json.loads((eval_run / "metrics.json").read_text())
    assert eval_metrics["test/acc"] == pytest.approx(trained["test/acc"])  # the same checkpoint
    assert (eval_run / "eval.log").is_file() and (run / "train.log").is_file()  # the job names

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
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(image)
    for path in (bogus, image):
        result = run_cli("eval.py", f"ckpt_path={path}", cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.strip() == (
            f"error: ckpt_path={path}: is not a checkpoint (no file torch.save wrote); "
            "give a .ckpt or a run dir"
        )
    missing = run_cli("eval.py", f"ckpt_path={tmp_path / 'nope.ckpt'}", cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in last_line(missing.stderr)


BAD_VALUES = [
    ("eval.py", [], "ckpt_path=???: is required; add ckpt_path=... to the command"),
    ("predict.py", ["ckpt_path=x.ckpt"], "input=???: is required; add input=..."),
    ("train.py", ["data.batch_size=abc"], "data.batch_size=abc: must be a positive integer; e."),
    ("train.py", ["data.batch_size=1.5"], "data.batch_size=1.5: must be a positive integer"),
    ("train.py", ["data.batch_size=0"], "data.batch_size=0: must be a positive integer"),
    ("train.py", ["data.eval_batch_size=0"], "data.eval_batch_size=0: must be null or >= 1; e."),
    ("train.py", ["model.optimizer.lr=fast"], "model.optimizer.lr=fast: must be a positive"),
    ("train.py", ["model.optimizer.lr=true"], "model.optimizer.lr=true: must be a positive"),
    ("train.py", ["model.optimizer.lr=[0.1,0.2]"], "model.optimizer.lr=[0.1, 0.2]: must be"),
    ("train.py", ["model.optimizer.lr=0"], "model.optimizer.lr=0: must be a positive number"),
    ("train.py", ["model.label_smoothing=2"], "model.label_smoothing=2: must be in [0, 1);"),
    ("train.py", ["trainer.precision=17"], "trainer.precision=17: is not a Lightning"),
    ("train.py", ["trainer.max_epochs=0"], "trainer.max_epochs=0: must be >= 1, or -1"),
    ("train.py", ["ckpt_path=no.ckpt"], "ckpt_path=no.ckpt: does not exist; check the path"),
    ("train.py", ["resume=no/run"], "resume=no/run: does not exist; check the path"),
    ("train.py", ["++init_from=no.ckpt"], "init_from=no.ckpt: does not exist; check the"),
    ("train.py", ["data=folder", "data.root=nope"], "data.root=nope: does not exist; check"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("script", "args", "expected"), BAD_VALUES, ids=[" ".join(a) or s for s, a, _ in BAD_VALUES]
)
def test_bad_values_are_one_line_and_exit_2(tmp_path: Path, script, args, expected) -> None:
    """Refused after Hydra composed the config and before the run dir is made."""
    result = run_cli(script, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith(f"error: {expected}")
    assert not (tmp_path / "logs").exists()


def test_a_refused_run_imports_no_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO_ROOT / "train.py"), "data.batch_size=0"],
        capture_output=True, text=True, cwd=tmp_path, env=cli_env(tmp_path), timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    # every import statement is listed (not importlib.import_module's, but what they import)
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "hydra.experimental.callback" in imported  # the checks' own import: listed
    heavy = {"torch", "pytorch_lightning", "lightning_fabric", "torchvision"}
    assert not {m for m in imported if m.split(".")[0] in heavy}


def test_config_mistakes_get_hydras_own_message(tmp_path: Path) -> None:
    typo = run_cli("train.py", "trainer.max_epoch=3", cwd=tmp_path)
    assert typo.returncode == 1
    assert "Could not override 'trainer.max_epoch'" in typo.stderr
    assert "To append to your config use +trainer.max_epoch=3" in typo.stderr
    unknown = run_cli("train.py", "model=nope", cwd=tmp_path)
    assert unknown.returncode == 1
    assert "Could not find 'model/nope'" in unknown.stderr
    assert "Available options in 'model':\n\talexnet\n" in unknown.stderr
    assert "Traceback" not in typo.stderr + unknown.stderr


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


def test_a_run_prints_a_short_config_and_no_noise(cli_train) -> None:
    """Groups and overrides instead of the whole tree, whole paths when piped, no tips, no FLOPs
    column, no colour codes in the output or in the run's log file."""
    root, result = cli_train
    run = run_dirs(root, "train")[0]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("config: ") and " data=digits " in lines[0]
    assert lines[1] == "overrides: data=digits trainer.max_epochs=1 logger=csv"
    assert lines[2].startswith(f"full config: written to {run}/config.yaml ")  # not cut at 80
    assert "batch_size:" not in result.stdout  # the tree stays in config.yaml
    log_file = (run / "train.log").read_text()
    for text in (result.stdout, result.stderr, log_file):
        assert "\x1b[" not in text and "Tip:" not in text
    assert "Total params" in result.stdout  # Lightning's RichModelSummary (its FLOPs column too)
