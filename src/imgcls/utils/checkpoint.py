"""Checkpoints: atomic writes, ``weights_only`` reads, clear errors for unusable files."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from imgcls.utils.errors import UserError

RUN_INFO_KEY = "imgcls"


def read_checkpoint(
    path: str | Path, map_location: Any = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs); one clear error if unusable.

    ``mmap=True`` maps the tensors instead of reading them: a cheap check of a file that is
    read in full later.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"ckpt_path={path} does not exist; pass a .ckpt file from a run's checkpoints/"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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


@dataclass
class Restored:
    """A trained model with the data set-up it was trained with, rebuilt from its checkpoint."""

    model: Any  # ImageClassifier, weights loaded
    datamodule: Any  # not set up: preprocessing works at once, data loads on setup()
    config: dict[str, Any]  # the resolved training config
    class_names: list[str]


def restore(path: str | Path, data_override: Mapping[str, Any] | None = None) -> Restored:
    """Rebuild the model and its datamodule from an imgcls checkpoint (``RunInfo``'s content).

    ``data_override`` is a full data config (one with ``_target_``: another dataset) or keys
    merged into the stored one (``+data.data_dir=/elsewhere``). The datamodule gets the state it
    had at training time (say, a folder's normalisation statistics).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from imgcls.models.classifier import ImageClassifier

    checkpoint = read_checkpoint(path)
    config = stored_config(checkpoint)
    data_cfg = OmegaConf.create(config["data"])
    if data_override and "_target_" in data_override:
        data_cfg = data_override  # as composed: its interpolations (${seed}) resolve in its root
    elif data_override:
        data_cfg = OmegaConf.merge(data_cfg, data_override)
    datamodule = instantiate(data_cfg)
    run_info = checkpoint[RUN_INFO_KEY]
    # checkpoints written before RunInfo stored it hold it under Lightning's own key
    state = run_info.get("datamodule_state", checkpoint.get(type(datamodule).__qualname__))
    datamodule.load_state_dict(state or {})
    model = ImageClassifier.from_checkpoint(checkpoint)
    return Restored(model, datamodule, config, stored_class_names(checkpoint))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it and renames it into place.

    A kill during a save leaves the previous checkpoint intact (the rename is atomic on the same
    filesystem, unlike a temporary file in /tmp). Loads use ``weights_only=True``: a checkpoint
    cannot run code.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:  # the caller explicitly trusts this file
            return super().load_checkpoint(path, map_location=map_location, weights_only=False)
        # one read, with one clear error for a missing, truncated or foreign file
        return read_checkpoint(path, map_location=map_location)
