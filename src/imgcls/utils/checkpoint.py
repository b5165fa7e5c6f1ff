"""Checkpoints: atomic writes, ``weights_only`` reads, clear errors for unusable files."""

from __future__ import annotations

import logging
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
UNREADABLE = (
    "is not a readable checkpoint (truncated, corrupt or not a torch file); use another .ckpt, "
    "e.g. the run's checkpoints/last.ckpt"
)

log = logging.getLogger(__name__)


def find_checkpoint(directory: Path, prefer: str = "best") -> Path:
    """The ``best`` (``epoch_*.ckpt``, top ``val/acc``) or ``last`` checkpoint of a run dir.

    ``directory`` is a run dir or its ``checkpoints/``; the other kind is used when the preferred
    one is absent.
    """
    from imgcls.run_dir import CHECKPOINT_DIR, LAST_CHECKPOINT, RunDir

    run = RunDir(directory.parent if directory.name == CHECKPOINT_DIR else directory)
    folder = run.path / CHECKPOINT_DIR if (run.path / CHECKPOINT_DIR).is_dir() else directory
    # the newest state: last.ckpt, or a SLURM requeue's hpc_ckpt_<n>.ckpt
    last = run.latest_checkpoint() or folder / LAST_CHECKPOINT.name
    best = sorted(folder.glob("epoch_*.ckpt"))
    if prefer == "best" and len(best) > 1 and last.is_file():  # save_top_k > 1: last knows best
        recorded = [
            Path(state["best_model_path"])
            for state in torch.load(last, weights_only=True, mmap=True)
            .get("callbacks", {})
            .values()
            if isinstance(state, dict) and state.get("best_model_path")
        ]
        best = [p for p in recorded if p.is_file()][:1] or best
    found = {"best": best[-1] if best else None, "last": last if last.is_file() else None}
    other = "last" if prefer == "best" else "best"
    path = found[prefer] or found[other]
    if path is None:
        raise UserError(
            f"ckpt_path={directory} is a directory without checkpoints (no epoch_*.ckpt or "
            "last.ckpt in it or its checkpoints/); pass a run dir that saved one, or a .ckpt file"
        )
    kind = prefer if found[prefer] else other
    log.info(f"ckpt_path={directory} is a directory: using its {kind} checkpoint {path}")
    return path


def read_checkpoint(
    path: str | Path, map_location: Any = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs); one clear error if unusable.

    A directory (a run dir or its ``checkpoints/``) stands for its best checkpoint.
    ``mmap=True`` maps the tensors instead of reading them: a cheap check of a file that is
    read in full later.
    """
    path = Path(path)
    if path.is_dir():
        path = find_checkpoint(path, prefer="best")
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
            f"{max_epochs}: nothing left to train; raise trainer.max_epochs to continue it, or "
            f"use init_from={ckpt_path} to start a new run from its weights"
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


@dataclass
class Restored:
    """A trained model with the data set-up it was trained with, rebuilt from its checkpoint."""

    model: Any  # ImageClassifier, weights loaded
    datamodule: Any  # not set up: preprocessing works at once, data loads on setup()
    config: dict[str, Any]  # the resolved training config
    class_names: list[str]
    temperature: float = 1.0  # eval.py calibrate=true: probabilities are softmax(logits / T)


def store_temperature(path: str | Path, temperature: float) -> Path:
    """Save the calibration temperature in the checkpoint (a run dir: its best); its path."""
    path = find_checkpoint(Path(path)) if Path(path).is_dir() else Path(path)
    checkpoint = read_checkpoint(path)
    checkpoint.setdefault(RUN_INFO_KEY, {})["temperature"] = float(temperature)
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    return path


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
    # Lightning saves the datamodule's state under its class name: another dataset gets none
    datamodule.load_state_dict(checkpoint.get(type(datamodule).__qualname__) or {})
    model = ImageClassifier.from_checkpoint(checkpoint)
    temperature = float(checkpoint.get(RUN_INFO_KEY, {}).get("temperature", 1.0))
    return Restored(model, datamodule, config, stored_class_names(checkpoint), temperature)


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
