"""imgcls from Python: ``imgcls.load_model(run dir, .ckpt, .onnx or .pt).predict(images)``."""

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from imgcls.data.transforms import Normalize, resize_uint8, to_float
from imgcls.imaging import load_image_tensor, pil_to_tensor, to_uint8
from imgcls.utils.errors import UserError


@dataclass(frozen=True)
class Prediction:
    """One image's class, its ``topk`` (label, probability) pairs, every class's probability."""

    label: str
    probability: float
    index: int
    probabilities: dict[str, float]
    top: list[tuple[str, float]]


@dataclass
class Classifier:
    """A network (preprocessed batch -> logits), its preprocessing (uint8 images -> batch)."""

    model: Callable[[torch.Tensor], torch.Tensor]
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    in_channels: int
    class_names: Sequence[str]
    device: torch.device | str
    temperature: float = 1.0

    def image_tensor(self, image: str | Path | Image.Image | torch.Tensor) -> torch.Tensor:
        """A path, PIL image or tensor (``[C, H, W]``/``[H, W]``) as uint8 ``[C, H, W]``."""
        if isinstance(image, (str, Path)):
            return load_image_tensor(image, channels=self.in_channels)
        if isinstance(image, Image.Image):
            return pil_to_tensor(image, channels=self.in_channels)
        tensor = image.unsqueeze(0) if image.ndim == 2 else image
        if tensor.ndim != 3 or tensor.shape[0] != self.in_channels:
            raise UserError(
                f"a tensor input must be [C, H, W] with C={self.in_channels} (the model's "
                f"channels), got shape {tuple(image.shape)}"
            )
        return to_uint8(tensor).cpu()

    def predict(
        self,
        inputs: Iterable[Any] | str | Path | Image.Image | torch.Tensor,
        topk: int | None = None,
    ) -> list[Prediction]:
        """Each input's prediction with its ``topk`` (default: up to 5) most likely classes."""
        if isinstance(inputs, (str, Path, Image.Image, torch.Tensor)):
            inputs = [inputs]
        images = [self.preprocess(self.image_tensor(i).unsqueeze(0)) for i in inputs]
        if not images:
            return []
        with torch.inference_mode():
            logits = self.model(torch.cat(images).to(self.device)).float() / self.temperature
        probs = logits.softmax(dim=1).cpu()
        names = [str(c) for c in self.class_names] or [str(i) for i in range(probs.shape[1])]
        k = min(5 if topk is None else int(topk), len(names))
        if k < 1:
            raise UserError(f"topk={topk} must be at least 1")
        return [
            Prediction(
                label=names[int(top[0])],
                probability=float(row[int(top[0])]),
                index=int(top[0]),
                probabilities=dict(zip(names, row.tolist(), strict=True)),
                top=[(names[i], p) for i, p in zip(top.tolist(), value.tolist(), strict=True)],
            )
            for row, value, top in zip(probs, *probs.topk(k, dim=1), strict=True)
        ]


def exported(path: Path, device: torch.device) -> Classifier:
    """A model written by export.py, with the preprocessing of the ``.json`` beside it."""
    if not path.with_suffix(".json").is_file():
        raise UserError(
            f"ckpt_path={path} does not exist or has no {path.stem}.json beside it: export "
            "models with `python export.py ckpt_path=<.ckpt> format=onnx|torchscript`"
        )
    spec = json.loads(path.with_suffix(".json").read_text())
    normalize, size = Normalize(spec["mean"], spec["std"]), spec["image_size"]

    def preprocess(images: torch.Tensor) -> torch.Tensor:
        return normalize(to_float(resize_uint8(images, size, spec.get("resize", "squash"))))

    if spec["format"] == "onnx":
        import onnxruntime

        wanted = ["CUDAExecutionProvider"] * (device.type == "cuda") + ["CPUExecutionProvider"]
        providers = [p for p in wanted if p in onnxruntime.get_available_providers()]
        session = onnxruntime.InferenceSession(str(path), providers=providers)

        def model(images: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(["logits"], {"image": images.cpu().numpy()})[0])

    else:
        model = torch.jit.load(str(path), device).eval()
    return Classifier(model, preprocess, spec["in_channels"], spec["class_names"], device)


def load_model(ckpt_path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """The classifier of a ``.ckpt`` (or run dir) or of an exported model; ``device="auto"``."""
    from imgcls.utils.checkpoint import restore

    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} but no GPU is available; use device=cpu")
    if Path(ckpt_path).suffix in (".onnx", ".pt"):
        return exported(Path(ckpt_path), torch.device(device))
    restored = restore(ckpt_path)  # the datamodule only preprocesses: it loads no data
    data, model = restored.datamodule, restored.model.eval().to(device)
    names, temperature = restored.class_names, restored.temperature
    return Classifier(model, data.preprocess, data.in_channels, names, device, temperature)
