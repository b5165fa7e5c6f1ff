"""``python predict.py ckpt_path=PATH input=IMAGE_OR_FOLDER``: a CSV of class predictions.

``ckpt_path`` is a training checkpoint (``.ckpt``) or a model exported by export.py (``.onnx``,
``.pt``; the preprocessing is read from the ``.json`` beside it).
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from imgcls.config import CONFIG_DIR, setup_config_environment
from imgcls.export import ExportedClassifier, is_exported
from imgcls.imaging import IMAGE_SUFFIXES, load_image_tensor
from imgcls.utils.checkpoint import restore
from imgcls.utils.errors import UserError
from imgcls.utils.preflight import exit_on_unknown_choice
from imgcls.utils.runs import apply_extras, report_errors

log = logging.getLogger(__name__)


def list_images(source: Path) -> list[Path]:
    """The image file itself, or every image below a folder (sorted, recursive)."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise UserError(f"input={source} does not exist; pass an image file or a folder of images")
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(
            f"input={source} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return files


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no GPU is available; use device=cpu")
    return torch.device(name)


def load_classifier(path: str, device: torch.device) -> tuple[Any, Callable, int, list[str]]:
    """(model, preprocess, channels, class names) of a checkpoint or an exported model."""
    if is_exported(path):  # model.onnx / model.pt from export.py, its model.json beside it
        exported = ExportedClassifier(path, device)
        return exported, exported.preprocess, exported.in_channels, exported.class_names
    restored = restore(path)  # the datamodule only preprocesses: no data is loaded
    datamodule = restored.datamodule
    model = restored.model.eval().to(device)
    return model, datamodule.preprocess, datamodule.in_channels, restored.class_names


def predict(cfg: DictConfig) -> Path:
    device = pick_device(cfg.device)
    model, preprocess, channels, class_names = load_classifier(cfg.ckpt_path, device)

    rows, skipped = [], []
    files = list_images(Path(cfg.input))
    for start in range(0, len(files), cfg.batch_size):
        batch_files, images = [], []
        for path in files[start : start + cfg.batch_size]:
            try:
                image = load_image_tensor(path, channels=channels)
            except UserError as err:
                skipped.append(str(err))
                continue
            batch_files.append(path)
            images.append(preprocess(image.unsqueeze(0)))
        if not images:
            continue
        with torch.inference_mode():
            probs = model(torch.cat(images).to(device)).softmax(dim=1).cpu()
        confidence, index = probs.max(dim=1)
        for path, i, p in zip(batch_files, index.tolist(), confidence.tolist(), strict=True):
            name = class_names[i] if i < len(class_names) else str(i)
            rows.append((str(path), name, f"{p:.6f}"))

    for message in skipped:
        log.warning(f"skipped: {message}")
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "predicted_class", "confidence"])
        writer.writerows(rows)
    log.info(f"{len(rows)} predictions ({len(skipped)} unreadable files skipped) -> {output}")
    return output


@report_errors
def run(cfg: DictConfig) -> Path:
    apply_extras(cfg)
    return predict(cfg)


def main() -> None:
    setup_config_environment()
    exit_on_unknown_choice(sys.argv[1:], CONFIG_DIR)
    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")(run)()


if __name__ == "__main__":
    main()
