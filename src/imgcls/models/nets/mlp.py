"""MLP: a basic dense network on the flattened image, for binary or multi-class problems."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from imgcls.models.nets.blocks import dense_head


class MLP(nn.Module):
    """flatten -> [Linear -> activation -> Dropout] per hidden size -> Linear(num_classes).

    A binary problem is ``num_classes=2`` (two logits, cross-entropy), like any other.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        hidden_sizes: Sequence[int] = (512, 256),
        dropout: float = 0.2,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        features = in_channels * image_size * image_size
        self.head = dense_head(features, hidden_sizes, num_classes, dropout, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x.flatten(1))
