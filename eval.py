"""Run from a clone without installing (see src/imgcls/eval.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from imgcls.cli import evaluate as main  # noqa: E402

if __name__ == "__main__":
    main()
