"""The evaluation report of all ranks' logits: its numbers, figures, report.md and report.html."""

import base64
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from markdown_it import MarkdownIt
from scipy.optimize import minimize_scalar
from torch import nn
from torchmetrics.functional import classification as M

from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)
ECE_BINS = 15


def tta_views(name: str) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The views test-time augmentation averages: the image, its mirror, a central 7/8 crop."""

    def crop(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return TF.resize(TF.center_crop(x, [h - h // 16 * 2, w - w // 16 * 2]), [h, w])

    count = {"none": 1, "flip": 2, "flip_crop": 4}
    if name not in count:
        raise UserError(f"tta={name} is not one of {', '.join(count)}; pick one of them")
    return [lambda x: x, TF.hflip, crop, lambda x: TF.hflip(crop(x))][: count[name]]


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)`` (scipy's bounded Brent)."""
    logits, targets = logits.double().cpu(), targets.cpu()

    def nll(t: float) -> float:
        return float(F.cross_entropy(logits / t, targets))

    return float(minimize_scalar(nll, bounds=(0.01, 100.0), method="bounded").x)


def ece(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Expected calibration error (top-1 confidence, 15 bins, L1)."""
    return float(M.multiclass_calibration_error(probs, targets, probs.shape[1], n_bins=ECE_BINS))


def most_confident_mistakes(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of the ``k`` wrong predictions of highest confidence, most confident first."""
    confidence, predicted = logits.softmax(1).max(1)
    wrong = (predicted != targets).nonzero().flatten()
    return wrong[confidence[wrong].argsort(descending=True)[:k]]


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure without pyplot state (no display)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def for_display(images: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` model inputs -> ``[N, H, W, C]`` in [0, 1], min-max per image."""
    images = images.detach().float().cpu()[:, :3]
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    return ((images - low) / (high - low).clamp_min(1e-8)).permute(0, 2, 3, 1)


def confusion_figure(matrix: torch.Tensor, names: Sequence[str], what: str) -> Any:
    """torchmetrics' plot: rows true class, columns predicted; numbers up to 20 classes."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    n = len(matrix)
    figure = new_figure(min(21.5, max(6.5, 0.6 * n + 3.5)), min(20.0, max(5.0, 0.6 * n + 2)))
    ax = figure.subplots()
    labels = [c[:12] for c in names] if n <= 40 else None
    MulticlassConfusionMatrix(n).plot(matrix, ax=ax, add_text=n <= 20, labels=labels, cmap="Blues")
    label = "images" if what == "counts" else "fraction of the true class"
    figure.colorbar(ax.images[0], ax=ax, fraction=0.046, label=label)
    ax.set_title(f"confusion matrix ({what})")
    return figure


def reliability_figure(curves: dict[str, torch.Tensor], targets: torch.Tensor) -> Any:
    """Accuracy against top-1 confidence per bin (scikit-learn's CalibrationDisplay)."""
    from sklearn.calibration import CalibrationDisplay

    figure = new_figure(5, 5)
    ax = figure.subplots()
    for label, probs in curves.items():
        confidence, predicted = probs.nan_to_num(0.0).max(dim=1)  # a diverged model: NaN outputs
        correct = (predicted == targets).int().numpy()
        CalibrationDisplay.from_predictions(
            correct, confidence.numpy(), n_bins=ECE_BINS, name=label, ax=ax
        )
    ax.set(xlabel="confidence", ylabel="accuracy", title="reliability diagram (test)")
    return figure


def grad_cam(net: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Captum's Grad-CAM ``[N, H, W]`` in [0, 1] at the last conv layer with >= 4x4 outputs."""
    from captum.attr import LayerAttribution, LayerGradCam

    x = images.clone().to(next(net.parameters()).device)
    sizes: dict[nn.Module, int] = {}
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    hooks = [
        m.register_forward_hook(lambda m, _, out: sizes.update({m: out.shape[-1]})) for m in convs
    ]
    with torch.no_grad():
        net(x[:1])
    for hook in hooks:
        hook.remove()
    big = [m for m, size in sizes.items() if size >= 4]
    layer = big[-1] if big else max(sizes, key=sizes.get, default=None)
    if layer is None:
        return None
    with torch.inference_mode(False), torch.enable_grad():
        x = x.clone().requires_grad_(True)
        target = targets.to(x.device).clone()
        cam = LayerGradCam(net, layer).attribute(x, target=target, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")[:, 0].detach()
    return (cam / cam.flatten(1).amax(dim=1).clamp_min(1e-8).view(-1, 1, 1)).cpu()


def gallery_figure(images: torch.Tensor, titles: Sequence[str], cams: torch.Tensor | None) -> Any:
    """The images (with their Grad-CAM beside each when given), four per row."""
    shown, per = for_display(images), 1 if cams is None else 2
    cols = min(4, len(shown)) * per
    rows = math.ceil(len(shown) * per / cols)
    figure = new_figure(1.6 * cols, 1.9 * rows)
    axes = figure.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, image, title in zip(axes[::per], shown, titles, strict=False):
        ax.imshow(image.squeeze(-1), cmap="gray")  # the colour map only applies to grey images
        ax.set_title(title, fontsize=7)
    for ax, image, cam in zip(axes[1::per], shown, [] if cams is None else cams, strict=False):
        ax.imshow(image.mean(-1), cmap="gray")
        ax.imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.set_title("Grad-CAM (predicted)", fontsize=7)
    figure.suptitle("most confident mistakes (test)")
    return figure


def md_table(rows: Sequence[Sequence[Any]]) -> str:
    lines = [rows[0], ["---"] * len(rows[0]), *rows[1:]]
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in lines)


def write_report(
    out_dir: Path,
    rows: dict[str, torch.Tensor],
    names: Sequence[str],
    temperature: float | None = None,
    tta: str = "none",
    net: nn.Module | None = None,
    max_mistakes: int = 16,
) -> dict[str, float]:
    """Write the report of the test ``rows`` (logits, targets, tta, mistakes); its headline."""
    import pandas as pd
    from sklearn.metrics import classification_report

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {name: values.cpu() for name, values in rows.items()}
    names, targets, logits = [str(c) for c in names], rows["targets"], rows["logits"].float()
    probs, n = logits.softmax(dim=1), logits.shape[1]
    kwargs = {"labels": range(n), "target_names": names, "output_dict": True, "zero_division": 0}
    scores = classification_report(targets, logits.argmax(1), **kwargs)  # per class, averages
    scores.pop("accuracy")
    head = {"test/acc": float(M.multiclass_accuracy(probs, targets, n, average="micro"))}
    top5 = M.multiclass_accuracy(probs, targets, n, top_k=min(n, 5), average="micro")
    head |= {"test/acc_top5": float(top5)} if n > 5 else {}
    head |= {"test/f1_macro": scores["macro avg"]["f1-score"], "test/ece": ece(probs, targets)}
    curves = {"as trained": probs}
    note = "No temperature: `python eval.py ckpt_path=<run dir>` fits one on the val split."
    if temperature is not None:
        curves[f"temperature {temperature:.3f}"] = (logits / temperature).softmax(dim=1)
        head["test/ece_calibrated"] = ece(curves[f"temperature {temperature:.3f}"], targets)
        note = f"Temperature {temperature:.4f} fitted on the validation split (NLL)."
    if "tta" in rows:
        head[f"test/acc_tta_{tta}"] = float((rows["tta"].argmax(1) == targets).float().mean())
    per_class = pd.DataFrame(scores).T.rename(columns={"f1-score": "f1"}).rename_axis("class")
    per_class = per_class.round(4).astype({"support": int})
    per_class.to_csv(out_dir / "per_class.csv")
    matrix = M.multiclass_confusion_matrix(probs, targets, n)
    rates = matrix.double() / matrix.sum(dim=1, keepdim=True).clamp_min(1)
    figures = {"reliability.png": reliability_figure(curves, targets)}
    for suffix, values, what in (("", matrix, "counts"), ("_normalized", rates, "row-normalised")):
        name = f"confusion_matrix{suffix}"
        table = pd.DataFrame(values.tolist(), names, names).round(4)
        table.rename_axis("true \\ predicted").to_csv(out_dir / f"{name}.csv")
        figures[f"{name}.png"] = confusion_figure(values, names, what)
    off, cells = matrix.clone().fill_diagonal_(0).flatten().sort(descending=True)
    pairs = zip(off[:10].tolist(), cells[:10].tolist(), strict=True)
    confusions = [f"{names[c // n]} -> {names[c % n]}: {k}" for k, c in pairs if k > 0]
    md = [
        "## Summary",
        md_table([["metric", "value"], *[[k, f"{v:.4f}"] for k, v in head.items()]]),
        note,
        "## Most frequent confusions (true -> predicted: images)",
        "; ".join(confusions) or "none",
        "## Per class",
        md_table([["class", *per_class.columns], *per_class.itertuples()]),
        "## Confusion matrix",
        "![counts](confusion_matrix.png) ![row-normalised](confusion_matrix_normalized.png)",
        "## Calibration",
        "![reliability diagram](reliability.png)",
    ]
    if len(rows.get("images", [])):
        wrong = rows["wrong_logits"].float()
        top = most_confident_mistakes(wrong, rows["wrong_true"], max_mistakes)
        probability, predicted = wrong[top].softmax(1).max(1)
        images, true = rows["images"][top], rows["wrong_true"][top]
        cams = grad_cam(net, images, predicted) if net is not None else None
        titles = [
            f"true: {names[t][:12]}\npred: {names[p][:12]} ({c:.2f})"
            for t, p, c in zip(true.tolist(), predicted.tolist(), probability.tolist(), strict=True)
        ]
        figures["mistakes.png"] = gallery_figure(images, titles, cams)
        md += ["## Most confident mistakes", "![most confident mistakes](mistakes.png)"]
        if cams is None:
            md.append("No Grad-CAM: the net has no convolutional layer to explain.")
    text = "\n\n".join(md) + "\n"
    (out_dir / "report.md").write_text(text)
    for name, figure in figures.items():  # embedded in report.html: one self-contained page
        figure.savefig(out_dir / name)
        data = base64.b64encode((out_dir / name).read_bytes()).decode()
        text = text.replace(f"]({name})", f"](data:image/png;base64,{data})")
    body = MarkdownIt("commonmark").enable("table").render(text)
    style = "<style>td, th { border: 1px solid #999; padding: 2px 6px }</style>"
    (out_dir / "report.html").write_text(
        f"<!doctype html><title>evaluation report</title>{style}\n{body}"
    )
    log.info(f"report -> {out_dir / 'report.html'}")
    return head
