"""Shared helpers of the benchmark scripts: data, config composition, timing, reporting.

Not a test or a library: the scripts (``python benchmarks/<name>.py``) import it as ``_common``.
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, open_dict

from imgcls.config import CONFIG_DIR, REPO_ROOT, setup_config_environment
from imgcls.data.mnist import MNIST_FILES, MNISTDataModule

#: the template's own default data dir (paths.data_dir): the repository tracks MNIST's .gz files
DEFAULT_DATA_DIR = REPO_ROOT / "data"
REPO_MNIST_RAW = DEFAULT_DATA_DIR / "MNIST" / "raw"

PRECISIONS = ("32-true", "bf16-mixed")


# ---------------------------------------------------------------------------------- data
def _extracted(name: str) -> str:
    return name.removesuffix(".gz")


def prepare_mnist(data_dir: str | Path = DEFAULT_DATA_DIR) -> bool:
    """Make ``<data_dir>/MNIST/raw`` hold MNIST: copied from the repository's if not there yet.

    Returns whether MNIST is available (torchvision's MNIST then verifies and extracts it offline).
    """
    raw = Path(data_dir) / "MNIST" / "raw"
    if all((raw / _extracted(f)).is_file() or (raw / f).is_file() for f in MNIST_FILES):
        return True
    if not all((REPO_MNIST_RAW / f).is_file() for f in MNIST_FILES):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        if not (raw / name).is_file():
            tmp = raw / f".{name}.tmp{os.getpid()}"
            shutil.copyfile(REPO_MNIST_RAW / name, tmp)
            tmp.replace(raw / name)  # atomic: a concurrent run never sees half a file
    return True


class SyntheticMNISTDataModule(MNISTDataModule):
    """MNIST-shaped random uint8 images and labels (60k train, 10k test): no files needed.

    Only for throughput: the images carry no signal, so accuracies on them mean nothing.
    """

    def prepare_data(self) -> None:
        pass

    def load_split(self, split: str):  # noqa: ANN201 - same contract as the parent
        n = 60_000 if split == "train" else 10_000
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (n,), generator=generator)
        return images, labels


def data_overrides(data_dir: str | Path, synthetic: bool = False) -> list[str]:
    """Hydra overrides selecting real MNIST in ``data_dir`` or the synthetic stand-in."""
    overrides = ["data=mnist", f"data.data_dir={Path(data_dir).resolve()}"]
    if synthetic:
        target = f"{SyntheticMNISTDataModule.__module__}.{SyntheticMNISTDataModule.__name__}"
        overrides.append(f"data._target_={target}")
    return overrides


def resolve_data(data_dir: str | Path, force_synthetic: bool = False) -> tuple[list[str], str]:
    """(data overrides, description): MNIST when available, else synthetic tensors."""
    if not force_synthetic and prepare_mnist(data_dir):
        return data_overrides(data_dir), f"MNIST ({Path(data_dir).resolve()})"
    return data_overrides(data_dir, synthetic=True), "synthetic MNIST-shaped tensors (no MNIST)"


# ---------------------------------------------------------------------------------- arguments
def add_common_arguments(parser: Any, synthetic: bool = True, overrides: bool = True) -> None:
    """--data-dir, --synthetic, -o/--override and --threads, which every script takes."""
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    if synthetic:
        parser.add_argument("--synthetic", action="store_true", help="random tensors, not MNIST")
    if overrides:
        parser.add_argument(
            "-o",
            "--override",
            action="append",
            default=[],
            help="extra Hydra override (repeatable)",
        )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")


def parse_common(parser: Any, argv: Sequence[str] | None, devices: Sequence[str] = ()) -> Any:
    """Parse, apply --threads, and refuse a CUDA device where there is none."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("cuda: no GPU available")
    return args


# ---------------------------------------------------------------------------------- configs
_scratch_root: Path | None = None


def scratch_dir() -> Path:
    """A fresh folder below this process's scratch root, which is removed when the process ends."""
    global _scratch_root
    if _scratch_root is None:
        _scratch_root = Path(tempfile.mkdtemp(prefix="imgcls-bench-"))
        atexit.register(shutil.rmtree, _scratch_root, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=_scratch_root))


def compose(overrides: Sequence[str], output_dir: str | Path | None = None) -> DictConfig:
    """``configs/train.yaml`` composed with ``overrides``, writing (if at all) to ``output_dir``
    or else to a scratch folder that is removed when the script ends."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    setup_config_environment()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides))
    out = Path(output_dir) if output_dir is not None else scratch_dir()
    with open_dict(cfg):
        cfg.extras.print_config = False
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
    return cfg


def available_models() -> list[str]:
    """Model configs of ``configs/model`` (tinynet first)."""
    names = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
    return sorted(names, key=lambda n: (n != "tinynet", n))


def default_models() -> list[str]:
    """tinynet, plus convnet when the template has it."""
    return [m for m in ("tinynet", "convnet") if m in available_models()]


def bench_trainer_overrides(device: str, warmup: int, steps: int) -> list[str]:
    """A fit of exactly ``warmup + steps`` optimizer steps: lean trainer, no validation."""
    return [
        "trainer=fast",
        "callbacks=none",
        f"++trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
        "++trainer.devices=1",
        f"++trainer.max_steps={warmup + steps}",
        "++trainer.max_epochs=-1",
        "++trainer.min_epochs=0",
        "++trainer.limit_val_batches=0",
        "++trainer.num_sanity_val_steps=0",
    ]


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """The configured datamodule, with its data downloaded/verified and loaded into memory."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def share_splits(datamodule: pl.LightningDataModule, source: pl.LightningDataModule) -> None:
    """Reuse ``source``'s loaded tensors (setup then does nothing): no reload between runs."""
    datamodule.splits = source.splits


# ---------------------------------------------------------------------------------- timing
def synchronize(device: str | torch.device) -> None:
    """Wait for queued accelerator work, so a wall-clock reading covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class StepTimer(pl.Callback):
    """Wall time of training steps ``warmup + 1 .. warmup + steps`` (data loading included)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start: float | None = None
        self.end: float | None = None
        self.images = 0
        self._last = warmup + steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        step = trainer.global_step  # optimizer steps done so far
        if step == self.warmup and self.start is None:
            synchronize(pl_module.device)
            self.start = time.perf_counter()
        elif self.start is not None and self.end is None:
            self.images += len(batch[1])
            if step >= self._last:
                synchronize(pl_module.device)
                self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        if self.start is None or self.end is None:
            raise RuntimeError("the timed steps did not all run (too few batches?)")
        return self.end - self.start

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def template_fit(
    cfg: DictConfig,
    datamodule: pl.LightningDataModule,
    warmup: int,
    steps: int,
    seed: int = 0,
) -> StepTimer:
    """Train ``cfg.model`` for ``warmup + steps`` steps with the template's Trainer; timed."""
    from hydra.utils import instantiate

    from imgcls.train import build_trainer

    pl.seed_everything(seed, verbose=False)
    model = instantiate(cfg.model)
    timer = StepTimer(warmup, steps)
    trainer = build_trainer(cfg, callbacks=[timer], logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=datamodule)
    return timer


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """``min-max`` of repeated measurements, as a relative range around the median."""
    if len(values) < 2:
        return ""
    mid = median(values)
    return f"±{(max(values) - min(values)) / 2 / mid * 100:.1f}%"


# ---------------------------------------------------------------------------------- reporting
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_description(device: str | None = None) -> str:
    """One line: CPU (cores, torch threads), GPU if any, OS and library versions."""
    import pytorch_lightning

    parts = [
        f"CPU: {cpu_name()} ({os.cpu_count()} logical cores, "
        f"{torch.get_num_threads()} torch threads)"
    ]
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        parts.append(f"GPU: {', '.join(names)} x{torch.cuda.device_count()}")
    elif device == "cuda":
        parts.append("GPU: none available")
    parts.append(f"{platform.system()} {platform.release()}")
    parts.append(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {pytorch_lightning.__version__}"
    )
    return " | ".join(parts)


def header(title: str, data_description: str, device: str | None = None) -> str:
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load = ""
    if hasattr(os, "getloadavg"):
        load = " | load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return (
        f"## {title}\n\n"
        f"- date: {now}{load}\n"
        f"- hardware: {hardware_description(device)}\n"
        f"- data: {data_description}\n"
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(_is_number(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(headers))
    ]

    def line(row: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2))
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _is_number(text: str) -> bool:
    cleaned = text.replace(",", "").replace("%", "").replace("x", "").replace("±", "").strip()
    if not cleaned or cleaned == "-":
        return text.strip() in ("-", "")
    try:
        float(cleaned)
    except ValueError:
        return False
    return True


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def quiet_lightning() -> None:
    """No 'GPU available but not used' / 'does not have many workers' chatter in the tables."""
    import logging
    import warnings

    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*exists and is not empty.*")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
