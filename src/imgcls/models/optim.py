"""Optimizer and LR-schedule plumbing of the classifier: fused kernels, ``total_steps``, and the
check that a restored schedule still covers the run."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch

from imgcls.utils.errors import UserError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


def bound(factory: Callable[..., Any]) -> dict[str, Any]:
    """The keywords a partial factory binds (none for a plain callable)."""
    return factory.keywords if isinstance(factory, functools.partial) else {}


def takes_argument(factory: Callable[..., Any], name: str) -> bool:
    """Whether the callable behind a (partial) factory accepts the keyword ``name``."""
    func = factory.func if isinstance(factory, functools.partial) else factory
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def has_argument(factory: Callable[..., Any], *names: str) -> bool:
    """Whether a partial factory already binds any of ``names`` to a non-None value."""
    return any(bound(factory).get(name) is not None for name in names)


def fused_kwargs(
    factory: OptimizerFactory, fused: bool | None, device: torch.device
) -> dict[str, bool]:
    """``fused=True`` for the optimizer: ``None`` (auto) on CUDA when the optimizer takes it.

    A fused optimizer updates every parameter in one kernel instead of a few per tensor. An
    explicit ``fused`` in the optimizer config wins; ``true`` with an optimizer without it is an
    error.
    """
    if fused is False or has_argument(factory, "fused", "foreach"):
        return {}
    if not takes_argument(factory, "fused"):
        if fused:
            name = getattr(getattr(factory, "func", factory), "__name__", str(factory))
            raise UserError(f"model.fused_optimizer=true but {name} has no fused implementation")
        return {}
    return {"fused": True} if fused or device.type == "cuda" else {}


def schedule_kwargs(factory: SchedulerFactory, steps: int) -> dict[str, int]:
    """``total_steps`` (the run's optimizer steps) for a schedule that takes it and has none.

    One more step where OneCycleLR's warm-up would end on step 0 (``pct_start * total_steps ==
    1``), which divides by zero in torch.
    """
    if not takes_argument(factory, "total_steps") or has_argument(factory, "total_steps", "epochs"):
        return {}
    pct_start = bound(factory).get("pct_start")
    return {"total_steps": steps + 1 if pct_start is not None and pct_start * steps == 1 else steps}


def check_schedule_covers_run(schedulers: list, steps: int) -> None:
    """A schedule over ``total_steps`` that ends before the run does stops training in one line.

    That happens when a run is resumed with a larger ``trainer.max_epochs`` (or more batches per
    epoch): the restored OneCycleLR keeps the length it was built with and torch fails at its end.
    """
    for config in schedulers:
        total = getattr(config.scheduler, "total_steps", None)
        if isinstance(total, int) and steps > total:
            raise UserError(
                f"the checkpoint's {type(config.scheduler).__name__} was sized for {total} "
                f"optimizer steps but this run takes {steps} (trainer.max_epochs or the batches "
                "per epoch changed since it was saved); resume with the trainer.max_epochs it was "
                "started with, or train a new run from scratch with the longer schedule"
            )
