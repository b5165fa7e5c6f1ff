"""Template vs plain PyTorch: the same net, data, batch size and optimizer, side by side.

(a) the template: ``Trainer`` (``trainer=fast``) + ``ImageClassifier`` + the datamodule's in-memory
fast path (uint8 batches sliced from a tensor, normalised in ``on_after_batch_transfer``);
(b) the strongest plain loop we know in the same process: the data resident on the device
(uint8, sliced there), shuffle, normalise, forward, loss, backward, step, with no host sync, the
same ``--compile`` mode and, on CUDA, the same fused optimizer and TF32 setting as the template.
Warm-up steps are excluded from both clocks; the two alternate ``--repeats`` times and the
medians are compared.

    python benchmarks/parity.py                      # tinynet (+ convnet), batch 128, fp32, CPU
    python benchmarks/parity.py --precision bf16-mixed --steps 400
    python benchmarks/parity.py --device cuda --precision bf16-mixed --compile reduce-overhead
"""

from __future__ import annotations

import argparse
import sys
import time

import _common as C
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from imgcls.models.classifier import COMPILE_MODES, CUDA_GRAPH_MODES, fused_kwargs
from imgcls.utils.devices import apply_matmul_precision

TARGET_RATIO = 0.95
COMPILE_CHOICES = [str(m).lower() for m in COMPILE_MODES]


def plain_loop(
    cfg: DictConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    batch_size: int,
    warmup: int,
    steps: int,
    device: str,
    precision: str,
    channels_last: bool,
    compile_mode: str | None = None,
    seed: int = 0,
) -> float:
    """Images/s of a hand-written training loop over uint8 ``images`` (warm-up excluded)."""
    pl.seed_everything(seed, verbose=False)
    device_type = torch.device(device).type
    shape = {k: cfg.model[k] for k in ("num_classes", "in_channels", "image_size")}
    net = instantiate(cfg.model.net)(**shape).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    forward = torch.compile(net, mode=compile_mode) if compile_mode else net
    graphs = compile_mode in CUDA_GRAPH_MODES
    factory = instantiate(cfg.model.optimizer)
    optimizer = factory(
        params=net.parameters(), **fused_kwargs(factory, None, torch.device(device))
    )
    images, labels = images.to(device), labels.to(device)  # resident: batches are cut there
    mean, std = mean.to(device).view(1, -1, 1, 1), std.to(device).view(1, -1, 1, 1)
    use_bf16 = precision == "bf16-mixed"
    net.train()

    n, step, done, start = len(labels), 0, 0, None
    last_first = n - batch_size if graphs else n - 1  # CUDA graphs: full batches only
    generator = torch.Generator().manual_seed(seed)
    while step < warmup + steps:
        order = torch.randperm(n, generator=generator).to(device)
        for first in range(0, last_first + 1, batch_size):
            idx = order[first : first + batch_size]
            x, y = images[idx], labels[idx]
            x = (x.float().div_(255.0) - mean) / std
            x = x.contiguous(memory_format=memory_format)
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = F.cross_entropy(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == warmup:
                C.synchronize(device)
                start = time.perf_counter()
            elif step > warmup:
                done += len(idx)
            if step == warmup + steps:
                break
    C.synchronize(device)
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=C.default_models(), help="model configs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each")
    parser.add_argument("--precision", choices=C.PRECISIONS, default="32-true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--compile",
        choices=COMPILE_CHOICES,
        default="false",
        help="model.compile for the template and torch.compile mode for the plain loop",
    )
    parser.add_argument(
        "--optimizer", default=None, help="model/optimizer config for both (default: the model's)"
    )
    C.add_common_arguments(parser)
    args = C.parse_common(parser, argv, [parser.parse_known_args(argv)[0].device])
    C.quiet_lightning()
    compile_value = {"false": False, "true": True}.get(args.compile, args.compile)
    compile_mode = COMPILE_MODES[compile_value]
    apply_matmul_precision("auto")  # both sides: TF32 on a GPU, as the template's default

    data_overrides, data_description = C.resolve_data(args.data_dir, args.synthetic)
    print(C.header("Parity: template vs plain PyTorch loop", data_description, args.device))
    print(
        f"- batch {args.batch_size}, precision {args.precision}, channels_last "
        f"{args.channels_last}, optimizer {args.optimizer or 'model default'} "
        f"(fused on CUDA), compile {args.compile}, device {args.device} (data resident there); "
        f"{args.steps} timed steps after {args.warmup} warm-up steps, median of "
        f"{args.repeats} alternating runs\n"
    )

    rows, ok = [], True
    for model_name in args.models:
        overrides = [
            *data_overrides,
            f"model={model_name}",
            *([f"model/optimizer={args.optimizer}"] if args.optimizer else []),
            f"++model.channels_last={str(args.channels_last).lower()}",
            f"++model.compile={args.compile}",
            "data.in_memory=true",
            f"data.on_device={str(args.device == 'cuda').lower()}",
            "data.augment=none",
            f"data.batch_size={args.batch_size}",
            f"trainer.precision={args.precision}",
            *C.bench_trainer_overrides(args.device, args.warmup, args.steps),
            *args.override,
        ]
        cfg = C.compose(overrides)
        datamodule = C.build_datamodule(cfg)
        images, labels = datamodule.splits["train"]
        norm = datamodule.pipeline.normalize
        template, plain = [], []
        for _ in range(args.repeats):
            dm = instantiate(cfg.data)
            C.share_splits(dm, datamodule)
            timer = C.template_fit(cfg, dm, args.warmup, args.steps)
            template.append(timer.images_per_second)
            plain.append(
                plain_loop(
                    cfg,
                    images,
                    labels,
                    norm.mean.flatten(),
                    norm.std.flatten(),
                    batch_size=args.batch_size,
                    warmup=args.warmup,
                    steps=args.steps,
                    device=args.device,
                    precision=args.precision,
                    channels_last=args.channels_last,
                    compile_mode=compile_mode,
                )
            )
        ratio = C.median(template) / C.median(plain)
        overhead_ms = (1 / C.median(template) - 1 / C.median(plain)) * args.batch_size * 1000
        ok &= ratio >= TARGET_RATIO
        rows.append(
            [
                model_name,
                C.fmt_rate(C.median(template)),
                C.spread(template) or "-",
                C.fmt_rate(C.median(plain)),
                C.spread(plain) or "-",
                f"{ratio:.3f}",
                f"{overhead_ms:.2f}",
                "yes" if ratio >= TARGET_RATIO else "NO",
            ]
        )
        runs = ", ".join(f"{t:,.0f} vs {p:,.0f}" for t, p in zip(template, plain, strict=True))
        print(f"{model_name}: template vs plain img/s per run: {runs}", file=sys.stderr, flush=True)

    headers = [
        "model",
        "template img/s",
        "spread",
        "plain img/s",
        "spread",
        "template / plain",
        "overhead ms/step",
        f">= {TARGET_RATIO}",
    ]
    print(C.markdown_table(headers, rows))
    print(f"\ntarget: template >= {TARGET_RATIO:.2f}x the plain loop: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
