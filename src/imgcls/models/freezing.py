"""Freezing a network's backbone: everything but its classifier head.

The head is ``net.head_name`` (set by :mod:`imgcls.models.nets.pretrained`), else the net's
last ``Linear`` layer. A frozen module's parameters stop requiring gradients and its
batch-norm layers stop updating their running statistics (Lightning's ``BaseFinetuning`` rule:
in training they normalise with the batch's statistics, in evaluation with the stored ones).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from imgcls.utils.errors import UserError

FREEZE_MODES = ("backbone",)


def head_name(net: nn.Module) -> str:
    """The module name of the classifier head of ``net``."""
    name = getattr(net, "head_name", None)
    if name:
        return name
    linear = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise UserError(f"{type(net).__name__} has no Linear head to keep trainable")
    return linear[-1]


def backbone_modules(net: nn.Module) -> list[nn.Module]:
    """Every module of ``net`` outside its head (the net itself included, for its own tensors)."""
    head = head_name(net)
    return [
        module
        for name, module in net.named_modules()
        if name != head and not name.startswith(head + ".")
    ]


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def set_trainable(modules: Iterable[nn.Module], trainable: bool) -> None:
    """(Un)freeze the modules' own parameters (not their children's) and batch-norm statistics."""
    for module in modules:
        if isinstance(module, BATCH_NORMS):
            module.track_running_stats = trainable
        for param in module.parameters(recurse=False):
            param.requires_grad = trainable


def freeze_backbone(net: nn.Module) -> None:
    set_trainable(backbone_modules(net), False)


def check_freeze(freeze: str | None) -> None:
    if freeze is not None and freeze not in FREEZE_MODES:
        raise UserError(
            f"model.freeze={freeze!r} is not supported; use backbone (train only the head) or null"
        )
