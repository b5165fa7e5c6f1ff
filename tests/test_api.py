"""The Python API: imgcls.load_model(...).predict(...) equals predict.py; imgcls.compose(...)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from PIL import Image

import imgcls
from imgcls.imaging import load_image_tensor
from imgcls.train import train

from .conftest import run_cli


def test_compose_needs_only_the_import_and_checks_overrides() -> None:
    cfg = imgcls.compose(overrides=["data=digits", "trainer.max_epochs=3"])
    assert cfg.trainer.max_epochs == 3 and cfg.data._target_.endswith("DigitsDataModule")
    assert "/logs/train/runs/" in cfg.paths.output_dir and "hydra" not in cfg
    assert cfg.model.num_classes == 10  # ${datamodule:...} resolves outside a run
    with pytest.raises(ConfigCompositionException, match="trainer.max_epoch"):  # Hydra's own
        imgcls.compose(overrides=["trainer.max_epoch=3"])
    assert (
        imgcls.compose(overrides=["trainer.gpus=0"]).trainer.gpus == 0
    )  # as the command line takes it


def test_import_and_compose_load_no_torch() -> None:
    code = "import sys, imgcls; imgcls.compose(['data=digits']); print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pytorch_lightning', 'torchvision')))"  # noqa: E501
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_load_model_predicts_exactly_what_predict_py_writes(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("train", ["data=digits", "trainer.max_epochs=1", "test=false"])
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(images / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (20 + 4 * i, 24, 3), dtype=np.uint8)).save(paths[-1])

    model = imgcls.load_model(run_dir)  # a run dir: its best checkpoint
    assert model.class_names == [str(d) for d in range(10)]
    with Image.open(paths[1]) as pil_image:
        inputs = [str(paths[0]), pil_image, load_image_tensor(paths[2], channels=1)]
        predictions = model.predict(inputs)
    assert [sum(p.probabilities.values()) for p in predictions] == pytest.approx([1.0] * 3)

    out = tmp_path / "pred.csv"
    cli = run_cli(
        "predict.py",
        f"ckpt_path={run_dir}",
        f"input={images}",
        f"output={out}",
        "topk=3",
        "probabilities=true",
        cwd=tmp_path,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert [r["predicted_class"] for r in rows] == [p.label for p in predictions]
    assert [r["confidence"] for r in rows] == [f"{p.probability:.6f}" for p in predictions]
    for row, p in zip(rows, predictions, strict=True):
        ranked = sorted(p.probabilities.items(), key=lambda item: -item[1])
        assert [label for label, _ in p.top] == [label for label, _ in ranked[:5]]  # default 5
        assert [row[f"top{i}_class"] for i in (1, 2, 3)] == [label for label, _ in ranked[:3]]
        assert "top4_class" not in row
        assert float(row["top2_probability"]) == pytest.approx(ranked[1][1], abs=1e-6)
        assert [float(row[f"p_{d}"]) for d in range(10)] == pytest.approx(
            [p.probabilities[str(d)] for d in range(10)], abs=1e-6
        )
    assert "predictions:" in cli.stdout and f"{paths[0]}  {predictions[0].label}" in cli.stdout
