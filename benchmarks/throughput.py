"""Training throughput (images/s) of every model across the template's speed options.

For each model, device (CPU, and the GPU when there is one), precision (``32-true`` and
``bf16-mixed``), data path (``data.in_memory=true``: uint8 batches sliced from a tensor and
normalised on the device; ``false``: a standard DataLoader over per-sample transforms) and
``model.channels_last`` off/on, the template's Trainer (``trainer=fast``, no validation) trains
``--warmup + --steps`` steps; the timed steps include data loading. A second table times the data
paths alone (no model), with torchvision's per-sample PIL pipeline as a reference.

    python benchmarks/throughput.py                          # tinynet + convnet, CPU (+ GPU)
    python benchmarks/throughput.py --models tinynet --batch-sizes 128 256 512 --compile
    python benchmarks/throughput.py --models tinynet --torch-dropout   # FastDropout vs nn.Dropout
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import _common as C
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, Dataset

from imgcls.data.loaders import TensorBatchLoader, TensorImageDataset
from imgcls.models.nets.blocks import FastDropout

#: the issue's target: tinynet, fastest configuration, on the 2-core CPU
TINYNET_CPU_TARGET = 8_000


def loader_rate(batches: Iterable, pipeline=None, limit: int = 100) -> float:  # noqa: ANN001
    """Images/s of iterating ``batches`` (optionally through the batch pipeline); first excluded."""
    iterator = iter(batches)
    next(iterator)
    count, start = 0, time.perf_counter()
    for i, (images, _) in enumerate(iterator):
        if pipeline is not None:
            images = pipeline(images, train=True)
        count += len(images)
        if i + 1 >= limit:
            break
    return count / (time.perf_counter() - start)


def data_path_rows(datamodule, batch_size: int, num_workers: int, mnist_dir: Path | None):  # noqa: ANN001
    """Images/s of the data paths alone: in-memory slicing, per-sample tensors, torchvision PIL."""
    images, labels = datamodule.splits["train"]
    pipeline = datamodule.pipeline
    rows = []
    fast = TensorBatchLoader(images, labels, batch_size, shuffle=True)
    rows.append(
        ["in-memory slicing (uint8, no transform)", C.fmt_rate(loader_rate(fast, None, 400))]
    )
    rows.append(
        ["in-memory slicing + batch normalisation", C.fmt_rate(loader_rate(fast, pipeline, 400))]
    )

    def shuffled(dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )

    standard = shuffled(TensorImageDataset(images, labels, pipeline, train=True))
    rows.append(
        [
            f"standard: per-sample tensors, {num_workers} workers",
            C.fmt_rate(loader_rate(standard, None, 60)),
        ]
    )
    if mnist_dir is not None:
        from torchvision import datasets, transforms

        dataset = datasets.MNIST(
            str(mnist_dir),
            train=True,
            download=False,
            transform=transforms.Compose(
                [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
            ),
        )
        reference = shuffled(dataset)
        rows.append(
            [
                f"torchvision MNIST, PIL + ToTensor + Normalize, {num_workers} workers",
                C.fmt_rate(loader_rate(reference, None, 60)),
            ]
        )
    return rows


def model_dropout(cfg) -> str:  # noqa: ANN001
    """The net's dropout probability as configured ("-" when the net has none)."""
    value = cfg.model.net.get("dropout")
    return "-" if value is None else f"{float(value):g}"


def dropout_options(model: str, wanted: list[str], data_overrides: list[str]) -> list[str]:
    """``wanted`` dropout settings that differ for ``model`` ("model" = its config's value)."""
    configured = model_dropout(C.compose([*data_overrides, f"model={model}"]))
    options = []
    for value in wanted:
        if value != "model" and (configured == "-" or float(value) == float(configured)):
            continue  # the net has no dropout, or this is its configured value anyway
        options.append(value)
    return options or ["model"]


@contextlib.contextmanager
def dropout_masks(implementation: str) -> Iterator[None]:
    """``"fast"``: the nets' FastDropout as it is; ``"torch"``: plain ``nn.Dropout`` masks."""
    original = FastDropout.forward
    if implementation == "torch":
        FastDropout.forward = nn.Dropout.forward
    try:
        yield
    finally:
        FastDropout.forward = original


def mask_options(model: str, dropout: str, compare: bool, data_overrides: list[str]) -> list[str]:
    """Dropout implementations to time: both when asked for and the net drops anything."""
    value = (
        model_dropout(C.compose([*data_overrides, f"model={model}"]))
        if dropout == "model"
        else dropout
    )
    has_dropout = value != "-" and float(value) > 0
    return ["fast", "torch"] if compare and has_dropout else ["fast"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=C.default_models(),
        help=f"model configs (default: tinynet, convnet); all: {C.available_models()}",
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=("cpu", "cuda"),
        default=None,
        help="default: cpu, plus cuda when available",
    )
    parser.add_argument("--precisions", nargs="+", choices=C.PRECISIONS, default=list(C.PRECISIONS))
    parser.add_argument(
        "--data-paths",
        nargs="+",
        choices=("in-memory", "standard"),
        default=["in-memory", "standard"],
    )
    parser.add_argument("--channels-last", nargs="+", choices=("off", "on"), default=["off", "on"])
    parser.add_argument(
        "--dropout",
        nargs="+",
        default=["model", "0"],
        help="model.net.dropout settings ('model': as configured); on a CPU, dropout's random "
        "masks are a large share of a small net's step",
    )
    parser.add_argument(
        "--torch-dropout",
        action="store_true",
        help="also time nets with dropout using nn.Dropout's masks instead of FastDropout's",
    )
    parser.add_argument("--compile", action="store_true", help="also time model.compile=true")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128])
    parser.add_argument("--steps", type=int, default=150, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (median)")
    parser.add_argument("--num-workers", type=int, default=0, help="workers of the standard path")
    parser.add_argument("--no-data-table", action="store_true", help="skip the data-path table")
    C.add_common_arguments(parser)
    args = C.parse_common(parser, argv)
    devices = args.devices or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--devices cuda: no GPU available")
    C.quiet_lightning()

    data_overrides, data_description = C.resolve_data(args.data_dir, args.synthetic)
    print(C.header("Training throughput", data_description, "cuda" if "cuda" in devices else None))
    print(
        f"- template Trainer (trainer=fast, no validation), {args.steps} timed steps after "
        f"{args.warmup} warm-up steps, median of {args.repeats} runs; standard path: "
        f"{args.num_workers} loader workers; augmentation off\n"
    )

    base_cfg = C.compose([*data_overrides, "data.augment=none"])
    source = C.build_datamodule(base_cfg)
    if not args.no_data_table:
        mnist_dir = (
            None if args.synthetic or "synthetic" in data_description else Path(args.data_dir)
        )
        rows = data_path_rows(source, args.batch_sizes[0], args.num_workers, mnist_dir)
        print(f"### Data paths alone (batch {args.batch_sizes[0]}, CPU)\n")
        print(C.markdown_table(["data path", "images/s"], rows))
        print()

    compile_options = [False, True] if args.compile else [False]
    grid = [
        (model, *rest, dropout, masks)
        for model in args.models
        for rest in itertools.product(
            devices,
            args.batch_sizes,
            args.precisions,
            args.data_paths,
            args.channels_last,
            compile_options,
        )
        for dropout in dropout_options(model, args.dropout, data_overrides)
        for masks in mask_options(model, dropout, args.torch_dropout, data_overrides)
    ]
    rows, best = [], {}
    for i, (model, device, batch, precision, path, cl, comp, dropout, masks) in enumerate(grid, 1):
        overrides = [
            *data_overrides,
            f"model={model}",
            *([] if dropout == "model" else [f"model.net.dropout={dropout}"]),
            f"++model.channels_last={'true' if cl == 'on' else 'false'}",
            f"++model.compile={str(comp).lower()}",
            f"data.in_memory={'true' if path == 'in-memory' else 'false'}",
            "data.augment=none",
            f"data.batch_size={batch}",
            f"data.num_workers={args.num_workers}",
            f"data.pin_memory={'true' if device == 'cuda' else 'false'}",
            f"trainer.precision={precision}",
            *C.bench_trainer_overrides(device, args.warmup, args.steps),
            *args.override,
        ]
        cfg = C.compose(overrides)
        rates = []
        for _ in range(args.repeats):
            datamodule = instantiate(cfg.data)
            C.share_splits(datamodule, source)
            with dropout_masks(masks):
                fit = C.template_fit(cfg, datamodule, args.warmup, args.steps)
            rates.append(fit.images_per_second)
        rate = C.median(rates)
        label = f"{precision}, {path}, channels_last {cl}" + (", compiled" if comp else "")
        if dropout != "model":
            label += f", dropout {dropout}"
        if masks == "torch":
            label += ", nn.Dropout masks"
        key = (model, device)
        if key not in best or rate > best[key][0]:
            best[key] = (rate, f"{label}, batch {batch}")
        rows.append(
            [
                model,
                device,
                precision,
                path,
                cl,
                "on" if comp else "off",
                model_dropout(cfg) + (" (nn.Dropout)" if masks == "torch" else ""),
                batch,
                C.fmt_rate(rate),
                f"{batch / rate * 1000:.2f}",
                C.spread(rates) or "-",
            ]
        )
        print(
            f"[{i}/{len(grid)}] {model} {device} batch {batch} {label}: {C.fmt_rate(rate)} img/s",
            file=sys.stderr,
            flush=True,
        )

    print("### Training (template Trainer + ImageClassifier)\n")
    headers = [
        "model",
        "device",
        "precision",
        "data path",
        "channels_last",
        "compile",
        "dropout",
        "batch",
        "images/s",
        "ms/step",
        "spread",
    ]
    print(C.markdown_table(headers, rows))
    print("\n### Fastest configuration per model and device\n")
    for (model, device), (rate, label) in best.items():
        line = f"- {model} on {device}: {C.fmt_rate(rate)} images/s ({label})"
        if model == "tinynet" and device == "cpu":
            met = "met" if rate >= TINYNET_CPU_TARGET else "NOT met"
            line += f"; target >= {TINYNET_CPU_TARGET:,} images/s: {met}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
