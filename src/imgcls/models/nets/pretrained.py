"""torchvision and timm nets by name, their pretrained weights, freezing a net's backbone (all but
its head, as Lightning's ``BaseFinetuning`` does) (docs/fine-tuning.md)."""

import difflib
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import BaseFinetuning
from torch import nn
from torchvision import models as tv_models

from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

#: auxiliary classifiers of googlenet / inception_v3, left out (train-time only, ImageNet-sized)
AUX_HEADS = ("aux1", "aux2", "AuxLogits")


def head_name(net: nn.Module) -> str:
    """``net.head_name`` if set (timm's), else its last ``Linear`` (or ``Conv2d``: squeezenet)."""
    if getattr(net, "head_name", None):
        return net.head_name
    linear = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return (linear or [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)])[-1]


def backbone_modules(net: nn.Module) -> list[nn.Module]:
    """Every module of ``net`` outside its head (the net itself included, for its own tensors)."""
    head = head_name(net)
    return [m for n, m in net.named_modules() if n != head and not n.startswith(head + ".")]


def freeze_backbone(net: nn.Module) -> None:
    for module in backbone_modules(net):  # each its own tensors (Lightning's freeze would recurse)
        BaseFinetuning.freeze_module(module)


def _unknown_name(kind: str, name: str, known: Sequence[str]) -> UserError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"close: {', '.join(close)}" if close else f"e.g. {', '.join(list(known)[:8])}"
    return UserError(f"model.net.name={name} is not a {kind} classification model ({hint})")


def adapt_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Filters ``[O, 3, k, k]`` for ``in_channels`` inputs: summed for 1, else repeated x 3/c."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def read_weights(weights: str, entry: tv_models.WeightsEnum | None, download: bool) -> Any:
    """The state_dict of a local file or of a torchvision weights entry (hub cache)."""
    path = Path(torch.hub.get_dir(), "checkpoints", entry.url.rsplit("/", 1)[-1]) if entry else None
    if path is None and not os.path.isfile(weights):
        raise UserError(f"model.net.weights={weights}: no such file; pass a state_dict file")
    if path is not None and not path.is_file() and not download:
        raise UserError(
            f"model.net.weights={weights} needs {path.name} in torch's hub cache: put {entry.url} "
            f"at {path} (the cache is $TORCH_HOME/hub/checkpoints), set model.net.download=true "
            "on a machine with internet, or pass model.net.weights=/path/to/file.pth"
        )
    try:
        if entry is not None:
            return entry.get_state_dict(map_location="cpu", check_hash=True, weights_only=True)
        if weights.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(weights)
        return torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle, zip, safetensors and network errors alike
        if path is not None and not path.is_file():  # model.net.download=true, offline
            raise UserError(
                f"model.net.weights={weights}: downloading {entry.url} failed ({err}); put the "
                f"file at {path} or pass model.net.weights=/path/to/file.pth"
            ) from None
        raise UserError(
            f"model.net.weights={weights} cannot be read as a state_dict ({type(err).__name__}: "
            f"{err}); pass a file of torch.save(model.state_dict(), path)"
        ) from None


def load_backbone(net: nn.Module, state: Any, weights: str, name: str) -> None:
    """Load a state_dict of the architecture, all but its head, or fail in one line."""
    fail = f"model.net.weights={weights} does not fit torchvision's {name}"
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{fail}: it is not a state_dict (a dict of tensors)")
    head = f"{net.head_name}."
    try:
        missing, unexpected = net.load_state_dict(
            {k: v for k, v in state.items() if not k.startswith((head, *AUX_HEADS))}, strict=False
        )
    except RuntimeError as err:  # shape mismatches: the first one, from torch's message
        detail = str(err).split("\t", 1)[-1].splitlines()[0]
        raise UserError(f"{fail}: {detail}") from None
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise UserError(
            f"{fail}: missing keys {missing[:3]}, unexpected keys {unexpected[:3]} (of "
            f"{len(missing)} and {len(unexpected)}); pass a state_dict of that architecture"
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
    """torchvision's model ``name``; ``small_input``: a ResNet's 3x3 stem without max pool."""
    known = tv_models.list_models(module=tv_models)
    if name not in known:
        raise _unknown_name("torchvision", name, known)
    enum, entry = tv_models.get_model_weights(name), None
    # a weights name ("IMAGENET1K_V1", "ResNet18_Weights.DEFAULT") unless a file has that name
    if weights and not os.path.isfile(weights) and re.fullmatch(r"(\w+\.)?[A-Z0-9_]+", weights):
        try:
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
    if name in ("googlenet", "inception_v3"):  # pretrained, they rescale (3-channel) inputs
        kwargs.update(aux_logits=False, transform_input=bool(weights) and in_channels == 3)
    if entry is not None and name.startswith("vit_"):  # torchvision sizes ViTs by weights
        kwargs["image_size"] = entry.meta["min_size"][0]
    net = tv_models.get_model(name, **kwargs)
    net.head_name = head_name(net)
    if weights and load_weights:
        load_backbone(net, read_weights(weights, entry, download), weights, name)
    if weights:  # the statistics the weights were trained with (a file: the DEFAULT weights')
        preset = (entry or enum.DEFAULT).transforms()
        net.pretrained_normalisation = (preset.mean, preset.std)
    fixed = getattr(net, "image_size", None)  # ViTs take one size only
    if image_size is not None and isinstance(fixed, int) and fixed != image_size:
        raise UserError(
            f"torchvision's {name} takes only {fixed} px images; set data.image_size={fixed}"
        )
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
    # timm adapts the first convolution to in_chans and leaves out the file's head
    local = {"pretrained": True, "pretrained_cfg_overlay": {"file": weights}}
    try:
        kwargs = local if weights and load_weights else {}
        net = timm.create_model(name, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except (RuntimeError, KeyError, OSError, ValueError) as err:
        fit = f"model.net.weights={weights} does not fit timm's {name}"
        raise UserError(f"{fit}: {str(err).splitlines()[0]}") from None
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
