"""imgcls: a Hydra + PyTorch Lightning template for image classification.

Importing it registers the config resolvers (``imgcls.config``; no torch is imported), so
Hydra's own compose API works as well as ``imgcls.compose(overrides=[...])``.
``imgcls.load_model(ckpt)`` (``imgcls.api``) is imported on first use.
"""

from typing import Any

from imgcls.config import compose

__version__ = "0.1.0"
__all__ = ["compose", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from imgcls.api import load_model

        return load_model
    raise AttributeError(f"module 'imgcls' has no attribute {name!r}")
