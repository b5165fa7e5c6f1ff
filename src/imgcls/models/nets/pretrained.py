"""Networks by name from torchvision (``model=torchvision``, ``model=resnet18``) and timm.

The builders are called with the data's ``num_classes``, ``in_channels`` and ``image_size``.
torchvision: ``get_model(name, num_classes=)`` without weights; with weights the ImageNet
architecture is built, the weights loaded and the head (``net.head_name``) replaced by a fresh one.
torchvision has no input-channel argument, so the first convolution is adapted: for one channel
the RGB filters are summed, for ``c`` channels repeated and scaled by ``3 / c``. ResNets take a
small-input stem (3x3 stride-1 first convolution, no max pool) for images under 64 px.
timm: ``timm.create_model(name, num_classes=, in_chans=)``, weights from a local file through
``pretrained_cfg_overlay={"file": ...}`` (timm adapts the first convolution and drops the head).

``model.net.weights``: ``null`` (random init), a torchvision weights name (``IMAGENET1K_V1``,
``DEFAULT``) read from torch's hub cache (``$TORCH_HOME/hub/checkpoints``; a missing file is one
line naming it, unless ``model.net.download=true``), or a local state_dict file of the
architecture with its original head. The data's normalisation is the data config's: a net with
weights trained on other statistics logs one warning line (see ``check_normalisation``).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision import models as tv_models

from imgcls.models.nets.weights import (
    AUX_HEADS,
    is_weight_file,
    load_weights_into,
    read_state_dict,
    torchvision_state_dict,
    torchvision_weights,
)
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SMALL_IMAGE = 64  # ResNets below this size get the small-input stem (small_input: null)


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


def adapt_first_conv(net: nn.Module, in_channels: int) -> None:
    """Replace the first convolution by one taking ``in_channels`` (its filters adapted)."""
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
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


def _unknown_name(kind: str, name: str, known: Sequence[str]) -> UserError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"close: {', '.join(close)}" if close else f"e.g. {', '.join(list(known)[:8])}"
    return UserError(f"model.net.name={name} is not a {kind} classification model ({hint})")


# ------------------------------------------------------------------ torchvision
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
    64 px without weights. ``load_weights=False`` builds the architecture of ``weights`` without
    reading them (a checkpoint supplies the weights).
    """
    known = tv_models.list_models(module=tv_models)
    if name not in known:
        raise _unknown_name("torchvision", name, known)
    entry = torchvision_weights(name, weights) if weights and not is_weight_file(weights) else None
    min_size = (entry or tv_models.get_model_weights(name).DEFAULT).meta.get("min_size", (1,))[0]
    if image_size is not None and image_size < min_size:
        raise UserError(
            f"torchvision's {name} needs images of at least {min_size} px, data.image_size is "
            f"{image_size}; raise data.image_size"
        )
    if not weights:
        net = tv_models.get_model(name, num_classes=num_classes)
    else:  # the architecture the weights were trained with (googlenet/inception rescale inputs)
        inception = name in ("googlenet", "inception_v3")
        kwargs: dict[str, Any] = {"transform_input": True} if inception else {}
        if entry is not None and name.startswith("vit_"):  # torchvision sizes ViTs by weights
            kwargs["image_size"] = entry.meta["min_size"][0]
        net = tv_models.get_model(name, **kwargs)
        if load_weights:
            source = torchvision_state_dict if entry else None
            state = source(entry, weights, download) if source else read_state_dict(weights)
            load_weights_into(net, state, f"model.net.weights={weights}", f"torchvision's {name}")
        replace_head(net, classifier_name(net), num_classes)
        stats = (entry.transforms().mean, entry.transforms().std) if entry else None
        net.pretrained_normalisation = stats or (IMAGENET_MEAN, IMAGENET_STD)
    if getattr(net, "aux_logits", False):
        net.aux_logits = False
        for aux in AUX_HEADS:
            if hasattr(net, aux):
                setattr(net, aux, None)
    fixed = getattr(net, "image_size", None)  # ViTs take one size only
    if image_size is not None and isinstance(fixed, int) and fixed != image_size:
        raise UserError(
            f"torchvision's {name} takes only {fixed} px images; set data.image_size={fixed}"
        )
    if in_channels != 3 and getattr(net, "transform_input", False):
        net.transform_input = False  # it rescales exactly three channels
    small = not weights and (image_size or SMALL_IMAGE) < SMALL_IMAGE
    if small_input if small_input is not None else small:
        if not isinstance(getattr(net, "maxpool", None), nn.MaxPool2d):
            raise UserError(f"model.net.small_input=true needs a ResNet, not {name}")
        net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, 3, padding=1, bias=False)
        net.maxpool = nn.Identity()
    adapt_first_conv(net, in_channels)
    net.head_name = classifier_name(net)
    return net


# ------------------------------------------------------------------ timm
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
