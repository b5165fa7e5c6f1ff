"""Run from a clone without installing: ``python eval.py ckpt_path=PATH``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
from imgcls.cli import evaluate  # noqa: E402

if __name__ == "__main__":
    evaluate()
