"""Run from a clone without installing: ``python predict.py ckpt_path=PATH input=IMAGE``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
from imgcls.cli import predict  # noqa: E402

if __name__ == "__main__":
    predict()
