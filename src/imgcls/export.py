"""``python export.py ckpt_path=PATH format=onnx|torchscript`` (docs/tools.md)."""

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from imgcls.api import load_model
from imgcls.lifecycle import run_dir
from imgcls.utils.checkpoint import restore
from imgcls.utils.errors import UserError
from imgcls.utils.runs import apply_extras, report_errors

log = logging.getLogger(__name__)
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


class Divide(nn.Module):
    """``logits / T``: the temperature of eval.py calibrate=true (the argmax stays)."""

    def __init__(self, by: float) -> None:
        super().__init__()
        self.by = by

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.by


def export(cfg: DictConfig) -> Path:
    apply_extras(cfg)
    if cfg.format not in SUFFIXES:
        raise UserError(f"format={cfg.format} is not supported; use onnx or torchscript")
    restored = restore(cfg.ckpt_path)
    path = Path(cfg.output) if cfg.get("output") else run_dir(cfg).path / "model"
    path = path.with_suffix(SUFFIXES[cfg.format])
    path.parent.mkdir(parents=True, exist_ok=True)
    data, temperature = restored.datamodule, restored.temperature  # no data is loaded
    size, channels, resize = data.image_size, data.in_channels, data.hparams.resize
    net = restored.model.net.eval().float().cpu()
    net = net if temperature == 1.0 else nn.Sequential(net, Divide(temperature)).eval()
    example = torch.randn(2, channels, size, size)
    with torch.no_grad():
        if cfg.format == "torchscript":
            torch.jit.trace(net, example).save(str(path))
        else:
            torch.onnx.export(
                net,
                (example,),
                str(path),
                dynamo=True,
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=cfg.get("opset"),
                external_data=False,  # one self-contained file
                verbose=False,
            )
    spec = {
        "format": cfg.format,
        "model": path.name,
        "input_name": "image",
        "output_name": "logits",
        "in_channels": channels,
        "image_size": size,
        "resize": resize,
        "mean": data.pipeline.normalize.mean.flatten().tolist(),
        "std": data.pipeline.normalize.std.flatten().tolist(),
        "class_names": restored.class_names,
        "temperature": temperature,  # already applied: the output is logits / T
        "preprocessing": f"decode to {channels} channel(s), resize to {size}x{size} ({resize}; "
        "bilinear, antialiased), scale to [0, 1], subtract mean and divide by std per channel. "
        "The output's argmax is the class, its softmax the probabilities.",
    }
    path.with_suffix(".json").write_text(json.dumps(spec, indent=2) + "\n")
    batch = torch.randn(3, channels, size, size)  # another batch size than the example's
    with torch.no_grad():
        expected, got = net(batch), load_model(path).model(batch)
    error = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
    if not error <= cfg.atol:
        raise UserError(
            f"the exported {path.name} differs from the PyTorch model (shape {tuple(got.shape)} vs "
            f"{tuple(expected.shape)}, max abs difference {error:.3g} > atol={cfg.atol})"
        )
    log.info(f"exported model matches PyTorch on a batch of 3 (max abs diff {error:.2g})")
    log.info(f"{cfg.format} model -> {path}; preprocessing -> {path.with_suffix('.json')}")
    return path


run = report_errors(export)
