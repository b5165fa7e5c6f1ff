"""Run from a clone without installing: ``python train.py model=tinynet data=digits``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
from imgcls.cli import train  # noqa: E402

if __name__ == "__main__":
    train()
