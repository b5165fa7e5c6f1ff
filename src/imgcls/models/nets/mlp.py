"""MLP: a basic dense network on the flattened image, for binary or multi-class problems."""

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from imgcls.models.nets.blocks import dense_head


class MLP(nn.Sequential):
    """flatten -> ``dense_head``; a binary problem is ``num_classes=2``, like any other."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        hidden_sizes: Sequence[int] = (512, 256),
        dropout: float = 0.2,
        activation: str = "relu",
    ) -> None:
        features = in_channels * image_size * image_size
        head = dense_head(features, hidden_sizes, num_classes, dropout, activation)
        super().__init__(OrderedDict(flatten=nn.Flatten(), head=head))
