"""Building blocks and size arithmetic shared by the nets of the model zoo.

Every net is sized by ``(in_channels, num_classes, image_size)``. The helpers here compute the
side of a feature map from the layers themselves (no dummy forward pass), find the smallest image
a feature extractor accepts, and raise a one-line :class:`UserError` for images below it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

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

#: images of at least this side get a strided stem (as the published nets do); smaller ones not
LARGE_IMAGE = 128


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU masks are cut from 64-bit random integers, four per draw.

    On a CPU, drawing one Bernoulli sample per activation is the largest cost of a small CNN's
    training step. Here every 16 random bits decide one element: elements are still dropped
    independently with probability ``p`` (rounded to a multiple of 1/65536) and kept ones scaled
    by ``1 / (1 - p)``, for far less work (``benchmarks/throughput.py --torch-dropout``). On a
    GPU, under ``torch.compile``, in eval mode or with ``inplace=True`` it is ``nn.Dropout``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (
            not self.training
            or self.p == 0.0
            or self.inplace
            or x.device.type != "cpu"
            or torch.compiler.is_compiling()
        ):
            return super().forward(x)
        if self.p == 1.0:
            return torch.zeros_like(x)
        n = x.numel()
        bits = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        lanes = bits.view(torch.int16)[:n].view(x.shape)  # uniform on -32768..32767
        keep = lanes >= round(self.p * 65536) - 32768
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


def activation(name: str) -> nn.Module:
    """A fresh activation layer by name (``relu``, ``gelu``, ``tanh``, ``leaky_relu``, ...)."""
    key = name.lower()
    if key not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; use one of {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[key]()


def _first(value: int | Sequence[int]) -> int:
    return int(value[0]) if isinstance(value, Sequence) else int(value)


def _adaptive_side(output_size: int | Sequence[int | None] | None, size: int) -> int:
    side = output_size[0] if isinstance(output_size, Sequence) else output_size
    return size if side is None else int(side)


def feature_side(layers: nn.Module, size: int) -> int:
    """Side of the square feature map ``layers`` make of a ``size`` px image; 0 if too small.

    Walks ``layers.modules()`` in registration order, which is the forward order of the
    ``nn.Sequential`` stacks used here. Convolutions and pools shrink the side by the usual
    ``floor((n + 2p - d(k - 1) - 1) / s) + 1``; adaptive pools set it.
    """
    for layer in layers.modules():
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            kernel, stride = _first(layer.kernel_size), _first(layer.stride)
            if layer.padding == "same":  # keeps the side
                continue
            padding = 0 if layer.padding == "valid" else _first(layer.padding)
            dilation = _first(getattr(layer, "dilation", 1))
            span = size + 2 * padding - dilation * (kernel - 1) - 1
            if span < 0:  # the window no longer fits: the layer would fail
                return 0
            size = span // stride + 1
        elif isinstance(layer, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = _adaptive_side(layer.output_size, size)
    return size


def min_image_size(layers: nn.Module, limit: int = 4096) -> int:
    """The smallest image side ``layers`` accept (every intermediate map at least 1x1)."""
    for size in range(1, limit + 1):
        if feature_side(layers, size) >= 1:
            return size
    raise ValueError(f"no image side up to {limit}px fits these layers")


def check_image_size(net: str, layers: nn.Module, image_size: int) -> int:
    """``feature_side`` of ``image_size``; a ``UserError`` naming ``net`` if it is too small."""
    minimum = min_image_size(layers)
    if image_size < minimum:
        raise UserError(
            f"{net} needs images of at least {minimum}px, got data.image_size={image_size}; "
            f"set data.image_size={minimum} or larger"
        )
    return feature_side(layers, image_size)


def check_widths(net: str, channels: Sequence[int], expected: int) -> list[int]:
    """``channels`` as ints; a ``UserError`` unless there are ``expected`` positive widths."""
    if len(channels) != expected or any(int(c) < 1 for c in channels):
        raise UserError(
            f"{net} needs {expected} positive conv widths in channels, got {list(channels)}"
        )
    return [int(c) for c in channels]


def stem_stride(image_size: int, large: int = 4) -> int:
    """Stride of a net's first convolution: ``large`` for images of ``LARGE_IMAGE`` px or more."""
    return large if image_size >= LARGE_IMAGE else 1


def conv_relu(
    in_ch: int,
    out_ch: int,
    kernel: int = 3,
    stride: int = 1,
    padding: int | None = None,
    lrn: bool = False,
    pool: nn.Module | None = None,
) -> nn.Sequential:
    """conv -> ReLU [-> LocalResponseNorm] [-> pool]; padding defaults to ``kernel // 2``.

    The LRN uses the published AlexNet constants (n=5, alpha=1e-4, beta=0.75, k=2).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_ch,
            out_ch,
            kernel,
            stride=stride,
            padding=kernel // 2 if padding is None else padding,
        ),
        nn.ReLU(inplace=True),
    ]
    if lrn:
        layers.append(nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0))
    if pool is not None:
        layers.append(pool)
    return nn.Sequential(*layers)


def dense_head(
    in_features: int,
    hidden_sizes: Sequence[int],
    num_classes: int,
    dropout: float = 0.0,
    act: str = "relu",
) -> nn.Sequential:
    """``[Linear -> activation -> Dropout] x len(hidden_sizes) -> Linear(num_classes)`` (logits)."""
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {dropout}")
    layers: list[nn.Module] = []
    width = in_features
    for hidden in hidden_sizes:
        if int(hidden) < 1:
            raise UserError(f"hidden layer sizes must be >= 1, got {list(hidden_sizes)}")
        layers += [nn.Linear(width, int(hidden)), activation(act)]
        if dropout > 0:
            layers.append(FastDropout(dropout))
        width = int(hidden)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class ConvClassifier(nn.Module):
    """``features`` (ending in an adaptive pool) -> flatten -> ``head``; returns logits."""

    def __init__(self, features: nn.Sequential, head: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))
