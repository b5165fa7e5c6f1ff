"""ConvNet: four 3x3 conv blocks (32, 64, 128, 256 filters), then FC 4096 -> 50 -> classes."""

from collections.abc import Sequence

from torch import nn

from imgcls.models.nets.blocks import (
    ConvClassifier,
    check_image_size,
    check_widths,
    conv_relu,
    dense_head,
)


class ConvNet(ConvClassifier):
    """593,200 parameters at 1x28x28 with 10 classes (593,776 at 3 channels); images >= 8 px."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        channels: Sequence[int] = (32, 64, 128, 256),
        hidden_size: int = 50,
        pool_size: int = 4,
        dropout: float = 0.0,
    ) -> None:
        c1, c2, c3, c4 = check_widths("convnet", channels, 4)
        features = nn.Sequential(
            conv_relu(in_channels, c1, 3, nn.MaxPool2d(2)),
            conv_relu(c1, c2, 3, nn.MaxPool2d(2)),
            conv_relu(c2, c3, 3, nn.MaxPool2d(2)),
            conv_relu(c3, c4, 3),
            nn.AdaptiveMaxPool2d(pool_size),
        )
        check_image_size("convnet", features, in_channels, image_size)
        head = dense_head(c4 * pool_size * pool_size, [hidden_size], num_classes, dropout)
        super().__init__(features, head)
