import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # runs from a clone, uninstalled
from imgcls.cli import predict  # noqa: E402

if __name__ == "__main__":
    predict()
