"""Checkpoints: atomic writes, ``weights_only`` reads, clear errors for unusable files."""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from imgcls.utils.errors import UserError

RUN_INFO_KEY = "imgcls"
UNREADABLE = (
    "is not a readable checkpoint (truncated, corrupt or not a torch file); use another .ckpt, "
    "e.g. the run's checkpoints/last.ckpt"
)

log = logging.getLogger(__name__)


def read_checkpoint(
    path: str | Path, map_location: Any = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs); one clear error if unusable.

    ``mmap=True`` maps the tensors instead of reading them: a cheap check of a file that is
    read in full later.
    """
    path = Path(path)  # a run dir: imgcls.checkpoints.find_checkpoint picks its file first
    if not path.is_file():
        raise UserError(
            f"ckpt_path={path} does not exist; pass a .ckpt file or a run dir "
            "(logs/train/runs/<run>)"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise UserError(f"ckpt_path={path} {UNREADABLE}") from err
        # torch's message goes on to suggest weights_only=False: never pass that on
        raise UserError(
            f"ckpt_path={path} is not a readable checkpoint: it holds Python objects other than "
            "tensors and plain data, refused because loading them could run code; use a "
            "checkpoint written by imgcls (a run's checkpoints/*.ckpt)"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise UserError(f"ckpt_path={path} {UNREADABLE}") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(
            f"ckpt_path={path} is a torch file but not a Lightning checkpoint (no state_dict)"
        )
    return checkpoint


def epochs_done(checkpoint: Mapping[str, Any]) -> int:
    """Epochs a Lightning checkpoint finished training (its fit loop's processed epochs)."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
    return int(progress.get("current", {}).get("processed", checkpoint.get("epoch", 0)))


def check_something_to_train(
    ckpt_path: str | Path, checkpoint: Mapping[str, Any], max_epochs: int | None
) -> None:
    """``ckpt_path=`` restores a whole training state: refuse one that has nothing left to do."""
    done = epochs_done(checkpoint)
    if max_epochs is not None and 0 <= max_epochs <= done:
        raise UserError(
            f"ckpt_path={ckpt_path} already trained {done} epochs and trainer.max_epochs="
            f"{max_epochs}: nothing left to train; use init_from={ckpt_path} to start a new run "
            "from its weights (or raise trainer.max_epochs, unless its LR schedule is sized for "
            "its steps: OneCycle, warm-up cosine)"
        )


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
