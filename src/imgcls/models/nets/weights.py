"""Pretrained weights: reading state_dict files and torch's hub cache, and the check that the
data is normalised as the weights were trained."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tv_models

from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

#: auxiliary classifiers of googlenet / inception_v3, dropped (train-time only, ImageNet-sized)
AUX_HEADS = ("aux1", "aux2", "AuxLogits")
#: suffixes that make ``model.net.weights`` a file path even when the file does not exist
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def is_weight_file(weights: str) -> bool:
    return os.path.isfile(weights) or "/" in weights or weights.endswith(WEIGHT_FILE_SUFFIXES)


def read_state_dict(path: str) -> dict[str, Any]:
    """A state_dict saved with ``torch.save`` (read ``weights_only``) or as ``.safetensors``."""
    if not os.path.isfile(path):
        raise UserError(f"model.net.weights={path}: no such file; pass a state_dict file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle, zip and safetensors errors alike
        raise UserError(
            f"model.net.weights={path} cannot be read as a state_dict ({type(err).__name__}: "
            f"{err}); save one with torch.save(model.state_dict(), path)"
        ) from None


def load_weights_into(net: nn.Module, state_dict: Any, source: str, what: str) -> None:
    """Load a full state_dict (auxiliary heads excepted) or fail with one line naming keys."""
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise UserError(f"{source} is not a state_dict (a dict of tensors) of {what}")
    try:
        missing, unexpected = net.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = str(err).split("\n\t", 1)[-1].split("\n")[0]
        raise UserError(f"{source} does not fit {what}: {detail}") from None
    unexpected = [k for k in unexpected if not k.startswith(AUX_HEADS)]
    if missing or unexpected:
        raise UserError(
            f"{source} does not fit {what}: missing keys {missing[:3]}, unexpected keys "
            f"{unexpected[:3]} (of {len(missing)} and {len(unexpected)}); pass a state_dict of "
            "that architecture with its original head"
        )


def torchvision_weights(name: str, weights: str) -> tv_models.WeightsEnum:
    enum = tv_models.get_model_weights(name)
    short = weights.rsplit(".", 1)[-1]
    if short not in enum.__members__ or (
        "." in weights and weights.split(".", 1)[0] != enum.__name__
    ):
        raise UserError(
            f"model.net.weights={weights} is not a weights name of torchvision's {name} "
            f"({', '.join(enum.__members__)}) nor an existing file"
        )
    return enum[short]


def hub_checkpoint(weights: tv_models.WeightsEnum) -> Path:
    """Where torch's hub cache keeps (and ``load_state_dict_from_url`` looks for) the weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def torchvision_state_dict(entry: tv_models.WeightsEnum, weights: str, download: bool) -> Any:
    path = hub_checkpoint(entry)
    if not path.is_file() and not download:
        raise UserError(
            f"model.net.weights={weights} needs {path.name} in torch's hub cache: put {entry.url} "
            f"at {path} (the cache is $TORCH_HOME/hub/checkpoints), set model.net.download=true "
            "on a machine with internet, or pass model.net.weights=/path/to/file.pth"
        )
    try:  # reads the cached file; downloads (hash-checked) only when it is missing
        return torch.hub.load_state_dict_from_url(
            entry.url, map_location="cpu", check_hash=True, weights_only=True
        )
    except Exception as err:  # noqa: BLE001 - network and file errors alike
        raise UserError(
            f"model.net.weights={weights}: could not read or download {path} ({err}); put "
            f"{entry.url} there by hand or pass model.net.weights=/path/to/file.pth"
        ) from None


# ------------------------------------------------------------------ the data's normalisation
def for_channels(values: Sequence[float], channels: int) -> list[float]:
    """Per-channel statistics of RGB weights for ``channels`` inputs (grey: their average)."""
    if channels == 1:
        return [sum(values) / len(values)]
    return [values[i % len(values)] for i in range(channels)]


def check_normalisation(net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    """One warning line when pretrained weights meet data normalised with other statistics."""
    stats = getattr(net, "pretrained_normalisation", None)
    if stats is None:
        return
    channels = next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels
    want = [for_channels(s, channels) for s in stats]
    given = [mean, std]
    if not all(
        len(a) == len(b)
        and all(math.isclose(x, y, abs_tol=1e-3) for x, y in zip(a, b, strict=True))
        for a, b in zip(given, want, strict=True)
    ):
        log.warning(
            f"the pretrained weights expect data.mean={want[0]} data.std={want[1]}, the data "
            f"uses mean={[round(m, 4) for m in mean]} std={[round(v, 4) for v in std]}; set both "
            "for the weights' accuracy"
        )
