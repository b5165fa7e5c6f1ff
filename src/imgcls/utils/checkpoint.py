"""Reading checkpoints safely (``weights_only``) with clear errors for unusable files."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from imgcls.utils.errors import UserError

RUN_INFO_KEY = "imgcls"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs); one clear error if unusable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"ckpt_path={path} does not exist; pass a .ckpt file from a run's checkpoints/"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"ckpt_path={path} is not a readable checkpoint (truncated, corrupt or not a torch "
            f"file: {first_line[:200]}); use another .ckpt, e.g. the run's checkpoints/last.ckpt"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(
            f"ckpt_path={path} is a torch file but not a Lightning checkpoint (no state_dict)"
        )
    return checkpoint


def stored_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The resolved training config an imgcls checkpoint carries."""
    config = checkpoint.get(RUN_INFO_KEY, {}).get("config")
    if not isinstance(config, dict):
        raise UserError(
            "the checkpoint carries no imgcls training config: it was not written by imgcls"
        )
    return config


def stored_class_names(checkpoint: dict[str, Any]) -> list[str]:
    """Class names saved at training time (empty when the checkpoint has none)."""
    return list(checkpoint.get(RUN_INFO_KEY, {}).get("class_names", []))
