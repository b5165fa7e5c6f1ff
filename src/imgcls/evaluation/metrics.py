"""The report's numbers from all ranks' logits and labels (torchmetrics), temperature, TTA views."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from imgcls.utils.errors import UserError

ECE_BINS = 15
AVERAGES = ("none", "macro", "weighted")
View = Callable[[torch.Tensor], torch.Tensor]


def gather(trainer: Any, rows: torch.Tensor) -> torch.Tensor:
    """Every rank's ``rows`` (any number) concatenated, on every rank; the same collectives on
    every rank whatever its shard length, so ranks never wait on each other."""
    if trainer.world_size == 1:
        return rows
    sizes = trainer.strategy.all_gather(torch.tensor(len(rows), device=rows.device)).flatten()
    padded = rows.new_zeros((max(1, int(sizes.max())), *rows.shape[1:]))
    padded[: len(rows)] = rows
    everyone = trainer.strategy.all_gather(padded)
    return torch.cat([everyone[rank, :n] for rank, n in enumerate(sizes.tolist())])


def tta_views(name: str) -> list[View]:
    """The views averaged by test-time augmentation: the image itself first."""

    def flip(x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)

    def crop(x: torch.Tensor) -> torch.Tensor:  # the central 7/8, resized back
        h, w = x.shape[-2:]
        cropped = x[..., h // 16 : h - h // 16, w // 16 : w - w // 16]
        return F.interpolate(cropped, size=(h, w), mode="bilinear", align_corners=False)

    extra = {"none": [], "flip": [flip], "flip_crop": [flip, crop, lambda x: flip(crop(x))]}
    if name not in extra:
        raise UserError(f"tta={name} is not one of {', '.join(extra)}; pick one of them")
    return [lambda x: x, *extra[name]]


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)`` (LBFGS on log T)."""
    with torch.inference_mode(False), torch.enable_grad():
        logits, targets = logits.detach().float().cpu().clone(), targets.cpu().clone()
        log_t = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), targets)
            loss.backward()
            return loss

        optimizer.step(closure)
    return float(log_t.detach().exp())


def ece(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Expected calibration error (top-1 confidence, 15 bins, L1)."""
    return float(multiclass_calibration_error(probs, targets, probs.shape[1], n_bins=ECE_BINS))


def summarize(logits: torch.Tensor, targets: torch.Tensor) -> tuple[dict[str, float], ...]:
    """Headline numbers (top-1, top-5 beyond 5 classes, macro F1, ECE); precision/recall/F1 per
    class then macro and weighted averages ``[C + 2, 3]``; support ``[C]``; confusion counts."""
    probs, n, targets = logits.float().softmax(dim=1).cpu(), logits.shape[1], targets.cpu()
    head = {"test/acc": float(multiclass_accuracy(probs, targets, n, average="micro"))}
    if n > 5:
        head["test/acc_top5"] = float(
            multiclass_accuracy(probs, targets, n, top_k=5, average="micro")
        )
    scores = (multiclass_precision, multiclass_recall, multiclass_f1_score)
    table = [torch.stack([f(probs, targets, n, average=a) for f in scores], -1) for a in AVERAGES]
    table = torch.cat([table[0], table[1][None], table[2][None]])
    head |= {"test/f1_macro": float(table[-2, 2]), "test/ece": ece(probs, targets)}
    support = torch.bincount(targets, minlength=n)
    return head, table, support, multiclass_confusion_matrix(probs, targets, n)


def top_confusions(confusion: torch.Tensor, limit: int = 10) -> list[tuple[int, int, int]]:
    """The largest off-diagonal cells as (true, predicted, count), largest first."""
    off = confusion.clone().fill_diagonal_(0).flatten()
    counts, cells = off.sort(descending=True)
    n = len(confusion)
    pairs = zip(counts.tolist(), cells.tolist(), strict=True)
    return [(c // n, c % n, k) for k, c in pairs if k > 0][:limit]


def reliability(probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per confidence bin: mean confidence, accuracy, count (the reliability diagram's bars)."""
    confidence, predicted = probs.nan_to_num(0.0).max(dim=1)  # a diverged model: NaN outputs
    bins = (confidence * ECE_BINS).long().clamp(0, ECE_BINS - 1)
    count = torch.bincount(bins, minlength=ECE_BINS).float()
    correct = torch.bincount(bins, (predicted == targets).float(), minlength=ECE_BINS)
    mean_conf = torch.bincount(bins, confidence, minlength=ECE_BINS)
    return mean_conf / count.clamp_min(1), correct / count.clamp_min(1), count
