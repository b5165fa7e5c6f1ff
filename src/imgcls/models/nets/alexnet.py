"""AlexNet, two ways: the trimmed 4-conv MNIST variant and the published net with LRN.

Both take any image size: the convolutions feed an adaptive average pool, so the classifier's
input (and the parameter count) depends only on the configured widths, never on the image. Images
of 128 px or more get the published stride-4 first convolution; smaller ones a stride-1 one, so
a 28 px digit is not reduced to a 6x6 map by the first layer (torchvision's AlexNet fails below
63 px).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from imgcls.models.nets.blocks import (
    ConvClassifier,
    check_image_size,
    check_widths,
    conv_relu,
    dense_head,
    stem_stride,
)


class AlexNet(ConvClassifier):
    """The trimmed AlexNet for MNIST: AlexNet's conv2..conv5 with ReLU, max pooling, 3 FC layers.

    Layers (defaults, 1x28x28 input, 10 classes)::

        conv 5x5 256, pad 2 -> ReLU -> max pool 3x3/2   28 -> 28 -> 13
        conv 3x3 384, pad 1 -> ReLU                     13
        conv 3x3 384, pad 1 -> ReLU                     13
        conv 3x3 256, pad 1 -> ReLU                     13
        adaptive avg pool to 13x13 (identity at 28 px) -> flatten 256*13*13 = 43,264
        FC 43,264 -> 2048 -> ReLU -> FC 2048 -> 1024 -> ReLU -> FC 1024 -> 10

    **93,819,402** trainable parameters at 1x28x28 with 10 classes, exactly the reference's count
    (88.6M of them in the first FC layer). The reference publishes only the count and "4 conv, max
    pooling, 3 FC"; this layout, found by searching conv/FC widths, is the one that matches it
    exactly with AlexNet's own widths. The adaptive pool keeps the count for every image size.
    """

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
        features = nn.Sequential(
            conv_relu(in_channels, c1, 5, stride=stem_stride(image_size), pool=nn.MaxPool2d(3, 2)),
            conv_relu(c1, c2, 3),
            conv_relu(c2, c3, 3),
            conv_relu(c3, c4, 3),
        )
        check_image_size("alexnet", features, image_size)
        features.append(nn.AdaptiveAvgPool2d(pool_size))
        head = dense_head(c4 * pool_size * pool_size, hidden_sizes, num_classes, dropout)
        super().__init__(features, head)


class AlexNetLRN(ConvClassifier):
    """AlexNet as published (Krizhevsky et al. 2012), adapted to small inputs.

    Five convolutions (11x11 96, 5x5 256, 3x3 384, 384, 256) with ReLU; LocalResponseNorm after the
    first two; overlapping 3x3/stride-2 max pooling after conv1, conv2 and conv5; an adaptive
    average pool to ``pool_size``; FC 4096 -> 4096 -> classes with dropout 0.5 after each hidden FC.
    The first convolution has stride 4 (padding 2) on images of 128 px or more, as published, and
    stride 1 (padding 5) below, so the net needs images of at least 15 px.

    Parameters (defaults, 10 classes): **21,598,922** at 1x28x28 and **21,622,154** at 3 channels,
    the reference's count (its Keras model repeats grayscale MNIST to 3 channels; the 1-channel
    first convolution has 2 x 11 x 11 x 96 = 23,232 fewer weights, 0.11% of the total).
    """

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
        stride = stem_stride(image_size)
        features = nn.Sequential(
            conv_relu(
                in_channels,
                c1,
                11,
                stride=stride,
                padding=2 if stride > 1 else 5,
                lrn=True,
                pool=nn.MaxPool2d(3, 2),
            ),
            conv_relu(c1, c2, 5, lrn=True, pool=nn.MaxPool2d(3, 2)),
            conv_relu(c2, c3, 3),
            conv_relu(c3, c4, 3),
            conv_relu(c4, c5, 3, pool=nn.MaxPool2d(3, 2)),
        )
        check_image_size("alexnet_lrn", features, image_size)
        features.append(nn.AdaptiveAvgPool2d(pool_size))
        head = dense_head(c5 * pool_size * pool_size, hidden_sizes, num_classes, dropout)
        super().__init__(features, head)
