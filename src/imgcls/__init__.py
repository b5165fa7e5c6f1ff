"""imgcls: a Hydra + PyTorch Lightning template for image classification.

``imgcls.load_model(ckpt)`` (``imgcls.api``) and ``imgcls.compose(overrides=[...])``
(``imgcls.config``) are imported on first use, so ``import imgcls`` stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["compose", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "compose":
        from imgcls.config import compose

        return compose
    if name == "load_model":
        from imgcls.api import load_model

        return load_model
    raise AttributeError(f"module 'imgcls' has no attribute {name!r}")
