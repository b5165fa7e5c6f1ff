"""export.py: ONNX and TorchScript models matching PyTorch on real images; predict.py on them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from imgcls.export import export
from imgcls.models.classifier import ImageClassifier
from imgcls.predict import predict
from imgcls.train import train
from imgcls.utils.checkpoint import read_checkpoint
from imgcls.utils.errors import UserError

from .conftest import compose_config, run_cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A short digits run, its last checkpoint exported to both formats, and a folder of PNGs."""
    root = tmp_path_factory.mktemp("export")
    overrides = ["data=digits", "trainer.max_epochs=1", "callbacks=last_checkpoint", "test=false"]
    train(compose_config("train", [*overrides, "logger=csv"], root / "run"))
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    paths = {"ckpt": ckpt}
    for fmt in ("onnx", "torchscript"):
        cfg = compose_config("export", [f"ckpt_path={ckpt}", f"format={fmt}"], root / fmt)
        paths[fmt] = export(cfg)
    # real digits as 40x40 PNG files: predict resizes them to the trained 28x28
    from imgcls.data.digits import DigitsDataModule

    datamodule = DigitsDataModule()
    datamodule.setup("test")
    images, _ = datamodule.splits["test"]
    folder = root / "images"
    folder.mkdir()
    for i, image in enumerate(images[:12]):
        Image.fromarray(image[0].numpy()).resize((40, 40)).save(folder / f"digit_{i:02d}.png")
    paths["images"] = folder
    return paths


def real_batch(paths: dict[str, Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """(preprocessed PNG batch, the checkpoint's PyTorch outputs on it)."""
    from imgcls.api import load_model

    classifier = load_model(paths["ckpt"])
    files = sorted(paths["images"].glob("*.png"))
    batch = torch.cat([classifier.preprocess(classifier.image_tensor(f)[None]) for f in files])
    with torch.no_grad():
        return batch, classifier.model(batch)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_model_matches_pytorch_on_real_images_at_any_batch_size(exported, fmt) -> None:
    batch, expected = real_batch(exported)
    model = imgcls.load_model(exported[fmt]).model
    for size in (1, 5, len(batch)):  # exported with a batch of 2: the batch dimension is dynamic
        torch.testing.assert_close(model(batch[:size]), expected[:size], atol=1e-4, rtol=1e-4)
    assert (expected.argmax(1) == model(batch).argmax(1)).all()


def test_preprocessing_is_written_beside_the_model(exported) -> None:
    onnx_path = exported["onnx"]
    assert onnx_path.name == "model.onnx" and exported["torchscript"].name == "model.pt"
    spec = json.loads(onnx_path.with_suffix(".json").read_text())
    assert spec["format"] == "onnx" and spec["model"] == "model.onnx"
    assert spec["image_size"] == 28 and spec["in_channels"] == 1
    assert spec["class_names"] == [str(d) for d in range(10)]
    assert spec["mean"] == pytest.approx([0.1557]) and spec["std"] == pytest.approx([0.2773])
    # the spec alone reproduces the checkpoint's preprocessing (predict runs the model with it)
    from imgcls.imaging import load_image_tensor

    batch, _ = real_batch(exported)

    files = sorted(exported["images"].glob("*.png"))
    raw = torch.stack([load_image_tensor(f, 1) for f in files])
    assert raw.shape[-2:] == (40, 40)  # the files really are another size
    torch.testing.assert_close(imgcls.load_model(onnx_path).preprocess(raw), batch)


def read_predictions(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_predict_runs_from_the_exported_files(exported, tmp_path) -> None:
    rows = {}
    for name in ("ckpt", "onnx", "torchscript"):
        cfg = compose_config(
            "predict",
            [f"ckpt_path={exported[name]}", f"input={exported['images']}", "device=cpu"],
            tmp_path / name,
        )
        rows[name] = read_predictions(predict(cfg))
    assert len(rows["ckpt"]) == 12
    for name in ("onnx", "torchscript"):
        assert [r["predicted_class"] for r in rows[name]] == [
            r["predicted_class"] for r in rows["ckpt"]
        ]
        confidences = np.array([float(r["confidence"]) for r in rows[name]])
        reference = np.array([float(r["confidence"]) for r in rows["ckpt"]])
        np.testing.assert_allclose(confidences, reference, atol=2e-6)


def test_exported_weights_are_the_checkpoints(exported) -> None:
    """TorchScript keeps parameter names: the exported weights are the checkpoint's net."""
    scripted = torch.jit.load(str(exported["torchscript"]))
    net = ImageClassifier.from_checkpoint(read_checkpoint(exported["ckpt"])).net
    for name, tensor in net.state_dict().items():
        assert torch.equal(scripted.state_dict()[name], tensor)


def test_bad_export_input_is_one_line(exported, tmp_path) -> None:
    cfg = compose_config("export", [f"ckpt_path={exported['ckpt']}", "format=tflite"], tmp_path)
    with pytest.raises(UserError, match="format=tflite is not supported; use onnx or torchscript"):
        export(cfg)
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(exported["onnx"].read_bytes())
    with pytest.raises(UserError, match="has no lone.json beside it"):
        imgcls.load_model(lone)


@pytest.mark.slow
def test_export_from_the_command_line(exported, tmp_path) -> None:
    out = tmp_path / "served" / "digits.pt"
    result = run_cli(
        "export.py",
        f"ckpt_path={exported['ckpt']}",
        "format=torchscript",
        f"output={out}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["format"] == (
        "torchscript"
    )
    assert list((tmp_path / "logs" / "export" / "runs").glob("*/export.log"))
    bad = run_cli("export.py", f"ckpt_path={tmp_path / 'missing.ckpt'}", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ckpt_path=")
