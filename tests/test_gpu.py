"""GPU paths (marker ``gpu``): skipped where CUDA is not available, as in CI.

Run them on a GPU machine with ``make gpu-check`` (or ``pytest -m gpu``). GPU and CPU results are
compared with tolerances for kernels that round differently (TF32, cuDNN), never exactly.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from PIL import Image

from imgcls.config import CONFIG_DIR
from imgcls.train import build_trainer, train
from imgcls.utils.runs import instantiate_list

from .conftest import run_cli

pytestmark = pytest.mark.gpu

GPU = ["data=digits", "trainer.gpus=1"]
#: 1 epoch of tinynet on digits: the GPU's test accuracy may differ from the CPU's by a few of
#: the 360 test images (different kernels, TF32), not more
ACC_TOLERANCE = 0.03


def fit(make_cfg, overrides: list[str], subdir: str = "run") -> tuple[dict[str, float], object]:  # noqa: ANN001
    """Train in-process; returns (metrics, cfg)."""
    cfg = make_cfg("train", overrides, subdir=subdir)
    return train(cfg), cfg


def test_train_eval_predict_on_the_gpu(tmp_path: Path) -> None:
    common = ["data=digits", "extras.print_config=false", "logger=csv"]
    trained = run_cli("train.py", *common, "trainer.gpus=1", "trainer.max_epochs=1", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.5
    (best,) = (run / "checkpoints").glob("epoch_*.ckpt")

    on_cpu = run_cli(
        "eval.py", f"ckpt_path={best}", "extras.print_config=false", "trainer.gpus=0", cwd=tmp_path
    )
    assert on_cpu.returncode == 0, on_cpu.stderr[-3000:]
    (eval_run,) = (tmp_path / "logs" / "eval" / "runs").iterdir()
    cpu_acc = json.loads((eval_run / "metrics.json").read_text())["test/acc"]
    assert cpu_acc == pytest.approx(metrics["test/acc"], abs=ACC_TOLERANCE)

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(images / f"{i}.png")
    rows = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / f"{device}.csv"
        predicted = run_cli(
            "predict.py",
            f"ckpt_path={best}",
            f"input={images}",
            f"output={out}",
            f"device={device}",
            cwd=tmp_path,
        )
        assert predicted.returncode == 0, predicted.stderr[-3000:]
        rows[device] = list(csv.DictReader(out.open()))
    for gpu_row, cpu_row in zip(rows["cuda"], rows["cpu"], strict=True):
        assert float(gpu_row["confidence"]) == pytest.approx(float(cpu_row["confidence"]), abs=1e-2)


def test_gpu_and_cpu_training_agree_within_noise(make_cfg) -> None:
    common = ["data=digits", "trainer.max_epochs=1", "seed=3", "test=true"]
    gpu, _ = fit(make_cfg, [*common, "trainer.gpus=1"], subdir="gpu")
    cpu, _ = fit(make_cfg, [*common, "trainer.gpus=0"], subdir="cpu")
    assert gpu["test/acc"] == pytest.approx(cpu["test/acc"], abs=ACC_TOLERANCE)


def test_data_on_device_keeps_the_splits_in_gpu_memory(make_cfg) -> None:
    cfg = make_cfg("train", [*GPU, "data.on_device=true", "trainer.max_epochs=1", "test=false"])
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    seen = []

    class Where(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            seen.append(batch[0].device.type)

    trainer = build_trainer(cfg, callbacks=[Where()], logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=datamodule)
    assert set(seen) == {"cuda"}
    assert datamodule.splits["train"][0].device.type == "cpu"  # the host copy stays


def test_bf16_trains_on_the_gpu(make_cfg) -> None:
    metrics, _ = fit(make_cfg, [*GPU, "trainer.precision=bf16-mixed", "trainer.max_epochs=1"])
    assert torch.isfinite(torch.tensor(metrics["train/loss"])) and metrics["test/acc"] > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["true", "reduce-overhead", "max-autotune"])
def test_every_compile_mode_trains_to_the_same_accuracy(make_cfg, mode) -> None:
    common = [*GPU, "trainer.max_epochs=2", "seed=3", "data.drop_last=true"]
    compiled, _ = fit(make_cfg, [*common, f"model.compile={mode}"], subdir="compiled")
    eager, _ = fit(make_cfg, common, subdir="eager")
    assert compiled["test/acc"] == pytest.approx(eager["test/acc"], abs=ACC_TOLERANCE)
    assert compiled["val/acc_best"] == pytest.approx(eager["val/acc_best"], abs=ACC_TOLERANCE)


def test_resume_on_the_gpu_keeps_epochs_and_best(make_cfg) -> None:
    # no one-cycle schedule: it would end with the first run's epochs
    common = [*GPU, "model/optimizer=adam", "~model/scheduler", "trainer.limit_train_batches=10"]
    common.append("test=false")
    first, first_cfg = fit(make_cfg, [*common, "trainer.max_epochs=1"], subdir="first")
    last = Path(first_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed, resumed_cfg = fit(
        make_cfg, [*common, "trainer.max_epochs=2", f"ckpt_path={last}"], subdir="resumed"
    )
    assert resumed["val/acc_best"] >= first["val/acc_best"]
    checkpoint = torch.load(
        Path(resumed_cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 20


def test_class_weights_live_on_the_gpu(make_cfg) -> None:
    cfg = make_cfg("train", [*GPU, "model.class_weights=auto", "trainer.fast_dev_run=true"])
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    trainer = build_trainer(cfg, logger=False)
    trainer.fit(model, datamodule=datamodule)
    assert model.loss_weights.device.type == "cuda"


class NoSyncWindow(pl.Callback):
    """``torch.cuda.set_sync_debug_mode("error")`` from the second training batch's start to the
    last batch's start: every step in between (callbacks, loading, optimizer) must not sync.
    The last batch's step checks for non-finite losses (a deliberate sync) and stays outside."""

    def __init__(self) -> None:
        self.checked_steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx == 1:
            torch.cuda.set_sync_debug_mode("error")
        elif batch_idx == trainer.num_training_batches - 1:
            torch.cuda.set_sync_debug_mode("default")
            self.checked_steps = batch_idx - 1

    def on_exception(self, trainer, pl_module, exception) -> None:  # noqa: ANN001
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("trainer", ["default", "fast"])
def test_training_steps_never_sync_on_the_gpu(make_cfg, trainer) -> None:
    cfg = make_cfg(
        "train",
        [
            *GPU,
            f"trainer={trainer}",
            "data.on_device=true",
            "data.batch_size=16",  # 77 steps
            "trainer.max_epochs=1",
            "trainer.log_every_n_steps=1000",
            "test=false",
        ],
    )
    if trainer == "default":  # the real default callbacks, progress bar and summary included
        with open_dict(cfg):
            cfg.trainer.enable_progress_bar = cfg.trainer.enable_model_summary = True
            for name in ("rich_progress_bar", "rich_model_summary"):
                cfg.callbacks[name] = OmegaConf.load(CONFIG_DIR / f"callbacks/{name}.yaml")[name]
    window = NoSyncWindow()
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    callbacks = [window, *instantiate_list(cfg.get("callbacks"))]
    trainer = build_trainer(cfg, callbacks=callbacks, logger=instantiate_list(cfg.get("logger")))
    try:
        trainer.fit(model, datamodule=datamodule)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert window.checked_steps == trainer.num_training_batches - 2
