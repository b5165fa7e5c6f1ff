"""Shared fixtures: composing configs into tmp dirs and writing real-format datasets."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, open_dict

from imgcls import compose
from imgcls.config import REPO_ROOT

torch.set_num_threads(1)  # tests share 2 cores with subprocesses: one thread each is fastest

#: environment of a subprocess that must see no GPU, also on a machine that has one
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}

#: the four official MNIST .gz files, tracked in the repository (paths.data_dir/MNIST/raw)
REPO_MNIST = REPO_ROOT / "data" / "MNIST" / "raw"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip cleanly where CUDA is not available (CI)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def make_quiet(cfg: DictConfig) -> None:
    """No config tree, progress bar or model summary: test output stays readable."""
    with open_dict(cfg):
        cfg.extras.print_config = False
        if "trainer" in cfg:
            cfg.trainer.enable_progress_bar = False
            cfg.trainer.enable_model_summary = False
        for name in ("rich_progress_bar", "rich_model_summary"):
            if cfg.get("callbacks") and name in cfg.callbacks:
                del cfg.callbacks[name]


def compose_config(name: str, overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """``configs/<name>.yaml`` composed as the command line does (``imgcls.compose``), with every
    path inside ``output_dir``."""
    cfg = compose(overrides, config_name=name, output_dir=output_dir)
    make_quiet(cfg)
    with open_dict(cfg):
        cfg.paths.log_dir = str(output_dir / "logs")
        # no evaluation report after training unless a test names it (its tests: test_plots,
        # test_eval_report, test_combinations): it cost seconds in every in-process run
        if name == "train" and not any("eval_report" in o for o in overrides):
            cfg.extras.eval_report = False
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg("train", ["data=digits"])`` -> a composed config writing below tmp_path."""

    def make(name: str = "train", overrides: Sequence[str] = (), subdir: str = "run") -> DictConfig:
        return compose_config(name, overrides, tmp_path / subdir)

    return make


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an extracted IDX file, the format MNIST ships in."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(root: Path, n_train: int = 600, n_test: int = 100, seed: int = 0) -> Path:
    """Small MNIST-format dataset (learnable: each class is a distinct bright block)."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 40, size=(n, 28, 28))
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 5)
            images[i, 4 + row * 10 : 12 + row * 10, 2 + col * 5 : 6 + col * 5] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture
def fake_mnist(tmp_path: Path) -> Path:
    """A data_dir holding MNIST-format IDX files (600 train, 100 test images)."""
    return write_fake_mnist(tmp_path / "data")


def cli_env(cwd: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment ``run_cli`` gives an entry point, plus ``extra`` variables."""
    return {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "IMGCLS_ROOT": str(cwd or REPO_ROOT),
        "OMP_NUM_THREADS": "1",  # test processes share 2 cores: no oversubscription
        **extra,
    }


def run_cli(
    script: str,
    *args: str,
    cwd: Path | None = None,
    timeout: int = 240,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run a root entry point (``train.py`` ...) as a user would (``env``: extra variables)."""
    env = cli_env(cwd, **(env or {}))
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
