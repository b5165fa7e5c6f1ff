"""AlexNet two ways (README's model table); the first conv has stride 4 from 128 px, else 1."""

from collections.abc import Sequence
from functools import partial

from torch import nn

from imgcls.models.nets.blocks import (
    ConvClassifier,
    check_image_size,
    check_widths,
    conv_relu,
    dense_head,
)


class AlexNet(ConvClassifier):
    """The trimmed 4-conv AlexNet for MNIST: 93,819,402 parameters, the reference's count."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        channels: Sequence[int] = (256, 384, 384, 256),
        hidden_sizes: Sequence[int] = (2048, 1024),
        pool_size: int = 13,
        dropout: float = 0.0,
    ) -> None:
        c1, c2, c3, c4 = check_widths("alexnet", channels, 4)
        stride = 4 if image_size >= 128 else 1
        features = nn.Sequential(
            conv_relu(in_channels, c1, 5, nn.MaxPool2d(3, 2), stride=stride),
            conv_relu(c1, c2, 3),
            conv_relu(c2, c3, 3),
            conv_relu(c3, c4, 3),
            nn.AdaptiveAvgPool2d(pool_size),
        )
        check_image_size("alexnet", features, in_channels, image_size)
        head = dense_head(c4 * pool_size * pool_size, hidden_sizes, num_classes, dropout)
        super().__init__(features, head)


class AlexNetLRN(ConvClassifier):
    """AlexNet as published (Krizhevsky et al. 2012, with LRN); images of at least 15 px."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        channels: Sequence[int] = (96, 256, 384, 384, 256),
        hidden_sizes: Sequence[int] = (4096, 4096),
        pool_size: int = 1,
        dropout: float = 0.5,
    ) -> None:
        c1, c2, c3, c4, c5 = check_widths("alexnet_lrn", channels, 5)
        stride, padding = (4, 2) if image_size >= 128 else (1, 5)
        lrn = partial(nn.LocalResponseNorm, size=5, alpha=1e-4, beta=0.75, k=2.0)  # as published
        pool = partial(nn.MaxPool2d, 3, 2)  # overlapping
        features = nn.Sequential(
            conv_relu(in_channels, c1, 11, lrn(), pool(), stride=stride, padding=padding),
            conv_relu(c1, c2, 5, lrn(), pool()),
            conv_relu(c2, c3, 3),
            conv_relu(c3, c4, 3),
            conv_relu(c4, c5, 3, pool()),
            nn.AdaptiveAvgPool2d(pool_size),
        )
        check_image_size("alexnet_lrn", features, in_channels, image_size)
        head = dense_head(c5 * pool_size * pool_size, hidden_sizes, num_classes, dropout)
        super().__init__(features, head)
