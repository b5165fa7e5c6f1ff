"""Run from a clone without installing: ``python export.py ckpt_path=PATH format=onnx``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
from imgcls.cli import export  # noqa: E402

if __name__ == "__main__":
    export()
