"""``python predict.py ckpt_path=PATH input=IMAGE_OR_FOLDER``: a CSV of class predictions.

``ckpt_path`` is a training checkpoint (``.ckpt``) or a model exported by export.py (``.onnx``,
``.pt``; the preprocessing is read from the ``.json`` beside it).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

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


def predict(cfg: DictConfig) -> Path:
    apply_matmul_precision(cfg.get("float32_matmul_precision"))
    classifier = load_model(cfg.ckpt_path, device=cfg.device)
    files, rows, skipped = list_images(Path(cfg.input)), [], []
    for start in range(0, len(files), cfg.batch_size):
        batch = {}
        for path in files[start : start + cfg.batch_size]:
            try:
                batch[str(path)] = classifier.image_tensor(path)
            except UserError as err:
                skipped.append(str(err))
        rows += zip(batch, classifier.predict(batch.values(), cfg.get("topk")), strict=True)
    for message in skipped:
        log.warning(f"skipped: {message}")
    if not rows:
        raise UserError(f"input={cfg.input}: none of its {len(files)} image files could be read")
    every, k = bool(cfg.get("probabilities")), len(rows[0][1].top)
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
    shown = [
        ("file", "class", "confidence"),
        *[(f, p.label, f"{p.probability:.6f}") for f, p in rows[:20]],
    ]
    widths = [max(len(r[i]) for r in shown) for i in range(2)]
    table = [f"{f:<{widths[0]}}  {c:<{widths[1]}}  {p}" for f, c, p in shown]
    table += [f"... {len(rows) - 20} more in the CSV"] if len(rows) > 20 else []
    log.info("\n".join(["predictions:", *table]))
    log.info(f"{len(rows)} predictions ({len(skipped)} unreadable files skipped) -> {output}")
    return output


@report_errors
def run(cfg: DictConfig) -> Path:
    apply_extras(cfg)
    return predict(cfg)
