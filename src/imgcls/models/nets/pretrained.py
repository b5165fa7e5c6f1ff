"""Pretrained networks by name: torchvision's classification models and timm's (extra ``timm``).

``model=torchvision model.net.name=resnet50 model.net.weights=IMAGENET1K_V1`` builds torchvision's
ResNet-50 with its ImageNet weights; ``model=timm model.net.name=...`` does the same for timm.
Either way the classifier head is replaced to fit ``num_classes`` (a fresh layer) and the first
convolution is adapted to ``in_channels``: for one channel the pretrained RGB filters are summed,
for ``c`` channels they are repeated cyclically and scaled by ``3 / c`` (activations keep their
scale; for a multiple of 3 a grey image gives exactly the RGB response). The head's module name
is kept in ``net.head_name``, so freezing the backbone (``model.freeze=backbone``, the
``finetuning`` callback) knows what to leave trainable.

``model.net.weights``:

- ``null``: random initialisation.
- a torchvision weights name of the model (``IMAGENET1K_V1``, ``DEFAULT``): read from torch's hub
  cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (``~/.cache/torch`` without ``TORCH_HOME``). A
  missing file is a one-line error naming the file and where it goes, raised when the model is
  built, before any data is loaded; ``model.net.download=true`` fetches it instead.
- a local file: a state_dict of the architecture as the library builds it, with its original
  head (e.g. ``torch.save(torchvision.models.resnet18(weights=...).state_dict(), path)``, or the
  ``.pth``/``.safetensors`` file the library downloads). timm's weights come from a local file only.

With weights, the data takes the weights' own preprocessing by default (``${pretrained:...}`` in
the data configs): their image size (the crop size: images are squashed to it, not resized and
centre-cropped) and mean/std, averaged for one-channel data. A local file carries no metadata:
torchvision's then use ImageNet mean/std and the size of the model's default weights, timm's the
model's ``pretrained_cfg``. ``data.image_size``, ``data.mean`` and ``data.std`` override each.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torchvision import models as tv_models

from imgcls.data.folder.datamodule import IMAGENET_MEAN, IMAGENET_STD
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

#: suffixes that make ``model.net.weights`` a file path even when the file does not exist
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
#: auxiliary classifiers of googlenet / inception_v3, dropped (train-time only, ImageNet-sized)
AUX_HEADS = ("aux1", "aux2", "AuxLogits")
#: what torchvision's builders set for their pretrained weights (googlenet, inception_v3)
PRETRAINED_ARCHITECTURE = {
    "googlenet": {"transform_input": True},
    "inception_v3": {"transform_input": True},
}


# ------------------------------------------------------------------ shared surgery
def _is_weight_file(weights: str) -> bool:
    return os.path.isfile(weights) or "/" in weights or weights.endswith(WEIGHT_FILE_SUFFIXES)


def _set_submodule(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)


def adapt_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Filters ``[O, 3, k, k]`` for ``in_channels`` inputs: summed for 1, else repeated x 3/c."""
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def adapt_first_conv(net: nn.Module, in_channels: int, name: str | None = None) -> None:
    """Replace the first convolution (``name``, else the first ``Conv2d`` taking 3 channels)."""
    if name is None:
        name = next(
            n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3
        )
    conv = net.get_submodule(name)
    if conv.in_channels == in_channels:
        return
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_conv_weight(conv.weight, in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set_submodule(net, name, new)


def classifier_name(net: nn.Module) -> str:
    """The last ``Linear`` layer (squeezenet, which has none: the last ``Conv2d``)."""
    for kind in (nn.Linear, nn.Conv2d):
        names = [n for n, m in net.named_modules() if isinstance(m, kind)]
        if names:
            return names[-1]
    raise UserError(f"{type(net).__name__} has no Linear or Conv2d layer to use as the head")


def replace_head(net: nn.Module, name: str, num_classes: int) -> None:
    """A freshly initialised classifier layer with ``num_classes`` outputs in place of ``name``."""
    old = net.get_submodule(name)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, bias=old.bias is not None)
    _set_submodule(net, name, new)


def load_weights_into(net: nn.Module, state_dict: dict[str, Any], source: str, what: str) -> None:
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


def _unknown_name(kind: str, name: str, known: Sequence[str]) -> UserError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"close: {', '.join(close)}" if close else f"e.g. {', '.join(list(known)[:8])}"
    return UserError(f"model.net.name={name} is not a {kind} classification model ({hint})")


# ------------------------------------------------------------------ torchvision
def _torchvision_weights(name: str, weights: str) -> tv_models.WeightsEnum:
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
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _torchvision_state_dict(name: str, weights: str, download: bool) -> dict[str, Any]:
    if _is_weight_file(weights):
        return read_state_dict(weights)
    entry = _torchvision_weights(name, weights)
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


def torchvision_net(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int | None = None,
    weights: str | None = None,
    download: bool = False,
    load_weights: bool = True,
) -> nn.Module:
    """torchvision's classification model ``name`` (``torchvision.models.list_models``).

    ``weights``: ``None``, a weights name of the model or a local state_dict file (see the module
    docstring). ``load_weights=False`` builds the same architecture without reading them (a
    checkpoint supplies the weights).
    """
    known = tv_models.list_models(module=tv_models)
    if name not in known:
        raise _unknown_name("torchvision", name, known)
    meta_weights = (
        _torchvision_weights(name, weights)
        if weights and not _is_weight_file(weights)
        else tv_models.get_model_weights(name).DEFAULT
    )
    min_size = meta_weights.meta.get("min_size", (1, 1))[0]
    if image_size is not None and image_size < min_size:
        raise UserError(
            f"torchvision's {name} needs images of at least {min_size} px, data.image_size is "
            f"{image_size}; raise data.image_size"
        )
    kwargs: dict[str, Any] = dict(PRETRAINED_ARCHITECTURE.get(name, {})) if weights else {}
    if weights and name.startswith("vit_"):  # torchvision sizes ViTs by their weights
        kwargs["image_size"] = meta_weights.meta["min_size"][0]
    net = tv_models.get_model(name, weights=None, **kwargs)
    if weights and load_weights:
        state_dict = _torchvision_state_dict(name, weights, download)
        load_weights_into(net, state_dict, f"model.net.weights={weights}", f"torchvision's {name}")
    if getattr(net, "aux_logits", False):
        net.aux_logits = False
        for aux in AUX_HEADS:
            if hasattr(net, aux):
                setattr(net, aux, None)
    fixed = getattr(net, "image_size", None)  # ViTs take one size only
    if image_size is not None and isinstance(fixed, int) and fixed != image_size:
        raise UserError(
            f"torchvision's {name} takes only {fixed} px images (with these weights); "
            f"set data.image_size={fixed}"
        )
    if in_channels != 3 and getattr(net, "transform_input", False):
        net.transform_input = False  # it rescales exactly three channels
    net.head_name = classifier_name(net)
    replace_head(net, net.head_name, num_classes)
    adapt_first_conv(net, in_channels)
    return net


# ------------------------------------------------------------------ timm
def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise UserError("model=timm needs the timm package: pip install -e '.[timm]'") from None
    return timm


def timm_net(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int | None = None,
    weights: str | None = None,
    load_weights: bool = True,
) -> nn.Module:
    """timm's model ``name`` (``timm.list_models()``), with weights from a local file or none."""
    timm = _timm()
    if not timm.is_model(name):
        raise _unknown_name("timm", name, timm.list_models())
    if weights and not os.path.isfile(weights):
        raise UserError(
            f"model.net.weights={weights}: no such file; timm's weights are read from a local "
            f"file (a state_dict of {name}, .pth or .safetensors), nothing is downloaded"
        )
    net = timm.create_model(name, pretrained=False)
    config = net.pretrained_cfg
    size = config.get("input_size", (3, 224, 224))[-1]
    if config.get("fixed_input_size") and image_size is not None and image_size != size:
        raise UserError(f"timm's {name} takes only {size} px images; set data.image_size={size}")
    if weights and load_weights:
        state_dict = _read_timm_state_dict(timm, weights)
        load_weights_into(net, state_dict, f"model.net.weights={weights}", f"timm's {name}")
    net.reset_classifier(num_classes)
    head = config.get("classifier", "")
    net.head_name = head if isinstance(head, str) else head[0]
    first_conv = config.get("first_conv")
    adapt_first_conv(net, in_channels, first_conv if isinstance(first_conv, str) else None)
    return net


def _read_timm_state_dict(timm: Any, path: str) -> dict[str, Any]:
    try:  # plain state_dicts, training checkpoints ("state_dict"/"model" keys), safetensors
        return timm.models.load_state_dict(path)
    except Exception as err:  # noqa: BLE001
        raise UserError(
            f"model.net.weights={path} cannot be read as a state_dict ({type(err).__name__}: {err})"
        ) from None


# ------------------------------------------------------------------ the weights' preprocessing
@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


BUILDERS = {
    f"{__name__}.torchvision_net": "torchvision",
    f"{__name__}.timm_net": "timm",
}


@functools.lru_cache(maxsize=32)
def weights_preprocessing(library: str, name: str, weights: str) -> Preprocessing:
    """Image size (crop), mean and std the weights were trained with; logged once."""
    if library == "timm":
        config = _timm().models.get_pretrained_cfg(name)
        if config is None:
            raise UserError(f"model.net.name={name} is not a timm model with a pretrained_cfg")
        found = Preprocessing(config.input_size[-1], tuple(config.mean), tuple(config.std))
        origin = f"timm's pretrained_cfg of {name}"
    elif _is_weight_file(weights):
        default = tv_models.get_model_weights(name).DEFAULT
        found = Preprocessing(default.transforms().crop_size[0], IMAGENET_MEAN, IMAGENET_STD)
        origin = (
            f"a local file has no preprocessing metadata: ImageNet mean/std and the crop size "
            f"of {name}'s default weights"
        )
    else:
        transforms = _torchvision_weights(name, weights).transforms()
        found = Preprocessing(
            transforms.crop_size[0], tuple(transforms.mean), tuple(transforms.std)
        )
        origin = f"{name}'s {weights} weights"
    log.info(
        f"model.net.weights={weights}: data at {found.image_size} px, mean={list(found.mean)} "
        f"std={list(found.std)} ({origin}); set data.image_size/mean/std to change"
    )
    return found


def for_channels(values: Sequence[float], channels: int) -> list[float]:
    """Per-channel statistics of RGB weights for ``channels`` inputs (grey: their average)."""
    if channels == len(values):
        return list(values)
    if channels == 1:
        return [sum(values) / len(values)]
    return [values[i % len(values)] for i in range(channels)]


def pretrained_resolver(key: str, *, _root_: DictConfig) -> Any:
    """``${pretrained:image_size|mean|std}``: the weights' value, or null without weights.

    Used by the data configs, so ``model.net.weights`` sets the data's preprocessing by default.
    """
    net = OmegaConf.select(_root_, "model.net", default=None)
    if not isinstance(net, DictConfig) or not net.get("weights"):
        return None
    library = BUILDERS.get(net.get("_target_"))
    if library is None:
        return None
    found = weights_preprocessing(library, str(net.name), str(net.weights))
    if key == "image_size":
        return found.image_size
    if key not in ("mean", "std"):
        raise UserError(f"${{pretrained:{key}}}: use image_size, mean or std")
    return for_channels(getattr(found, key), _data_channels(_root_))


def _data_channels(root: DictConfig) -> int:
    """The data's channels, read from a copy whose statistics are not asked for (no cycle)."""
    from imgcls.config import datamodule_attribute

    copy = root.copy()
    with open_dict(copy):
        copy.data = copy.data.copy()
        copy.data.mean = None
        copy.data.std = None
    return datamodule_attribute("in_channels", _root_=copy)
