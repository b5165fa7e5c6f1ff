"""The evaluation report's files: per_class.csv, confusion matrices, reliability diagram, the most
confident mistakes with Grad-CAM (Captum), report.md and a self-contained report.html."""

from __future__ import annotations

import base64
import csv
import html
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.evaluation.metrics import ece, reliability, summarize, top_confusions

log = logging.getLogger(__name__)


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def for_display(images: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` model inputs -> ``[N, H, W, C]`` in [0, 1], min-max per image."""
    images = images.detach().float().cpu()[:, :3]
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    return ((images - low) / (high - low).clamp_min(1e-8)).permute(0, 2, 3, 1)


def confusion_figure(matrix: torch.Tensor, names: Sequence[str], normalized: bool) -> Any:
    """torchmetrics' plot: rows true class, columns predicted; numbers up to 20 classes."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    n = len(matrix)
    rates = (matrix.float() / matrix.sum(dim=1, keepdim=True).clamp_min(1)).round(decimals=2)
    figure = new_figure(min(21.5, max(6.5, 0.6 * n + 3.5)), min(20.0, max(5.0, 0.6 * n + 2)))
    ax = figure.subplots()
    labels = [c[:12] for c in names] if n <= 40 else None
    MulticlassConfusionMatrix(n).plot(
        rates if normalized else matrix, ax=ax, add_text=n <= 20, labels=labels, cmap="Blues"
    )
    label = "fraction of the true class" if normalized else "images"
    figure.colorbar(ax.images[0], ax=ax, fraction=0.046, label=label)
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalized else " (counts)"))
    return figure


def reliability_figure(curves: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """Accuracy against confidence per bin (perfect calibration: the diagonal)."""
    figure = new_figure(5, 5)
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], "k--", label="perfectly calibrated")
    for label, (probs, targets) in curves.items():
        confidence, accuracy, count = reliability(probs, targets)
        used = count > 0
        ax.plot(confidence[used], accuracy[used], "o-", label=label)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.set_title("reliability diagram (test)")
    ax.legend(loc="upper left")
    return figure


def explained_layer(net: nn.Module, image: torch.Tensor) -> nn.Module | None:
    """The last conv layer whose output is still at least 4x4 (else the largest), or None."""
    sizes: dict[nn.Module, int] = {}
    hooks = [
        m.register_forward_hook(lambda m, _i, out: sizes.__setitem__(m, out.shape[-1]))
        for m in net.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        net(image[:1])
    for hook in hooks:
        hook.remove()
    big = [m for m, size in sizes.items() if size >= 4]
    return big[-1] if big else max(sizes, key=sizes.get, default=None)


def grad_cam(net: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Captum's Grad-CAM of ``targets`` (``[N, H, W]`` in [0, 1]); None without a conv layer."""
    from captum.attr import LayerAttribution, LayerGradCam

    device = next(net.parameters()).device
    with torch.inference_mode(False), torch.enable_grad():
        x = images.clone().to(device).requires_grad_(True)
        layer = explained_layer(net, x)
        if layer is None:
            return None
        cam = LayerGradCam(net, layer).attribute(
            x, target=targets.to(device).clone(), relu_attributions=True
        )
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")[:, 0].detach()
    return (cam / cam.flatten(1).amax(dim=1).clamp_min(1e-8).view(-1, 1, 1)).cpu()


def gallery_figure(images: torch.Tensor, titles: Sequence[str], cams: torch.Tensor | None) -> Any:
    """The images (with their Grad-CAM beside each when given), four per row."""
    shown, per_image = for_display(images), 1 if cams is None else 2
    cols = min(4, len(shown)) * per_image
    rows = math.ceil(len(shown) * per_image / cols)
    figure = new_figure(1.6 * cols, 1.9 * rows)
    axes = figure.subplots(rows, cols, squeeze=False).flat
    for ax in axes:
        ax.axis("off")
    for i, image in enumerate(shown):
        ax = axes[i * per_image]
        grey = image.shape[-1] == 1
        ax.imshow(image[..., 0] if grey else image, cmap="gray" if grey else None)
        ax.set_title(titles[i], fontsize=7)
        if cams is not None:
            ax = axes[i * per_image + 1]
            ax.imshow(image.mean(-1), cmap="gray")
            ax.imshow(cams[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_title("Grad-CAM (predicted)", fontsize=7)
    figure.suptitle("most confident mistakes (test)")
    return figure


def write_csv(path: Path, header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def render(blocks: list[tuple[str, Any]], out_dir: Path) -> None:
    """``report.md`` (images linked) and ``report.html`` (images embedded) from the same blocks."""
    md, page = [], ["<!doctype html><meta charset='utf-8'><title>evaluation report</title>"]
    for kind, value in blocks:
        if kind == "table":
            header, rows = value
            md += ["| " + " | ".join(map(str, r)) + " |" for r in [header, ["---"] * len(header)]]
            md += ["| " + " | ".join(map(str, r)) + " |" for r in rows] + [""]
            cells = [[f"<td>{html.escape(str(c))}</td>" for c in r] for r in [header, *rows]]
            page.append(f"<table border=1>{''.join('<tr>' + ''.join(r) for r in cells)}</table>")
        elif kind == "img":  # a PNG in out_dir
            data = base64.b64encode((out_dir / value).read_bytes()).decode()
            md.append(f"![{value}]({value})\n")
            page.append(f"<p><img alt='{value}' src='data:image/png;base64,{data}'></p>")
        else:  # "h2" or "p"
            md.append(("## " if kind == "h2" else "") + f"{value}\n")
            page.append(f"<{kind}>{html.escape(value)}</{kind}>")
    (out_dir / "report.md").write_text("\n".join(md))
    (out_dir / "report.html").write_text("\n".join(page) + "\n")


def write_report(
    out_dir: Path,
    logits: torch.Tensor,
    targets: torch.Tensor,
    names: Sequence[str],
    temperature: float | None = None,
    tta: tuple[str, torch.Tensor] | None = None,
    mistakes: tuple[torch.Tensor, ...] | None = None,
    net: nn.Module | None = None,
) -> dict[str, float]:
    """Write the report of ``logits`` (all test images) into ``out_dir``; its headline numbers.

    ``temperature``: fitted on the validation split; ``tta``: (views' name, averaged probs);
    ``mistakes``: (images, true, predicted, probability) of the most confident mistakes.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    head, scores, support, matrix = summarize(logits, targets)
    names, probs, targets = [str(c) for c in names], logits.float().cpu(), targets.cpu()
    curves = {"as trained": (probs.softmax(dim=1), targets)}
    note = "No temperature: `python eval.py ckpt_path=<run dir>` fits one on the val split."
    if temperature is not None:
        curves[f"temperature {temperature:.3f}"] = ((probs / temperature).softmax(dim=1), targets)
        head["test/ece_calibrated"] = ece(*curves[f"temperature {temperature:.3f}"])
        note = f"Temperature {temperature:.4f} fitted on the validation split (NLL, LBFGS)."
    if tta is not None:
        head[f"test/acc_tta_{tta[0]}"] = float((tta[1].argmax(1).cpu() == targets).float().mean())
    labels = [*names, "macro avg", "weighted avg"]
    counts = [*support.tolist(), *[int(support.sum())] * 2]
    header = ["class", "precision", "recall", "f1", "support"]
    per_class = [
        [name, *(f"{v:.4f}" for v in row), count]
        for name, row, count in zip(labels, scores.tolist(), counts, strict=True)
    ]
    write_csv(out_dir / "per_class.csv", header, per_class)
    rates = (matrix.float() / matrix.sum(dim=1, keepdim=True).clamp_min(1)).tolist()
    rounded = [[round(v, 4) for v in row] for row in rates]
    for suffix, values in (("", matrix.tolist()), ("_normalized", rounded)):
        rows = [[n, *row] for n, row in zip(names, values, strict=True)]
        write_csv(out_dir / f"confusion_matrix{suffix}.csv", ["true \\ predicted", *names], rows)
    images = {
        "confusion_matrix.png": confusion_figure(matrix, names, False),
        "confusion_matrix_normalized.png": confusion_figure(matrix, names, True),
        "reliability.png": reliability_figure(curves),
    }
    confusions = [f"{names[t]} -> {names[p]}: {n}" for t, p, n in top_confusions(matrix)]
    blocks: list[tuple[str, Any]] = [
        ("h2", "Summary"),
        ("table", (["metric", "value"], [[k, f"{v:.4f}"] for k, v in head.items()])),
        ("p", note),
        ("h2", "Most frequent confusions (true -> predicted: images)"),
        ("p", "; ".join(confusions) or "none"),
        ("h2", "Per class"),
        ("table", (header, per_class)),
        ("h2", "Confusion matrix"),
        ("img", "confusion_matrix.png"),
        ("img", "confusion_matrix_normalized.png"),
        ("h2", "Calibration"),
        ("img", "reliability.png"),
    ]
    if mistakes is not None and len(mistakes[0]):
        pictures, true, pred, prob = mistakes
        cams = grad_cam(net, pictures, pred) if net is not None else None
        titles = [
            f"true: {names[t][:12]}\npred: {names[p][:12]} ({c:.2f})"
            for t, p, c in zip(true.tolist(), pred.tolist(), prob.tolist(), strict=True)
        ]
        images["mistakes.png"] = gallery_figure(pictures, titles, cams)
        blocks += [("h2", "Most confident mistakes"), ("img", "mistakes.png")]
        if cams is None:
            blocks.append(("p", "No Grad-CAM: the net has no convolutional layer to explain."))
    for name, figure in images.items():
        figure.savefig(out_dir / name)
    render(blocks, out_dir)
    log.info("evaluation report:\n" + "\n".join(f"  {k:<24} {v:.4f}" for k, v in head.items()))
    log.info(f"report -> {out_dir / 'report.html'}")
    return head
