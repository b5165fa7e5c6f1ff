"""imgcls from Python: ``load_model`` for predictions (``compose`` for configs: imgcls.config).

    import imgcls
    model = imgcls.load_model("logs/train/runs/<run>")          # a run dir or a .ckpt
    model.predict(["a.png", pil_image, uint8_tensor])           # [Prediction(label=..., ...)]
    cfg = imgcls.compose(overrides=["data=digits", "trainer.max_epochs=3"])

``predict.py`` goes through the same ``Classifier.predict``: both give identical predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from imgcls.utils.errors import UserError


@dataclass(frozen=True)
class Prediction:
    """One image's class, its ``topk`` (label, probability) pairs, every class's probability."""

    label: str
    probability: float
    index: int
    probabilities: dict[str, float]
    top: list[tuple[str, float]]


class Classifier:
    """A trained network (``model``: preprocessed batch -> logits on ``device``), its class names
    and its preprocessing (``preprocess``: uint8 ``[N, C, H, W]`` of any size -> that batch)."""

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        preprocess: Callable[[torch.Tensor], torch.Tensor],
        in_channels: int,
        class_names: Sequence[str],
        device: str | torch.device = "cpu",
        temperature: float = 1.0,
    ) -> None:
        self.model, self.preprocess, self.temperature = model, preprocess, float(temperature)
        self.in_channels, self.class_names = int(in_channels), [str(c) for c in class_names]
        self.device = torch.device(device)

    def image_tensor(self, image: str | Path | Image.Image | torch.Tensor) -> torch.Tensor:
        """A file path, a PIL image or a tensor (uint8, or float in [0, 1]; ``[C, H, W]`` or
        ``[H, W]``, the model's channels) as uint8 ``[C, H, W]``."""
        from imgcls.imaging import load_image_tensor, pil_to_tensor

        if isinstance(image, (str, Path)):
            return load_image_tensor(image, channels=self.in_channels)
        if isinstance(image, Image.Image):
            return pil_to_tensor(image, channels=self.in_channels)
        if isinstance(image, torch.Tensor):
            tensor = image.unsqueeze(0) if image.ndim == 2 else image
            if tensor.ndim != 3 or tensor.shape[0] != self.in_channels:
                raise UserError(
                    f"a tensor input must be [C, H, W] with C={self.in_channels} (the model's "
                    f"channels), got shape {tuple(image.shape)}"
                )
            if tensor.is_floating_point():
                tensor = (tensor.clamp(0, 1) * 255).round()
            return tensor.to(torch.uint8).cpu()
        raise UserError(
            f"cannot predict {type(image).__name__}: pass file paths, PIL images or tensors"
        )

    def predict(
        self,
        inputs: Iterable[str | Path | Image.Image | torch.Tensor] | str | Path,
        topk: int | None = None,
    ) -> list[Prediction]:
        """The prediction of each input (paths, PIL images, tensors), in order, each with its
        ``topk`` most likely classes (default: min(5, classes)); probabilities are
        ``softmax(logits / temperature)``."""
        if isinstance(inputs, (str, Path, Image.Image, torch.Tensor)):
            inputs = [inputs]
        images = [self.preprocess(self.image_tensor(i).unsqueeze(0)) for i in inputs]
        if not images:
            return []
        with torch.inference_mode():
            logits = self.model(torch.cat(images).to(self.device)).float() / self.temperature
        probs = logits.softmax(dim=1).cpu()
        names = [*self.class_names, *map(str, range(len(self.class_names), probs.shape[1]))]
        k = min(5 if topk is None else int(topk), len(names))
        if k < 1:
            raise UserError(f"topk={topk} must be at least 1")
        values, indices = probs.topk(k, dim=1)
        return [
            Prediction(
                label=names[int(top[0])],
                probability=float(row[int(top[0])]),
                index=int(top[0]),
                probabilities=dict(zip(names, row.tolist(), strict=True)),
                top=[(names[i], p) for i, p in zip(top.tolist(), value.tolist(), strict=True)],
            )
            for row, value, top in zip(probs, values, indices, strict=True)
        ]


def load_model(ckpt_path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """The classifier of an imgcls checkpoint (a ``.ckpt`` or a run dir: its best one), rebuilt
    from its stored config with the data config's preprocessing, or a model written by export.py
    (``.onnx``/``.pt`` with its ``.json`` beside it). ``device="auto"``: a GPU when there is one.
    """
    from imgcls.config import setup_config_environment
    from imgcls.export import ExportedClassifier, is_exported
    from imgcls.utils.checkpoint import restore

    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} but no GPU is available; use device=cpu")
    if is_exported(ckpt_path):
        model = ExportedClassifier(ckpt_path, device)
        return Classifier(model, model.preprocess, model.in_channels, model.class_names, device)
    setup_config_environment()
    restored = restore(ckpt_path)  # the datamodule only preprocesses: it loads no data
    data, model, t = restored.datamodule, restored.model.eval().to(device), restored.temperature
    return Classifier(model, data.preprocess, data.in_channels, restored.class_names, device, t)
