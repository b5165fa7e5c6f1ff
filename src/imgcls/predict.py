"""``python predict.py ckpt_path=PATH input=IMAGE_OR_FOLDER``: a CSV of class predictions.

``ckpt_path`` is a training checkpoint (``.ckpt``) or a model exported by export.py (``.onnx``,
``.pt``; the preprocessing is read from the ``.json`` beside it).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from imgcls.api import load_model
from imgcls.imaging import IMAGE_SUFFIXES
from imgcls.utils.devices import apply_matmul_precision
from imgcls.utils.errors import UserError
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


def predict(cfg: DictConfig) -> Path:
    apply_matmul_precision(cfg.get("float32_matmul_precision"))
    classifier = load_model(cfg.ckpt_path, device=pick_device(cfg.device))
    topk, every = cfg.get("topk"), bool(cfg.get("probabilities"))
    rows, skipped = [], []
    files = list_images(Path(cfg.input))
    for start in range(0, len(files), cfg.batch_size):
        batch_files, images = [], []
        for path in files[start : start + cfg.batch_size]:
            try:
                images.append(classifier.image_tensor(path))
            except UserError as err:
                skipped.append(str(err))
                continue
            batch_files.append(path)
        if images:
            predictions = classifier.predictions(classifier.probabilities(images), topk)
            rows += list(zip(map(str, batch_files), predictions, strict=True))

    for message in skipped:
        log.warning(f"skipped: {message}")
    if not rows:
        raise UserError(f"input={cfg.input}: none of its {len(files)} image files could be read")
    k = len(rows[0][1].top)
    header = ["file", "predicted_class", "confidence"]
    header += [f"top{i}_{kind}" for i in range(1, k + 1) for kind in ("class", "probability")]
    header += [f"p_{name}" for name in rows[0][1].probabilities] if every else []
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for file, p in rows:
            top = [v for label, prob in p.top for v in (label, f"{prob:.6f}")]
            every_p = [f"{v:.6f}" for v in p.probabilities.values()] if every else []
            writer.writerow([file, p.label, f"{p.probability:.6f}", *top, *every_p])
    log.info(prediction_table([(f, p.label, f"{p.probability:.6f}") for f, p in rows]))
    log.info(f"{len(rows)} predictions ({len(skipped)} unreadable files skipped) -> {output}")
    return output


def prediction_table(rows: list[tuple[str, str, str]], limit: int = 20) -> str:
    """The first ``limit`` predictions as aligned columns (the CSV holds them all)."""
    shown = [("file", "class", "confidence"), *rows[:limit]]
    widths = [max(len(r[i]) for r in shown) for i in range(2)]
    lines = [f"{f:<{widths[0]}}  {c:<{widths[1]}}  {p}" for f, c, p in shown]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more in the CSV")
    return "\n".join(["predictions:", *lines])


@report_errors
def run(cfg: DictConfig) -> Path:
    apply_extras(cfg)
    return predict(cfg)


if __name__ == "__main__":
    from imgcls.cli import predict

    predict()
