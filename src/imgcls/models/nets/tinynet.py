"""TinyNet: the parameter-efficient MNIST CNN (<20k parameters, 99.4%+ on MNIST)."""

from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from imgcls.models.nets.blocks import FastDropout, check_image_size


class TinyNet(nn.Module):
    """conv-BN-ReLU-dropout blocks, a 1x1 conv head; log-probabilities; images >= 18 px."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        width: int = 16,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()

        def block(in_ch: int, out_ch: int, padding: int = 0) -> nn.Sequential:
            conv = Conv2dNormActivation(in_ch, out_ch, 3, padding=padding)  # conv, BN, ReLU
            return conv.append(FastDropout(dropout))

        w = width
        self.features = nn.Sequential(
            block(in_channels, w),  # 28 -> 26
            block(w, 2 * w),  # 24
            nn.Conv2d(2 * w, 10, 1, bias=False),  # 1x1 transition: fewer channels
            nn.MaxPool2d(2),  # 12
            block(10, w),  # 10
            block(w, w),  # 8
            block(w, w),  # 6
            block(w, w, padding=1),  # 6
            nn.AdaptiveAvgPool2d(1),
        )
        check_image_size("tinynet", self.features, in_channels, image_size)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).flatten(1).log_softmax(dim=1)
