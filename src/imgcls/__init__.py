"""imgcls: a Hydra + PyTorch Lightning template for image classification. ``import imgcls``
registers the config resolvers without importing torch; ``imgcls.load_model`` loads on first use."""

from typing import Any

from imgcls.config import compose

__version__ = "0.1.0"
__all__ = ["compose", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from imgcls.api import load_model

        return load_model
    raise AttributeError(f"module 'imgcls' has no attribute {name!r}")
