"""Freezing a network's backbone (everything but its classifier head) by Lightning's
``BaseFinetuning`` rule: no gradients, batch-norm running statistics not updated."""

from __future__ import annotations

from collections.abc import Iterable

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


def set_trainable(modules: Iterable[nn.Module], trainable: bool) -> None:
    """(Un)freeze the modules' own parameters and batch-norm statistics."""
    if trainable:
        BaseFinetuning.make_trainable(list(modules))
        return
    for module in modules:
        BaseFinetuning.freeze_module(module)


def freeze_backbone(net: nn.Module) -> None:
    set_trainable(backbone_modules(net), False)
