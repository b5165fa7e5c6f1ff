"""ResNet-18: torchvision's builder, with a small-input stem for images under 64 px."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet18

SMALL_IMAGE = 64


class ResNet18(nn.Module):
    """torchvision ``resnet18(num_classes=...)`` (random init) taking ``in_channels``.

    Images under 64 px (``small_input: null`` decides by ``image_size``) get the CIFAR-style stem:
    a 3x3 stride-1 first convolution and no initial max pool, so a 28 or 32 px image still has a
    4x4 map before the global average pool instead of 1x1. Larger images keep the standard 7x7
    stride-2 stem and max pool (with ``in_channels`` inputs). Either way any image size works.
    11,181,642 parameters with 10 classes and the standard 3-channel stem; 11,173,962 with the
    small stem at 3 channels (11,172,810 at 1 channel).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        small_input: bool | None = None,
    ) -> None:
        super().__init__()
        small = image_size < SMALL_IMAGE if small_input is None else bool(small_input)
        self.resnet = resnet18(weights=None, num_classes=num_classes)
        if small:
            self.resnet.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            self.resnet.maxpool = nn.Identity()
        elif in_channels != 3:
            self.resnet.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.resnet(x)
