"""Run the reference recipes on real MNIST and print the README's results rows.

    python benchmarks/reproduce.py                                  # the tinynet recipes
    python benchmarks/reproduce.py --experiments mnist_alexnet binary_mlp
    python benchmarks/reproduce.py --experiments mnist_tinynet --max-epochs 1   # a quick check

Each recipe runs exactly as ``python train.py experiment=<name>`` would (fit, then test the best
checkpoint), its run dir kept in ``logs/benchmarks/reproduce/``; the table gives the test
accuracy, epochs, wall time (fit + test) and hardware. Uses the repository's MNIST files
(data/MNIST/raw); never prints a number that was not measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import torch
from _common import DEFAULT_DATA_DIR, compose, hardware_description, prepare_mnist

from imgcls.config import REPO_ROOT
from imgcls.train import train

REFERENCE = {
    "mnist_alexnet": "98.23% (96.76% after epoch 1)",
    "mnist_alexnet_lrn": "98.88%",
    "mnist_convnet": "-",
    "mnist_tinynet": "99.4-99.52%",
    "mnist_tinynet_fast": ">= 99.4%",
    "mnist_speedrun": ">= 99.4%",
    "binary_mlp": "-",
}
#: the recipes' run dirs are kept (checkpoints, TensorBoard, metrics) below the git-ignored logs/
RUNS_DIR = REPO_ROOT / "logs" / "benchmarks" / "reproduce"
QUIET = ["~callbacks.rich_progress_bar", "~callbacks.rich_model_summary", "~callbacks.plots"]


def run_recipe(name: str, data_dir: str, max_epochs: int | None, accelerator: str) -> list[str]:
    overrides = [f"experiment={name}", f"data.data_dir={data_dir}", *QUIET]
    overrides += ["+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false"]
    overrides.append(f"trainer.accelerator={accelerator}")
    if max_epochs is not None:
        overrides.append(f"trainer.max_epochs={max_epochs}")
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    cfg = compose(overrides, output_dir=RUNS_DIR / f"{stamp}_{name}")
    start = time.perf_counter()
    metrics = train(cfg)
    seconds = time.perf_counter() - start
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    epochs = torch.load(last, weights_only=True)["epoch"] + 1  # early stopping may end sooner
    return [
        name,
        REFERENCE.get(name, "-"),
        f"{metrics['test/acc'] * 100:.2f}%",
        str(epochs),
        f"{seconds:.0f} s",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", nargs="+", default=["mnist_tinynet", "mnist_tinynet_fast"])
    parser.add_argument("--max-epochs", type=int, default=None, help="cap epochs (a quick check)")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    if not prepare_mnist(args.data_dir):
        raise SystemExit(f"MNIST not found in {args.data_dir}/MNIST/raw: not run")
    hardware = hardware_description("cuda" if args.accelerator == "gpu" else "cpu")
    rows = []
    for name in args.experiments:
        rows.append(run_recipe(name, args.data_dir, args.max_epochs, args.accelerator))
        print("| " + " | ".join(rows[-1]) + " |", flush=True)
    print(f"\n{dt.date.today()} | {hardware}\n")
    print("| experiment | reference | test accuracy | epochs | wall time |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
