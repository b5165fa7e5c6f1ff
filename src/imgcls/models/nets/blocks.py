"""What the zoo's nets share: FastDropout, conv and dense blocks, image-size and width checks."""

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from imgcls.utils.errors import UserError

#: ``activation`` names the dense nets accept
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with cheap CPU masks (16 random bits an element; else ``nn.Dropout``)."""

    def forward(self, x: Tensor) -> Tensor:
        cpu = x.device.type == "cpu" and not torch.compiler.is_compiling()
        if not (self.training and cpu and 0.0 < self.p < 1.0) or self.inplace:
            return super().forward(x)
        bits = torch.randint(-(2**63), 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64)
        lanes = bits.view(torch.int16)[: x.numel()].view(x.shape)  # uniform on -32768..32767
        keep = lanes >= round(self.p * 65536) - 32768
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


def conv_relu(in_ch: int, out_ch: int, kernel: int, *after: nn.Module, **kwargs) -> nn.Sequential:
    """conv -> ReLU (padding ``kernel // 2`` unless given), then the layers ``after``."""
    return Conv2dNormActivation(in_ch, out_ch, kernel, norm_layer=None, **kwargs).extend(after)


def dense_head(
    in_features: int,
    hidden_sizes: Sequence[int],
    num_classes: int,
    dropout: float = 0.0,
    act: str = "relu",
) -> nn.Sequential:
    """``[Linear -> activation -> Dropout] x len(hidden_sizes) -> Linear(num_classes)`` (logits)."""
    if act not in ACTIVATIONS:
        raise UserError(f"unknown activation {act!r}; use one of {', '.join(sorted(ACTIVATIONS))}")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {dropout}")
    if any(int(h) < 1 for h in hidden_sizes):
        raise UserError(f"hidden layer sizes must be >= 1, got {list(hidden_sizes)}")
    layers: list[nn.Module] = []
    for width in map(int, hidden_sizes):
        layers += [nn.Linear(in_features, width), ACTIVATIONS[act]()]
        layers += [FastDropout(dropout)] if dropout > 0 else []
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


def check_widths(net: str, channels: Sequence[int], expected: int) -> list[int]:
    """``channels`` as ints; a ``UserError`` unless there are ``expected`` positive widths."""
    if len(channels) != expected or any(int(c) < 1 for c in channels):
        raise UserError(
            f"{net} needs {expected} positive conv widths in channels, got {list(channels)}"
        )
    return [int(c) for c in channels]


def check_image_size(net: str, layers: nn.Module, in_channels: int, image_size: int) -> None:
    """Fail naming the smallest image ``layers`` take (probed on the meta device)."""
    probe = copy.deepcopy(layers).to("meta").eval()

    def fits(size: int) -> bool:
        try:
            probe(torch.empty(1, in_channels, size, size, device="meta"))
        except RuntimeError:  # "Output size is too small" and the like
            return False
        return True

    if not fits(image_size):
        minimum = next(size for size in range(image_size + 1, 4096) if fits(size))
        raise UserError(
            f"{net} needs images of at least {minimum}px, got data.image_size={image_size}; "
            f"set data.image_size={minimum} or larger"
        )


class ConvClassifier(nn.Sequential):
    """``features`` (ending in an adaptive pool) -> flatten -> ``head``; returns logits."""

    def __init__(self, features: nn.Sequential, head: nn.Sequential) -> None:
        super().__init__(OrderedDict(features=features, flatten=nn.Flatten(), head=head))
