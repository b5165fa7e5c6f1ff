"""TinyNet: the parameter-efficient MNIST CNN (<20k parameters, 99.4%+ on MNIST)."""

from __future__ import annotations

from torch import Tensor, nn

from imgcls.models.nets.blocks import FastDropout
from imgcls.utils.errors import UserError


def conv_bn(
    in_ch: int, out_ch: int, dropout: float, kernel: int = 3, padding: int = 0
) -> nn.Sequential:
    """conv -> BatchNorm -> ReLU -> dropout, the block TinyNet is made of."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        FastDropout(dropout),
    )


class TinyNet(nn.Module):
    """conv-BN-ReLU-dropout blocks, a 1x1 transition + max pool, global average pool head.

    No large fully connected layer: the head is a 1x1 convolution, so the network takes any image
    of at least ``MIN_SIZE`` pixels. Returns log-probabilities.
    """

    MIN_SIZE = 18

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        width: int = 16,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if image_size < self.MIN_SIZE:
            raise UserError(
                f"tinynet needs images of at least {self.MIN_SIZE}px, "
                f"got data.image_size={image_size}"
            )
        w = width
        self.features = nn.Sequential(
            conv_bn(in_channels, w, dropout),  # 26
            conv_bn(w, 2 * w, dropout),  # 24
            nn.Conv2d(2 * w, 10, 1, bias=False),  # 1x1 transition: fewer channels
            nn.MaxPool2d(2),  # 12
            conv_bn(10, w, dropout),  # 10
            conv_bn(w, w, dropout),  # 8
            conv_bn(w, w, dropout),  # 6
            conv_bn(w, w, dropout, padding=1),  # 6
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).flatten(1).log_softmax(dim=1)
