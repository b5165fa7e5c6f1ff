"""Checkpoint files: which one of a run dir, ``weights_only`` reads, atomic writes, ``init_from=``
weights, and the model and data rebuilt from one."""

import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from hydra.utils import get_class, instantiate
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import OmegaConf

from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

RUN_INFO_KEY = "imgcls"
UNREADABLE = (
    "is not a readable checkpoint (truncated, corrupt or not a torch file); use another .ckpt, "
    "e.g. the run's checkpoints/last.ckpt"
)
HOLDS_CODE = (
    "is not a readable checkpoint: it holds Python objects other than tensors and plain data, "
    "refused because loading them could run code; use a checkpoint written by imgcls (a run's "
    "checkpoints/*.ckpt)"
)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """A run's newest state: ``checkpoints/last.ckpt`` or a SLURM requeue's ``hpc_ckpt_<n>``."""
    found = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    return max((p for p in found if p.is_file()), key=lambda p: p.stat().st_mtime_ns, default=None)


def find_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """``path``, or a run dir's ``best`` or ``last`` checkpoint (the other when one is absent)."""
    path = Path(path)
    if not path.is_dir():
        return path
    run = path.parent if path.name == "checkpoints" else path
    folder = run / "checkpoints" if (run / "checkpoints").is_dir() else path
    last = latest_checkpoint(run) or folder / "last.ckpt"
    best = sorted(folder.glob("epoch_*.ckpt"))
    if prefer == "best" and len(best) > 1 and last.is_file():  # save_top_k > 1: ask last.ckpt
        states = torch.load(last, weights_only=True, mmap=True).get("callbacks", {}).values()
        named = [Path(s["best_model_path"]) for s in states if s.get("best_model_path")]
        best = [p for p in named if p.is_file()][:1] or best
    found = {"best": best[-1] if best else None, "last": last if last.is_file() else None}
    kind = prefer if found[prefer] else {"best": "last", "last": "best"}[prefer]
    if found[kind] is None:
        raise UserError(
            f"ckpt_path={path} is a directory without checkpoints (no epoch_*.ckpt or last.ckpt "
            "in it or its checkpoints/); pass a run dir that saved one, or a .ckpt file"
        )
    log.info(f"ckpt_path={path} is a directory: using its {kind} checkpoint {found[kind]}")
    return found[kind]


def read_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """Load with ``weights_only=True`` (no code runs); one clear error if unusable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"ckpt_path={path} does not exist; pass a .ckpt file or a run dir "
            "(logs/train/runs/<run>)"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        # torch's message on other objects suggests weights_only=False: never pass that on
        code = isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower()
        raise UserError(f"ckpt_path={path} {HOLDS_CODE if code else UNREADABLE}") from err
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


def init_weights(model: Any, source: str | Path, reset_head: bool = False) -> None:
    """``init_from=``: the network's weights only; other shapes refused unless ``reset_head``."""
    source = find_checkpoint(source)
    state = read_checkpoint(source)["state_dict"]
    weights = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    own = model.net.state_dict()
    if missing := sorted(own.keys() ^ weights.keys()):
        raise UserError(
            f"init_from={source} holds another network (e.g. {missing[0]} is only in one of "
            "them); start from a checkpoint of the same model=..."
        )
    for name in [k for k, v in weights.items() if v.shape != own[k].shape]:
        if not reset_head:
            raise UserError(
                f"init_from={source}: {name} has shape {tuple(weights[name].shape)} there and "
                f"{tuple(own[name].shape)} here (another number of classes?); add "
                "init_from_reset_head=true to start those layers afresh"
            )
        log.info(f"init_from: {name} re-initialised (shape {tuple(own[name].shape)})")
        weights[name] = own[name]
    model.net.load_state_dict(weights)
    log.info(f"init_from={source}: weights loaded; optimizer, schedule and epochs are this run's")


class Restored(NamedTuple):
    model: Any  # the LightningModule, weights loaded
    datamodule: Any  # not set up: preprocessing works at once, data loads on setup()
    config: dict[str, Any]  # the resolved training config
    class_names: list[str]
    temperature: float = 1.0  # eval.py calibrate=true: probabilities are softmax(logits / T)


def restore(path: str | Path, data_override: Mapping[str, Any] | None = None) -> Restored:
    """A checkpoint's model and datamodule; ``data_override``: a data config or keys merged in."""
    checkpoint = read_checkpoint(find_checkpoint(path))
    config, info = stored_config(checkpoint), checkpoint[RUN_INFO_KEY]
    if data_override and "_target_" in data_override:
        data_cfg = data_override  # as composed: its interpolations (${seed}) resolve in its root
    else:
        data_cfg = OmegaConf.merge(config["data"], data_override or {})
    datamodule = instantiate(data_cfg)
    # Lightning saves the datamodule's state under its class name: another dataset gets none
    datamodule.load_state_dict(checkpoint.get(type(datamodule).__qualname__) or {})
    model = get_class(config["model"]["_target_"]).from_checkpoint(checkpoint)
    names = list(info.get("class_names", []))
    return Restored(model, datamodule, config, names, float(info.get("temperature", 1.0)))


def store_temperature(path: str | Path, temperature: float) -> Path:
    """Save the calibration temperature in the checkpoint (a run dir: its best); its path."""
    path = find_checkpoint(path)
    checkpoint = read_checkpoint(path)
    checkpoint.setdefault(RUN_INFO_KEY, {})["temperature"] = float(temperature)
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saved to a temporary file beside the checkpoint, then renamed into place."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with temporary.open("wb") as file:
                torch.save(checkpoint, file)
            temporary.replace(path)
        finally:
            temporary.unlink(missing_ok=True)
