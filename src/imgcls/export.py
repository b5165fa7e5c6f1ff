"""``python export.py ckpt_path=PATH format=onnx|torchscript``: a servable model + preprocessing.

The network (eval mode, CPU, float32, any batch size) as ONNX (``model.onnx``, torch.export-based)
or TorchScript (``model.pt``, traced), ``model.json`` (input size, channels, mean/std, class names)
beside it; the exported model must match PyTorch on a batch of another size. See docs/tools.md.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from imgcls.data.transforms import Normalize, resize_uint8, to_float
from imgcls.lifecycle import run_dir
from imgcls.utils.checkpoint import restore
from imgcls.utils.errors import UserError
from imgcls.utils.runs import apply_extras, report_errors

log = logging.getLogger(__name__)

#: export format -> file suffix of the exported model
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def is_exported(path: str | Path) -> bool:
    return Path(path).suffix in SUFFIXES.values()


class Divide(nn.Module):  # logits / temperature: eval.py calibrate=true, same argmax
    def __init__(self, by: float) -> None:
        super().__init__()
        self.by = by

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.by


def need(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(f"{what} needs {module}: pip install -e '.[export]'") from err


class ExportedClassifier:
    """An exported model with the preprocessing beside it: callable on a preprocessed batch."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu") -> None:
        path, self.device = Path(path), torch.device(device)
        if not path.is_file():
            raise UserError(f"ckpt_path={path} does not exist")
        if not path.with_suffix(".json").is_file():
            raise UserError(
                f"ckpt_path={path} has no {path.stem}.json beside it: export models with "
                "`python export.py ckpt_path=<.ckpt> format=onnx|torchscript`"
            )
        spec = json.loads(path.with_suffix(".json").read_text())
        self.format, self.class_names = spec["format"], list(spec["class_names"])
        self.in_channels, self.image_size = int(spec["in_channels"]), int(spec["image_size"])
        self.resize = spec.get("resize", "squash")
        self.normalize = Normalize(spec["mean"], spec["std"])
        if self.format == "onnx":
            ort = need("onnxruntime", f"running {path.name}")
            cuda = ["CUDAExecutionProvider"] if self.device.type == "cuda" else []
            providers = [p for p in cuda if p in ort.get_available_providers()]
            self.session = ort.InferenceSession(
                str(path), providers=[*providers, "CPUExecutionProvider"]
            )
        else:
            self.module = torch.jit.load(str(path), map_location=self.device).eval()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` images of any size -> the model's normalised input."""
        return self.normalize(to_float(resize_uint8(images, self.image_size, self.resize)))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Scores ``[N, classes]`` of a preprocessed batch."""
        if self.format == "onnx":
            feed = {INPUT_NAME: images.detach().cpu().numpy()}
            return torch.from_numpy(self.session.run([OUTPUT_NAME], feed)[0])
        with torch.inference_mode():
            return self.module(images.to(self.device))


def export(cfg: DictConfig) -> Path:
    if cfg.format not in SUFFIXES:
        raise UserError(f"format={cfg.format} is not supported; use onnx or torchscript")
    restored = restore(cfg.ckpt_path)
    path = Path(cfg.output) if cfg.get("output") else run_dir(cfg).path / "model"
    path = path.with_suffix(SUFFIXES[cfg.format])
    path.parent.mkdir(parents=True, exist_ok=True)
    data = restored.datamodule  # it preprocesses: no data is loaded
    size, channels, resize = data.image_size, data.in_channels, data.hparams.resize
    mode = "RGB" if channels > 1 else "grayscale"
    spec = {
        "format": cfg.format,
        "model": path.name,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "in_channels": channels,
        "image_size": size,
        "resize": resize,
        "mean": data.pipeline.normalize.mean.flatten().tolist(),
        "std": data.pipeline.normalize.std.flatten().tolist(),
        "class_names": restored.class_names,
        "temperature": restored.temperature,  # already applied: the output is logits / T
        "preprocessing": f"decode to {channels} channel(s) ({mode}), "
        f"resize to {size}x{size} ({resize}; bilinear, antialiased), scale to [0, 1], subtract "
        f"mean and divide by std per channel; float32 [batch, {channels}, {size}, {size}]. The "
        "output is [batch, classes] scores (logits or log-probabilities): argmax is the class, "
        "softmax the probabilities.",
    }
    net = restored.model.net.eval().float().cpu()
    if restored.temperature != 1.0:
        net = nn.Sequential(net, Divide(restored.temperature))
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, channels, size, size, generator=generator)
    with torch.no_grad():
        if cfg.format == "torchscript":
            torch.jit.trace(net, example).save(str(path))
        else:
            need("onnxscript", "format=onnx")  # torch's ONNX exporter imports it
            torch.onnx.export(
                net,
                (example,),
                str(path),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=cfg.get("opset"),
                external_data=False,  # one self-contained file
                verbose=False,
            )
        path.with_suffix(".json").write_text(json.dumps(spec, indent=2) + "\n")
        # the exported model must give the PyTorch outputs on a batch of another size
        batch = torch.randn(3, channels, size, size, generator=generator)
        expected, got = net(batch), ExportedClassifier(path)(batch)
    error = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
    if not error <= cfg.atol:
        raise UserError(
            f"the exported {path.name} differs from the PyTorch model (shape {tuple(got.shape)} vs "
            f"{tuple(expected.shape)}, max abs difference {error:.3g} > atol={cfg.atol})"
        )
    log.info(f"exported model matches PyTorch on a batch of 3 (max abs diff {error:.2g})")
    log.info(f"{cfg.format} model -> {path}; preprocessing -> {path.with_suffix('.json')}")
    return path


@report_errors
def run(cfg: DictConfig) -> Path:
    apply_extras(cfg)
    return export(cfg)
