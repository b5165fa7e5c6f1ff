"""``python predict.py ckpt_path=PATH input=IMAGE_OR_FOLDER``: a CSV of class predictions."""

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


def predict(cfg: DictConfig) -> Path:
    apply_extras(cfg)
    apply_matmul_precision(cfg.get("float32_matmul_precision"))
    classifier, source = load_model(cfg.ckpt_path, device=cfg.device), Path(cfg.input)
    if not source.exists():
        raise UserError(f"input={source} does not exist; pass an image file or a folder of images")
    files = [source] if source.is_file() else sorted(source.rglob("*"))
    files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES or p == source]
    rows = []
    for start in range(0, len(files), cfg.batch_size):
        batch = {}
        for path in files[start : start + cfg.batch_size]:
            try:
                batch[str(path)] = classifier.image_tensor(path)
            except UserError as err:
                log.warning(f"skipped: {err}")
        rows += zip(batch, classifier.predict(batch.values(), cfg.get("topk")), strict=True)
    if not rows:
        raise UserError(f"input={source}: no readable image ({', '.join(sorted(IMAGE_SUFFIXES))})")
    k, every = len(rows[0][1].top), cfg.get("probabilities")
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
    shown = [f"{file}  {p.label}  {p.probability:.6f}" for file, p in rows[:20]]
    log.info("\n".join(["predictions:", *shown, *(["..."] if len(rows) > 20 else [])]))
    skipped = len(files) - len(rows)
    log.info(f"{len(rows)} predictions ({skipped} unreadable files skipped) -> {output}")
    return output


run = report_errors(predict)
