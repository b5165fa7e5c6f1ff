"""Networks by name from torchvision (``model=torchvision``, ``model=resnet18``) and timm, their
pretrained weights (docs/fine-tuning.md) and the check of the data's normalisation."""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models as tv_models

from imgcls.models.freezing import head_name
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: auxiliary classifiers of googlenet / inception_v3, dropped (train-time only, ImageNet-sized)
AUX_HEADS = ("aux1", "aux2", "AuxLogits")
#: suffixes that make ``model.net.weights`` a file path even when the file does not exist
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def _unknown_name(kind: str, name: str, known: Sequence[str]) -> UserError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"close: {', '.join(close)}" if close else f"e.g. {', '.join(list(known)[:8])}"
    return UserError(f"model.net.name={name} is not a {kind} classification model ({hint})")


def adapt_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Filters ``[O, 3, k, k]`` for ``in_channels`` inputs: summed for 1, else repeated x 3/c."""
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


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


def hub_state_dict(entry: tv_models.WeightsEnum, weights: str, download: bool) -> Any:
    """The weights from torch's hub cache, where ``load_state_dict_from_url`` keeps them."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / entry.url.rsplit("/", 1)[-1]
    if not path.is_file() and not download:
        raise UserError(
            f"model.net.weights={weights} needs {path.name} in torch's hub cache: put {entry.url} "
            f"at {path} (the cache is $TORCH_HOME/hub/checkpoints), set model.net.download=true "
            "on a machine with internet, or pass model.net.weights=/path/to/file.pth"
        )
    try:  # reads the cached file; downloads (hash-checked) only when it is missing
        return entry.get_state_dict(map_location="cpu", check_hash=True, weights_only=True)
    except Exception as err:  # noqa: BLE001 - network and file errors alike
        raise UserError(
            f"model.net.weights={weights}: could not read or download {path} ({err}); put "
            f"{entry.url} there by hand or pass model.net.weights=/path/to/file.pth"
        ) from None


def load_backbone(net: nn.Module, state: Any, head: str, source: str, what: str) -> None:
    """Load a state_dict of the architecture, all but its head, or fail in one line."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{source} is not a state_dict (a dict of tensors) of {what}")
    state = {k: v for k, v in state.items() if not k.startswith((f"{head}.", *AUX_HEADS))}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = str(err).split("\n\t", 1)[-1].split("\n")[0]
        raise UserError(f"{source} does not fit {what}: {detail}") from None
    missing = [k for k in missing if not k.startswith(f"{head}.")]
    if missing or unexpected:
        raise UserError(
            f"{source} does not fit {what}: missing keys {missing[:3]}, unexpected keys "
            f"{unexpected[:3]} (of {len(missing)} and {len(unexpected)}); pass a state_dict of "
            "that architecture with its original head"
        )


def torchvision_net(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int | None = None,
    weights: str | None = None,
    download: bool = False,
    small_input: bool | None = None,
    load_weights: bool = True,
) -> nn.Module:
    """torchvision's classification model ``name`` (``torchvision.models.list_models``).

    ``small_input`` (ResNets): the 3x3 stride-1 stem without max pool; ``None``: for images under
    64 px without weights. ``load_weights=False``: the architecture alone (a checkpoint's weights).
    """
    known = tv_models.list_models(module=tv_models)
    if name not in known:
        raise _unknown_name("torchvision", name, known)
    enum, entry = tv_models.get_model_weights(name), None
    is_file = os.path.isfile(weights or "") or "/" in (weights or "")
    if weights and not is_file and not weights.endswith(WEIGHT_FILE_SUFFIXES):
        try:  # "IMAGENET1K_V1" or "ResNet18_Weights.IMAGENET1K_V1"
            entry = enum[weights.rsplit(".", 1)[-1]]
        except KeyError:
            raise UserError(
                f"model.net.weights={weights} is not a weights name of torchvision's {name} "
                f"({', '.join(enum.__members__)}) nor an existing file"
            ) from None
    min_size = (entry or enum.DEFAULT).meta.get("min_size", (1,))[0]
    if image_size is not None and image_size < min_size:
        raise UserError(
            f"torchvision's {name} needs images of at least {min_size} px, data.image_size is "
            f"{image_size}; raise data.image_size"
        )
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if weights and name in ("googlenet", "inception_v3"):  # as trained: they rescale inputs
        kwargs["transform_input"] = True
    if entry is not None and name.startswith("vit_"):  # torchvision sizes ViTs by weights
        kwargs["image_size"] = entry.meta["min_size"][0]
    net = tv_models.get_model(name, **kwargs)
    if getattr(net, "aux_logits", False):
        net.aux_logits = False
        for aux in AUX_HEADS:
            if hasattr(net, aux):
                setattr(net, aux, None)
    net.head_name = head_name(net)
    if weights and load_weights:
        state = hub_state_dict(entry, weights, download) if entry else read_state_dict(weights)
        load_backbone(
            net, state, net.head_name, f"model.net.weights={weights}", f"torchvision's {name}"
        )
    if weights:
        stats = (entry.transforms().mean, entry.transforms().std) if entry else None
        net.pretrained_normalisation = stats or (IMAGENET_MEAN, IMAGENET_STD)
    fixed = getattr(net, "image_size", None)  # ViTs take one size only
    if image_size is not None and isinstance(fixed, int) and fixed != image_size:
        raise UserError(
            f"torchvision's {name} takes only {fixed} px images; set data.image_size={fixed}"
        )
    if in_channels != 3 and getattr(net, "transform_input", False):
        net.transform_input = False  # it rescales exactly three channels
    if small_input is None:
        small_input = not weights and image_size is not None and image_size < 64
    if small_input:
        if not isinstance(getattr(net, "maxpool", None), nn.MaxPool2d):
            raise UserError(f"model.net.small_input=true needs a ResNet, not {name}")
        net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, 3, padding=1, bias=False)
        net.maxpool = nn.Identity()
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))  # the first convolution
    if conv.in_channels != in_channels:
        conv.weight = nn.Parameter(adapt_conv_weight(conv.weight.detach(), in_channels))
        conv.in_channels = in_channels
    return net


def timm_net(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int | None = None,
    weights: str | None = None,
    load_weights: bool = True,
) -> nn.Module:
    """timm's model ``name`` (``timm.list_models()``), with weights from a local file or none."""
    try:
        import timm
    except ImportError:
        raise UserError("model=timm needs the timm package: pip install -e '.[timm]'") from None
    if not timm.is_model(name):
        raise _unknown_name("timm", name, timm.list_models())
    if weights and not os.path.isfile(weights):
        raise UserError(
            f"model.net.weights={weights}: no such file; timm's weights are read from a local "
            f"file (a state_dict of {name}, .pth or .safetensors), nothing is downloaded"
        )
    pretrained = bool(weights) and load_weights
    try:
        net = timm.create_model(
            name,
            pretrained=pretrained,
            pretrained_cfg_overlay={"file": weights} if pretrained else None,
            num_classes=num_classes,
            in_chans=in_channels,
        )
    except (RuntimeError, KeyError, OSError, ValueError) as err:
        detail = str(err).split("\n")[0]
        raise UserError(
            f"model.net.weights={weights} does not fit timm's {name}: {detail}"
        ) from None
    config = net.pretrained_cfg
    size = config.get("input_size", (3, 224, 224))[-1]
    if config.get("fixed_input_size") and image_size is not None and image_size != size:
        raise UserError(f"timm's {name} takes only {size} px images; set data.image_size={size}")
    head = config.get("classifier", "")
    net.head_name = head if isinstance(head, str) else head[0]
    if weights:
        net.pretrained_normalisation = (tuple(config["mean"]), tuple(config["std"]))
    return net


def check_normalisation(net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    """One warning line when pretrained weights meet data normalised with other statistics."""
    if getattr(net, "pretrained_normalisation", None) is None:
        return
    want = torch.tensor(net.pretrained_normalisation)  # RGB: averaged for grey, else repeated
    channels = next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels
    want = want.mean(1, keepdim=True) if channels == 1 else want[:, torch.arange(channels) % 3]
    if not torch.allclose(torch.tensor([list(mean), list(std)]), want, atol=1e-3):
        expected = [[round(v, 4) for v in row] for row in want.tolist()]
        log.warning(
            f"the pretrained weights expect data.mean={expected[0]} data.std={expected[1]}, the "
            f"data uses mean={[round(m, 4) for m in mean]} std={[round(v, 4) for v in std]}; set "
            "both for the weights' accuracy"
        )
