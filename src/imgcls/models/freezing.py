"""Freezing a net's backbone (all but its head) as Lightning's ``BaseFinetuning`` does."""

from pytorch_lightning.callbacks import BaseFinetuning
from torch import nn


def head_name(net: nn.Module) -> str:
    """``net.head_name`` if set (timm's), else its last ``Linear`` (or ``Conv2d``: squeezenet)."""
    if getattr(net, "head_name", None):
        return net.head_name
    linear = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return (linear or [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)])[-1]


def backbone_modules(net: nn.Module) -> list[nn.Module]:
    """Every module of ``net`` outside its head (the net itself included, for its own tensors)."""
    head = head_name(net)
    return [m for n, m in net.named_modules() if n != head and not n.startswith(head + ".")]


def freeze_backbone(net: nn.Module) -> None:
    for module in backbone_modules(net):  # each its own tensors (Lightning's freeze would recurse)
        BaseFinetuning.freeze_module(module)
