"""End the W&B run of a finished task: Lightning's ``WandbLogger`` leaves it open, and the next run
of a sweep in the same process would log into it. (The loggers are Lightning's, from Hydra.)"""

from collections.abc import Iterable
from typing import Any


def finish_loggers(loggers: Iterable[Any]) -> None:
    if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()
